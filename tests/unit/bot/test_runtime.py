"""The bot runtime in-process against an in-memory API: restore, trade, checkpoint, report,
shut down; plus the pure decision step and configuration parsing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.fakeapi import FakeApiServer
from tradingbot.config import ConfigError, Settings, parse_fleet_switch, parse_tradingbot
from tradingbot.engine import decide
from tradingbot.kube import KubeApi
from tradingbot.ledger import Execution, apply_fill
from tradingbot.risk import RiskLimits
from tradingbot.runtime import EXIT_CONFIG, EXIT_FENCED, EXIT_OK, EXIT_STATE, BotRuntime
from tradingbot.state import (
    ConfigMapStateStore,
    MemoryStateStore,
    Position,
    StateCheckpoint,
    decode_state,
    encode_state,
)
from tradingbot.strategy import Strategy

NS = "bots"
TB = "trading.r7.dev/v1alpha1"
LEASES = "coordination.k8s.io/v1"

# Momentum with a hair trigger: trades within a few ticks on the seeded feed.
FAST_PARAMS = {
    "lookback": 2,
    "entryThresholdPct": 0.05,
    "exitThresholdPct": 0.0,
    "priceFeed": "seeded",
    "seed": 5,
}


def tradingbot(name: str = "alpha", **spec: Any) -> dict[str, Any]:
    body = {
        "profile": "volatile",
        "exchange": {"id": "binance", "mode": "paper"},
        "symbols": ["BTC/USDT", "ETH/USDT"],
        "strategy": {"params": dict(FAST_PARAMS)},
    }
    body.update(spec)
    return {
        "apiVersion": TB,
        "kind": "TradingBot",
        "metadata": {"name": name, "namespace": NS},
        "spec": body,
    }


def settings(pod: str = "pod-a", **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "bot_name": "alpha",
        "namespace": NS,
        "pod_name": pod,
        "metrics_port": 0,
        "tick_seconds": 0.01,
        "checkpoint_interval_seconds": 0.2,
        "lease_duration_seconds": 3,
        "grace_period_seconds": 10,
    }
    values.update(overrides)
    return Settings(**values)


async def until(predicate: Callable[[], Any], limit: float = 10.0) -> Any:
    deadline = asyncio.get_running_loop().time() + limit
    while asyncio.get_running_loop().time() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


def events(kube: FakeApiServer) -> list[dict[str, Any]]:
    return kube.all("Event", NS)


def lease_holder(kube: FakeApiServer) -> str | None:
    obj = kube.get("Lease", NS, "alpha-trader")
    return None if obj is None else obj["spec"].get("holderIdentity")


@pytest.fixture
def kube() -> FakeApiServer:
    fake = FakeApiServer()
    fake.put(tradingbot())
    return fake


async def test_trades_checkpoints_and_shuts_down_cleanly(kube: FakeApiServer) -> None:
    store = MemoryStateStore()
    runtime = BotRuntime(settings(), api=KubeApi(kube), store=store)
    task = asyncio.create_task(runtime.run())
    await until(lambda: runtime.health.ready)
    assert lease_holder(kube) == runtime.settings.identity
    assert runtime.settings.identity.startswith("pod-a_")  # pod, then this process's nonce
    port = runtime.server.port
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/readyz") as response:
            assert response.status == 200
            assert (await response.json())["restoredFromSeq"] is None
        async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
            assert response.status == 200
    await until(lambda: runtime.state.stats.total_trades >= 3)
    await until(lambda: store.current and decode_state(store.current).stats.total_trades >= 3)
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        text = await response.text()
    assert 'tradingbot_trades_total{bot="alpha"' in text
    assert 'tradingbot_state_checkpoints_total{reason="fill"}' in text
    assert "tradingbot_equity" in text and "tradingbot_pnl_realized" in text

    runtime.request_stop("test")
    assert await asyncio.wait_for(task, 10) == EXIT_OK
    final = decode_state(store.current or "")
    assert final.reason == "shutdown"
    assert final.positions == runtime.state.positions  # exactly the positions held
    assert final.stats == runtime.state.stats
    assert lease_holder(kube) is None  # released for a successor
    reasons = [e["reason"] for e in events(kube)]
    assert "StateInitialized" in reasons
    status = kube.get("TradingBot", NS, "alpha")["status"]  # type: ignore[index]
    assert status["state"]["checkpointSeq"] == final.checkpoint_seq
    assert status["state"]["lastShutdownClean"] is True
    assert status["trades"]["total"] == final.stats.total_trades


async def test_restart_restores_every_fill_and_reports_the_seq(kube: FakeApiServer) -> None:
    store = MemoryStateStore()
    first = BotRuntime(settings(), api=KubeApi(kube), store=store)
    task = asyncio.create_task(first.run())
    await until(lambda: first.state.stats.total_trades >= 2)
    first.request_stop()
    await asyncio.wait_for(task, 10)
    stored = decode_state(store.current or "")

    second = BotRuntime(settings("pod-b"), api=KubeApi(kube), store=store)
    task = asyncio.create_task(second.run())
    await until(lambda: second.health.ready)
    assert second.restored_seq == stored.checkpoint_seq
    assert second.last_shutdown_clean is True
    assert second.state.stats.total_trades >= stored.stats.total_trades
    assert second.state.journal[: len(stored.journal)] == stored.journal
    restored = [e for e in events(kube) if e["reason"] == "StateRestored"]
    assert restored and f"checkpointSeq {stored.checkpoint_seq}" in restored[0]["message"]
    assert restored[0]["involvedObject"]["kind"] == "TradingBot"
    second.request_stop()
    assert await asyncio.wait_for(task, 10) == EXIT_OK
    after = decode_state(store.current or "")
    assert after.checkpoint_seq > stored.checkpoint_seq
    assert after.writer_pod == "pod-b"


async def test_paper_wallet_survives_a_restart(kube: FakeApiServer) -> None:
    state = StateCheckpoint(
        balances={"USDT": 1234.5, "BTC": 0.01},
        positions={
            "BTC/USDT": Position("BTC/USDT", 0.01, 59_000.0, 60_000.0, "2026-03-01T00:00:00Z")
        },
    )
    store = MemoryStateStore(current=encode_state(state.next(reason="fill", writer_pod="old"))[0])
    runtime = BotRuntime(settings(), api=KubeApi(kube), store=store)
    task = asyncio.create_task(runtime.run())
    await until(lambda: runtime.health.ready)
    restore = store.saved[0]
    assert restore.reason == "restore" and restore.checkpoint_seq == 2
    assert restore.balances == {"USDT": 1234.5, "BTC": 0.01}
    assert restore.positions == state.positions
    # The paper exchange trades from the restored wallet, not from a fresh one.
    assert runtime.state.balances == runtime.exchange.balances
    assert runtime.state.balances["USDT"] < 10_000
    runtime.request_stop()
    await asyncio.wait_for(task, 10)


async def test_unreadable_state_stops_the_bot_instead_of_starting_empty(
    kube: FakeApiServer,
) -> None:
    store = MemoryStateStore(current="{definitely not state", previous=None)
    runtime = BotRuntime(settings(), api=KubeApi(kube), store=store)
    assert await asyncio.wait_for(runtime.run(), 10) == EXIT_STATE
    assert store.current == "{definitely not state"  # nothing overwritten
    assert any(e["reason"] == "StateUnreadable" and e["type"] == "Warning" for e in events(kube))
    assert lease_holder(kube) is None


async def test_fallback_to_the_previous_checkpoint_is_loud(kube: FakeApiServer) -> None:
    good = StateCheckpoint(balances={"USDT": 500.0}).next(reason="fill", writer_pod="old")
    store = MemoryStateStore(current="{torn", previous=encode_state(good)[0])
    runtime = BotRuntime(settings(), api=KubeApi(kube), store=store)
    task = asyncio.create_task(runtime.run())
    await until(lambda: runtime.health.ready)
    assert runtime.restored_seq == good.checkpoint_seq
    warnings = [e for e in events(kube) if e["reason"] == "StateFallback"]
    assert warnings and warnings[0]["type"] == "Warning"
    runtime.request_stop()
    await asyncio.wait_for(task, 10)


async def test_daily_loss_breach_stops_entries_and_warns_once(kube: FakeApiServer) -> None:
    from datetime import UTC, datetime

    today = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    state = StateCheckpoint(balances={"USDT": 8000.0})
    state, _ = apply_fill(
        state, Execution("BTC/USDT", "buy", 1.0, 2000.0, 2000.0, 0.0, "USDT", "1", "a", today)
    )
    state, _ = apply_fill(
        state, Execution("BTC/USDT", "sell", 1.0, 0.0, 0.0, 0.0, "USDT", "2", "b", today)
    )
    store = MemoryStateStore(current=encode_state(state.next(reason="fill", writer_pod="old"))[0])
    runtime = BotRuntime(settings(), api=KubeApi(kube), store=store)
    task = asyncio.create_task(runtime.run())
    await until(lambda: runtime.health.ready)
    await until(lambda: runtime.decisions > 200)
    assert runtime.state.stats.total_trades == 2  # no new entries
    breaches = [e for e in events(kube) if e["reason"] == "DailyLossLimitReached"]
    assert len(breaches) == 1 and breaches[0]["type"] == "Warning"
    value = runtime.metrics.registry.get_sample_value(
        "tradingbot_daily_loss_breached", {"bot": "alpha"}
    )
    assert value == 1.0
    runtime.request_stop()
    await asyncio.wait_for(task, 10)


async def test_failed_writes_pause_entries_until_a_write_succeeds(kube: FakeApiServer) -> None:
    store = MemoryStateStore()
    runtime = BotRuntime(settings(), api=KubeApi(kube), store=store)
    task = asyncio.create_task(runtime.run())
    await until(lambda: runtime.health.ready)
    store.fail_writes = True
    await until(lambda: runtime.write_failing)
    opened = len(runtime.state.positions)
    trades = runtime.state.stats.total_trades
    start = runtime.decisions
    await until(lambda: runtime.decisions > start + 100)
    buys = [f for f in runtime.state.journal[trades:] if f.side == "buy"]
    assert buys == [] and len(runtime.state.positions) <= opened
    store.fail_writes = False
    await until(lambda: not runtime.write_failing)
    runtime.request_stop()
    assert await asyncio.wait_for(task, 10) == EXIT_OK
    assert decode_state(store.current or "").reason == "shutdown"


async def test_losing_the_lease_stops_trading_and_ends_the_process(kube: FakeApiServer) -> None:
    store = MemoryStateStore()
    runtime = BotRuntime(settings(), api=KubeApi(kube), store=store)
    task = asyncio.create_task(runtime.run())
    await until(lambda: runtime.health.ready)
    lease = kube.get("Lease", NS, "alpha-trader")
    assert lease is not None
    lease["spec"]["holderIdentity"] = "intruder"
    await kube.request("PUT", f"/apis/{LEASES}/namespaces/{NS}/leases/alpha-trader", body=lease)
    fence = runtime.fence
    assert fence is not None
    await until(lambda: fence.lost.is_set(), limit=5)  # at its next renewal
    frozen = store.current
    # Its memory may be stale: the process ends (and is restarted as a new one).
    assert await asyncio.wait_for(task, 10) == EXIT_FENCED
    assert store.current == frozen  # no writes once it knows
    assert lease_holder(kube) == "intruder"  # and nobody else's Lease touched


async def test_a_write_by_another_process_ends_the_bot(kube: FakeApiServer) -> None:
    store = ConfigMapStateStore(KubeApi(kube), NS, "alpha")
    runtime = BotRuntime(settings(), api=KubeApi(kube), store=store)
    task = asyncio.create_task(runtime.run())
    await until(lambda: runtime.health.ready)
    intruder = ConfigMapStateStore(KubeApi(kube), NS, "alpha")
    seen = await intruder.load()
    forged = replace_stats(seen.state, 999)
    await intruder.save(forged.next(reason="fill", writer_pod="intruder"))
    # The bot notices at its next write and stops without overwriting what it found.
    assert await asyncio.wait_for(task, 10) == EXIT_FENCED
    assert (await store.load()).state.stats.total_trades == 999
    assert lease_holder(kube) is None  # released: a fresh process need not wait


def replace_stats(state: StateCheckpoint, trades: int) -> StateCheckpoint:
    from dataclasses import replace

    return replace(state, stats=replace(state.stats, total_trades=trades))


async def test_a_second_process_waits_for_the_lease(kube: FakeApiServer) -> None:
    store = MemoryStateStore()
    first = BotRuntime(settings("pod-a"), api=KubeApi(kube), store=store)
    second = BotRuntime(settings("pod-b"), api=KubeApi(kube), store=store)
    t1 = asyncio.create_task(first.run())
    await until(lambda: first.health.ready)
    t2 = asyncio.create_task(second.run())
    await asyncio.sleep(0.3)
    assert not second.health.ready and second.health.phase == "waiting-for-lease"
    first.request_stop()
    assert await asyncio.wait_for(t1, 10) == EXIT_OK
    await until(lambda: second.health.ready)  # released lease: taken at once
    assert second.restored_seq is not None
    second.request_stop()
    assert await asyncio.wait_for(t2, 10) == EXIT_OK


async def test_invalid_spec_exits_with_a_config_error_event() -> None:
    kube = FakeApiServer()
    kube.put(tradingbot(strategy={"params": {"lookbak": 3}}))
    runtime = BotRuntime(settings(), api=KubeApi(kube), store=MemoryStateStore())
    assert await asyncio.wait_for(runtime.run(), 10) == EXIT_CONFIG
    (event,) = events(kube)
    assert event["reason"] == "InvalidConfig" and "lookbak" in event["message"]


async def test_missing_tradingbot_is_a_config_error() -> None:
    runtime = BotRuntime(settings(), api=KubeApi(FakeApiServer()), store=MemoryStateStore())
    assert await asyncio.wait_for(runtime.run(), 10) == EXIT_CONFIG


async def test_stop_while_waiting_for_the_lease_exits_cleanly(kube: FakeApiServer) -> None:
    kube.put(
        {
            "apiVersion": LEASES,
            "kind": "Lease",
            "metadata": {"name": "alpha-trader", "namespace": NS},
            "spec": {"holderIdentity": "someone", "leaseDurationSeconds": 3600},
        }
    )
    store = MemoryStateStore()
    runtime = BotRuntime(settings(), api=KubeApi(kube), store=store)
    task = asyncio.create_task(runtime.run())
    await until(lambda: runtime.health.phase == "waiting-for-lease")
    runtime.request_stop()
    assert await asyncio.wait_for(task, 5) == EXIT_OK
    assert store.current is None and lease_holder(kube) == "someone"


# ------------------------------------------------------------------ pure decision step

LIMITS = RiskLimits(
    max_position_notional=1000.0,
    max_open_positions=1,
    stop_loss_pct=2.0,
    take_profit_pct=4.0,
    max_daily_loss_pct=5.0,
)
STRATEGY = Strategy.for_profile("volatile", {"lookback": 2, "entryThresholdPct": 1.0})


def held(entry: float = 100.0) -> StateCheckpoint:
    return StateCheckpoint(
        balances={"USDT": 5000.0},
        positions={"BTC/USDT": Position("BTC/USDT", 2.0, entry, entry, "2026-03-01T00:00:00Z")},
    )


def run_decide(closes: list[float], state: StateCheckpoint, **kw: Any) -> Any:
    args: dict[str, Any] = {
        "quote": "USDT",
        "day": "2026-03-01",
        "cost_rate": 0.002,
        "entries_allowed": True,
    }
    args.update(kw)
    return decide("BTC/USDT", closes, state, STRATEGY, LIMITS, **args)


def test_decide_enters_on_signal_within_limits() -> None:
    decision = run_decide([100.0, 100.0, 102.0], StateCheckpoint(balances={"USDT": 5000.0}))
    assert decision.intent is not None and decision.intent.side == "buy"
    assert decision.intent.notional == pytest.approx(5000 * 0.05)


def test_decide_exits_on_stop_loss_before_anything_else() -> None:
    decision = run_decide([100.0, 100.0, 97.0], held(100.0))
    assert decision.intent is not None
    assert (decision.intent.side, decision.intent.reason, decision.intent.amount) == (
        "sell",
        "stop_loss",
        2.0,
    )
    assert run_decide([100.0, 100.0, 105.0], held(100.0)).intent.reason == "take_profit"


def test_decide_refuses_entries_when_paused_or_over_limits() -> None:
    rising = [100.0, 100.0, 102.0]
    paused = run_decide(rising, StateCheckpoint(balances={"USDT": 5000.0}), entries_allowed=False)
    assert paused.intent is None and paused.refusal is not None
    other = StateCheckpoint(
        balances={"USDT": 5000.0},
        positions={"ETH/USDT": Position("ETH/USDT", 1.0, 10.0, 10.0, "2026-03-01T00:00:00Z")},
    )
    full = run_decide(rising, other)
    assert full.refusal is not None and full.refusal.check == "max_open_positions"


def test_decide_waits_for_an_unsettled_order() -> None:
    from tradingbot.state import OpenOrder

    state = StateCheckpoint(
        balances={"USDT": 5000.0},
        open_orders=(OpenOrder("c1", "BTC/USDT", "buy", 1.0, "2026-03-01T00:00:00Z"),),
    )
    assert run_decide([100.0, 100.0, 102.0], state).intent is None


# ------------------------------------------------------------------ configuration


def test_parse_tradingbot_fills_defaults() -> None:
    obj = tradingbot()
    obj["metadata"]["uid"] = "u-1"
    config = parse_tradingbot(obj)
    assert (config.profile, config.mode, config.quote) == ("volatile", "paper", "USDT")
    assert config.params["timeframe"] == "1m" and config.params["lookback"] == 2
    assert config.limits == RiskLimits.for_profile("volatile")
    assert config.state_backend == "configmap" and config.uid == "u-1"


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"profile": "degen"}, "profile"),
        ({"symbols": []}, "symbols"),
        ({"symbols": ["BTC/USDT", "ETH/BTC"]}, "symbols"),
        ({"exchange": {"id": "binance", "mode": "live"}}, "credentialsSecretRef"),
        ({"risk": {"stopLossPct": -1.0}}, "stopLossPct"),
        ({"strategy": {"params": {"lookback": "x"}}}, "lookback"),
    ],
)
def test_parse_tradingbot_rejects_with_the_field_named(spec: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        parse_tradingbot(tradingbot(**spec))


def test_settings_from_env() -> None:
    env = {
        "BOT_NAME": "alpha",
        "POD_NAMESPACE": "bots",
        "POD_NAME": "alpha-1",
        "POD_UID": "abc",
        "POD_IP": "127.0.0.9",
        "METRICS_PORT": "9100",
        "GRACE_PERIOD_SECONDS": "45",
        "PRICE_FEED": "seeded",
    }
    s = Settings.from_env(env)
    assert (s.bot_name, s.namespace, s.pod_ip, s.metrics_port) == (
        "alpha",
        "bots",
        "127.0.0.9",
        9100,
    )
    assert s.grace_period_seconds == 45
    assert s.identity == f"alpha-1_abc_{s.nonce}" and len(s.nonce) == 12
    # A second process of the same pod is another Lease holder, never "already ours".
    assert Settings.from_env(env).identity != s.identity
    assert s.fleet_switch is None and s.control_watch_timeout_seconds == 10
    fleet = Settings.from_env(
        {**env, "FLEET_SWITCH": "trading-system/fleet-switch", "CONTROL_WATCH_TIMEOUT_SECONDS": "3"}
    )
    assert fleet.fleet_switch == ("trading-system", "fleet-switch")
    assert fleet.control_watch_timeout_seconds == 3
    assert Settings.from_env({"BOT_NAME": "a"}, default_namespace="ns").namespace == "ns"
    with pytest.raises(ConfigError) as bad:
        Settings.from_env(
            {
                "METRICS_PORT": "http",
                "PRICE_FEED": "x",
                "FLEET_SWITCH": "no-slash",
                "CONTROL_WATCH_TIMEOUT_SECONDS": "0",
            }
        )
    message = str(bad.value)
    for name in (
        "BOT_NAME",
        "POD_NAMESPACE",
        "METRICS_PORT",
        "PRICE_FEED",
        "FLEET_SWITCH",
        "CONTROL_WATCH_TIMEOUT_SECONDS",
    ):
        assert name in message


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", None),
        ("  ", None),
        ("trading-system/fleet-switch", ("trading-system", "fleet-switch")),
        (" ns/a.b-c ", ("ns", "a.b-c")),
    ],
)
def test_fleet_switch_names_one_configmap(raw: str, expected: tuple[str, str] | None) -> None:
    assert parse_fleet_switch(raw) == expected


@pytest.mark.parametrize(
    "raw", ["fleet-switch", "/name", "ns/", "NS/name", "ns/Name", "ns/a/b", "a" * 64 + "/x"]
)
def test_a_fleet_switch_that_names_no_configmap_is_refused(raw: str) -> None:
    with pytest.raises(ValueError):
        parse_fleet_switch(raw)


def test_status_patch_shape(kube: FakeApiServer) -> None:
    runtime = BotRuntime(settings(), api=KubeApi(kube), store=MemoryStateStore())
    runtime.state = held()
    body = runtime.status_patch()["status"]
    assert body["positions"] == {"open": 1, "symbols": ["BTC/USDT"], "notional": 200.0}
    assert set(body) == {"positions", "pnl", "trades", "state", "killSwitch"}
    assert body["killSwitch"] == {"mode": "", "observedAt": None, "flat": False}
    json.dumps(body)


async def test_pvc_backend_writes_the_state_file(tmp_path: Any) -> None:
    kube = FakeApiServer()
    kube.put(tradingbot(state={"backend": "pvc", "pvc": {"size": "1Gi"}}))
    runtime = BotRuntime(settings(state_dir=str(tmp_path)), api=KubeApi(kube))
    task = asyncio.create_task(runtime.run())
    await until(lambda: runtime.state.stats.total_trades >= 2)
    runtime.request_stop()
    assert await asyncio.wait_for(task, 10) == EXIT_OK
    from tradingbot.state import FileStateStore

    restored = await FileStateStore(tmp_path).load()
    assert restored.state.reason == "shutdown"
    assert restored.state.positions == runtime.state.positions
    assert kube.get("ConfigMap", NS, "alpha-state") is None


def test_health_goes_stale_only_while_trading() -> None:
    from tradingbot.health import HealthState

    now = [100.0]
    health = HealthState(stale_after=60.0, clock=lambda: now[0])
    health.phase = "waiting-for-lease"
    now[0] += 1000
    assert health.healthy  # waiting is not a failure
    health.phase = "trading"
    health.tick()
    now[0] += 59
    assert health.healthy
    now[0] += 2
    assert not health.healthy


async def test_unknown_exchange_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "apiKey").write_text("key-123456\n")
    (tmp_path / "secret").write_text("secret-123456\n")
    kube = FakeApiServer()
    kube.put(
        tradingbot(
            exchange={
                "id": "nosuchexchange",
                "mode": "sandbox",
                "credentialsSecretRef": {"name": "keys"},
            }
        )
    )
    runtime = BotRuntime(
        settings(credentials_dir=str(tmp_path)), api=KubeApi(kube), store=MemoryStateStore()
    )
    assert await asyncio.wait_for(runtime.run(), 60) == EXIT_CONFIG
    assert any(e["reason"] == "InvalidConfig" for e in events(kube))
