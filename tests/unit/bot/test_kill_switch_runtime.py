"""The runtime obeys the kill switch and suspension by itself (no operator), on the paper
exchange against the in-memory API: halt, fleet switch, suspend, drain, flatten, a silent
control watch, an orphan past its Lease, rate-limited status writes and error events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web

from tests.fakeapi import FakeApiServer
from tests.unit.bot.test_audit_reporting import FakeSidecar
from tradingbot.config import Settings
from tradingbot.exchange.errors import ExchangeCallError
from tradingbot.exchange.paper import PaperExchange
from tradingbot.kube import KubeApi
from tradingbot.runtime import EXIT_FENCED, EXIT_OK, BotRuntime
from tradingbot.state import Fill, MemoryStateStore, StateCheckpoint
from tradingbot_api.constants import ANNOTATION_HALT, ANNOTATION_SUSPEND

NS = "bots"
TB = "trading.r7.dev/v1alpha1"
STATUS_PATH = f"/apis/{TB}/namespaces/{NS}/tradingbots/alpha/status"

# Momentum with a hair trigger: trades within a few ticks on the seeded feed.
FAST = {
    "lookback": 2,
    "entryThresholdPct": 0.05,
    "exitThresholdPct": 0.0,
    "priceFeed": "seeded",
    "seed": 5,
}
# Enters readily and never exits by itself (wide stop-loss and take-profit below): positions
# pile up until a kill switch closes them.
HOLDING = {**FAST, "exitThresholdPct": -99.0}
WIDE_RISK = {"stopLossPct": 50.0, "takeProfitPct": 100.0, "maxOpenPositions": 3}


def tradingbot(params: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "profile": "volatile",
        "exchange": {"id": "binance", "mode": "paper"},
        "symbols": ["BTC/USDT", "ETH/USDT"],
        "strategy": {"params": dict(params or FAST)},
    }
    body.update(spec)
    return {
        "apiVersion": TB,
        "kind": "TradingBot",
        "metadata": {"name": "alpha", "namespace": NS},
        "spec": body,
    }


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "bot_name": "alpha",
        "namespace": NS,
        "pod_name": "pod-a",
        "metrics_port": 0,
        "tick_seconds": 0.01,
        "checkpoint_interval_seconds": 0.2,
        "lease_duration_seconds": 3,
        "grace_period_seconds": 10,
        "control_watch_timeout_seconds": 1,
    }
    values.update(overrides)
    return Settings(**values)


async def until(predicate: Callable[[], Any], limit: float = 10.0) -> Any:
    deadline = asyncio.get_running_loop().time() + limit
    while asyncio.get_running_loop().time() < deadline:
        if value := predicate():
            return value
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


def fill_time(fill: Fill) -> datetime:
    return datetime.fromisoformat(fill.time.replace("Z", "+00:00"))


def fills_after(state: StateCheckpoint, moment: datetime) -> list[Fill]:
    return [f for f in state.journal if fill_time(f) > moment]


def status(kube: FakeApiServer) -> dict[str, Any]:
    obj = kube.get("TradingBot", NS, "alpha") or {}
    return dict(obj.get("status") or {})


def reported(kube: FakeApiServer) -> tuple[str, bool] | None:
    """(mode, flat) from status.killSwitch."""
    report = status(kube).get("killSwitch")
    return None if report is None else (report["mode"], report["flat"])


def reasons(kube: FakeApiServer) -> list[str]:
    return [e["reason"] for e in kube.all("Event", NS)]


def metric(runtime: BotRuntime, name: str, **labels: str) -> float:
    return runtime.metrics.registry.get_sample_value(name, {"bot": "alpha", **labels}) or 0.0


class Running:
    def __init__(self, runtime: BotRuntime, task: asyncio.Task[int]) -> None:
        self.runtime = runtime
        self.task = task

    async def stop(self) -> int:
        self.runtime.request_stop("test")
        return await asyncio.wait_for(self.task, 10)


async def start(kube: FakeApiServer, store: MemoryStateStore, **kw: Any) -> Running:
    runtime = BotRuntime(settings(**kw.pop("settings", {})), api=KubeApi(kube), store=store, **kw)
    running = Running(runtime, asyncio.create_task(runtime.run()))
    await until(lambda: runtime.health.ready)
    return running


def annotate(kube: FakeApiServer, **values: str | None) -> datetime:
    """Set annotations; returns a moment no later than when the change was stored."""
    before = datetime.now(UTC)
    kube.annotate("TradingBot", NS, "alpha", **values)
    return before


@pytest.fixture
def kube() -> FakeApiServer:
    fake = FakeApiServer()
    fake.put(tradingbot())
    return fake


async def test_a_halt_stops_orders_at_once_keeps_positions_and_lifts(kube: FakeApiServer) -> None:
    store = MemoryStateStore()
    bot = await start(kube, store)
    runtime = bot.runtime
    await until(lambda: runtime.state.stats.total_trades >= 3)
    halted_at = annotate(kube, **{ANNOTATION_HALT: "true"})
    await until(lambda: status(kube).get("killSwitch", {}).get("mode") == "true")
    held = dict(runtime.state.positions)
    trades = runtime.state.stats.total_trades
    await asyncio.sleep(0.5)  # fifty ticks
    assert fills_after(runtime.state, halted_at + timedelta(seconds=1)) == []
    assert runtime.state.stats.total_trades == trades
    assert runtime.state.positions.keys() == held.keys()  # kept, not sold
    assert not runtime.health.ready and "kill switch true" in runtime.health.detail["reason"]
    assert runtime.health.phase == "trading" and not bot.task.done()  # alive, watching
    assert any(s.reason == "halt" for s in store.saved)
    report = status(kube)["killSwitch"]
    assert report["observedAt"] and report["flat"] == (not runtime.state.positions)
    assert "KillSwitch" in reasons(kube)
    assert metric(runtime, "tradingbot_kill_switch", mode="true") == 1.0
    assert metric(runtime, "tradingbot_orders_blocked_total", check="halt") == 0.0  # no tries

    resumed_at = annotate(kube, **{ANNOTATION_HALT: None})
    await until(lambda: runtime.health.ready)
    await until(lambda: fills_after(runtime.state, resumed_at))
    await until(lambda: status(kube)["killSwitch"]["mode"] == "")
    assert "KillSwitchCleared" in reasons(kube)
    assert await bot.stop() == EXIT_OK


async def test_the_fleet_switch_halts_every_bot_that_watches_it(kube: FakeApiServer) -> None:
    fleet = {
        "kind": "ConfigMap",
        "metadata": {"name": "fleet-switch", "namespace": "trading-system"},
        "data": {},
    }
    kube.put(fleet)
    store = MemoryStateStore()
    bot = await start(kube, store, settings={"fleet_switch": ("trading-system", "fleet-switch")})
    runtime = bot.runtime
    await until(lambda: runtime.state.stats.total_trades >= 2)
    halted_at = datetime.now(UTC)
    kube.put({**fleet, "data": {"halt": "true"}})
    await until(lambda: not runtime.health.ready)
    trades = runtime.state.stats.total_trades
    await asyncio.sleep(0.4)
    assert runtime.state.stats.total_trades == trades
    assert fills_after(runtime.state, halted_at + timedelta(seconds=1)) == []
    assert runtime.health.detail["reason"] == "kill switch true (fleet switch)"
    assert await bot.stop() == EXIT_OK


@pytest.mark.parametrize(
    "suspend",
    [{"spec": {"suspend": True}}, {"metadata": {"annotations": {ANNOTATION_SUSPEND: "true"}}}],
    ids=["spec.suspend", "annotation"],
)
async def test_a_suspended_bot_stays_alive_without_orders(
    kube: FakeApiServer, suspend: dict[str, Any]
) -> None:
    store = MemoryStateStore()
    bot = await start(kube, store)
    runtime = bot.runtime
    await until(lambda: runtime.state.stats.total_trades >= 2)
    path = f"/apis/{TB}/namespaces/{NS}/tradingbots/alpha"
    await kube.request("PATCH", path, body=suspend, content_type="application/merge-patch+json")
    await until(lambda: not runtime.health.ready)
    trades = runtime.state.stats.total_trades
    await asyncio.sleep(0.4)
    assert runtime.state.stats.total_trades == trades
    assert runtime.health.detail["reason"].startswith("suspended")
    assert "Suspended" in reasons(kube) and not bot.task.done()
    assert status(kube)["killSwitch"]["mode"] == ""  # a suspension is no kill switch
    assert await bot.stop() == EXIT_OK


async def test_drain_closes_by_exits_only_and_reports_flat(kube: FakeApiServer) -> None:
    store = MemoryStateStore()
    bot = await start(kube, store)
    runtime = bot.runtime
    await until(lambda: runtime.state.positions and runtime.state.stats.total_trades >= 3)
    drained_at = annotate(kube, **{ANNOTATION_HALT: "drain"})
    await until(lambda: reported(kube) == ("drain", True), limit=20)
    late = fills_after(runtime.state, drained_at + timedelta(seconds=1))
    assert [f for f in late if f.side == "buy"] == []  # no entry after the drain
    assert all(f.reason in ("signal", "stop_loss", "take_profit") for f in late)
    assert not runtime.state.positions
    assert status(kube)["killSwitch"]["mode"] == "drain"
    assert "KillSwitchFlat" in reasons(kube)
    assert await bot.stop() == EXIT_OK


async def test_flatten_sells_every_position_at_market_and_reports_flat(
    kube: FakeApiServer,
) -> None:
    kube.put(tradingbot(HOLDING, risk=WIDE_RISK))
    store = MemoryStateStore()
    bot = await start(kube, store)
    runtime = bot.runtime
    await until(lambda: len(runtime.state.positions) >= 2)
    held = set(runtime.state.positions)
    annotate(kube, **{ANNOTATION_HALT: "flatten"})
    await until(lambda: reported(kube) == ("flatten", True))
    assert not runtime.state.positions
    sold = {f.symbol for f in runtime.state.journal if f.reason == "flatten"}
    assert held <= sold
    assert all(f.side == "sell" for f in runtime.state.journal if f.reason == "flatten")
    report = status(kube)["killSwitch"]
    assert report["mode"] == "flatten" and report["flat"] is True
    trades = runtime.state.stats.total_trades
    await asyncio.sleep(0.3)
    assert runtime.state.stats.total_trades == trades  # flat stays flat: no entries
    assert await bot.stop() == EXIT_OK


async def test_a_silent_control_watch_stops_entries_but_not_exits(kube: FakeApiServer) -> None:
    store = MemoryStateStore()
    bot = await start(kube, store)
    runtime = bot.runtime
    await until(lambda: runtime.state.stats.total_trades >= 2)
    kube.freeze_watches = True
    await until(lambda: metric(runtime, "tradingbot_control_watch_silent") == 1.0, limit=10)
    silent_at = datetime.now(UTC)
    await asyncio.sleep(0.5)
    assert [f for f in fills_after(runtime.state, silent_at) if f.side == "buy"] == []
    assert metric(runtime, "tradingbot_orders_blocked_total", check="control_silent") > 0
    assert "ControlWatchSilent" in reasons(kube)
    assert runtime.health.ready  # trading goes on for what is open
    kube.freeze_watches = False
    await until(lambda: metric(runtime, "tradingbot_control_watch_silent") == 0.0, limit=10)
    heard_at = datetime.now(UTC)
    await until(lambda: [f for f in fills_after(runtime.state, heard_at) if f.side == "buy"])
    assert "ControlWatchRestored" in reasons(kube)
    assert await bot.stop() == EXIT_OK


async def test_an_orphan_past_its_lease_places_nothing_writes_nothing_and_exits(
    kube: FakeApiServer,
) -> None:
    store = MemoryStateStore()
    bot = await start(kube, store)
    runtime = bot.runtime
    await until(lambda: runtime.state.stats.total_trades >= 2)
    assert runtime.fence is not None
    # As after SIGSTOP longer than the lease, then SIGCONT: its clock moved on at once.
    jumped_at = datetime.now(UTC)
    saved = len(store.saved)
    fence = runtime.fence
    real = fence.clock
    fence.clock = lambda: real() + 60
    assert await asyncio.wait_for(bot.task, 10) == EXIT_FENCED
    assert len(store.saved) == saved  # no checkpoint, not even at shutdown
    assert fills_after(runtime.state, jumped_at) == []


async def test_status_is_written_at_most_every_ten_seconds_but_a_halt_at_once(
    kube: FakeApiServer,
) -> None:
    store = MemoryStateStore()
    bot = await start(kube, store)
    runtime = bot.runtime

    def writes() -> int:
        return sum(1 for c in kube.calls if c.method == "PATCH" and c.path == STATUS_PATH)

    await until(lambda: runtime.state.stats.total_trades >= 6)  # plenty of changes
    await asyncio.sleep(1.0)
    assert writes() == 1  # the one at restore; later changes wait for the interval
    annotate(kube, **{ANNOTATION_HALT: "true"})
    await until(lambda: writes() == 2)
    assert status(kube)["killSwitch"]["mode"] == "true"
    assert await bot.stop() == EXIT_OK  # and the shutdown report
    assert writes() == 3


class FailingPaper(PaperExchange):
    """Every order fails as if the exchange were unreachable."""

    async def market_order(
        self,
        symbol: str,
        side: str,
        amount: float,
        client_order_id: str,
        *,
        may_send: Callable[[], bool] | None = None,
    ) -> Any:
        raise ExchangeCallError("create_order", "NetworkError", "connection reset")


@pytest.fixture
async def sidecar() -> AsyncIterator[FakeSidecar]:
    fake = FakeSidecar()
    app = web.Application()
    app.router.add_post("/v1/bot-events", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    fake.url = f"http://127.0.0.1:{runner.addresses[0][1]}/"
    yield fake
    await runner.cleanup()


def audited(sidecar: FakeSidecar, event_type: str) -> list[dict[str, Any]]:
    return [e for e in sidecar.stored.values() if e["event_type"] == event_type]


async def test_errors_and_halts_reach_the_audit_rate_limited(
    kube: FakeApiServer, sidecar: FakeSidecar
) -> None:
    store = MemoryStateStore()
    bot = await start(
        kube,
        store,
        settings={"audit_url": sidecar.url},
        audit_token=lambda: "tok",
        exchange_factory=lambda config: FailingPaper({"USDT": 10_000.0}),
    )
    runtime = bot.runtime
    await until(lambda: audited(sidecar, "error"))
    # Fills and notices go through one client: one keep-alive connection per bot.
    assert runtime.audit is not None and runtime.notices is not None
    assert runtime.audit._client is runtime.notices._client
    store.fail_writes = True
    await until(lambda: runtime.write_failing)
    await asyncio.sleep(0.5)  # many more failed orders and writes
    errors = audited(sidecar, "error")
    by_type = sorted(e["details"]["errorType"] for e in errors)
    assert by_type == ["NetworkError", "StateWriteError"]  # one per type and minute
    network = next(e for e in errors if e["details"]["errorType"] == "NetworkError")
    assert (network["action"], network["details"]["method"]) == ("exchange", "create_order")
    store.fail_writes = False
    await until(lambda: not runtime.write_failing)

    annotate(kube, **{ANNOTATION_HALT: "true"})
    await until(lambda: audited(sidecar, "halt"))
    (halt,) = audited(sidecar, "halt")
    assert halt["action"] == "true" and halt["details"]["switch"] == "bot"
    assert halt["details"]["positions"] == {}  # every order failed: nothing was held
    assert await bot.stop() == EXIT_OK
