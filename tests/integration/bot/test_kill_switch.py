"""The kill switch and fencing of real bot processes against the real API server, with no
operator running: halt by annotation and by the fleet switch, a cut control watch, two
processes with one pod identity, a frozen orphan, drain and flatten.

Timing is judged from what the bot recorded (fill times in its stored journal, log lines)
against a moment the test took before it wrote the switch, never by a stopwatch.
"""

from __future__ import annotations

import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from kubernetes import client, config

from tests import kube
from tradingbot_api.constants import ANNOTATION_HALT

from .conftest import (
    BOT,
    GRACE_SECONDS,
    GROUP,
    LEASE_SECONDS,
    PARAMS,
    PLURAL,
    VERSION,
    BotEnv,
    BotProcess,
    FleetSwitch,
    WatchCutProxy,
    fills_after,
    log_time,
)

ONE_SECOND = timedelta(seconds=1)
# Enters readily, never exits by itself: positions stay open until a kill switch acts.
HOLDING = {**PARAMS, "exitThresholdPct": -99.0}
WIDE_RISK = {"stopLossPct": 50.0, "takeProfitPct": 100.0, "maxOpenPositions": 3}


def trading(env: BotEnv, bot: BotProcess, least_trades: int = 2) -> None:
    kube.wait_for(lambda: bot.ready, timeout=60, message="bot ready")
    kube.wait_for(
        lambda: (s := env.state()) and s.stats.total_trades >= least_trades,
        timeout=60,
        message=f"{least_trades} fills stored",
    )


def stop(bot: BotProcess) -> None:
    bot.proc.send_signal(signal.SIGTERM)
    assert bot.wait_exit(GRACE_SECONDS) == 0


def test_the_bots_role_authorizes_a_watch_of_its_own_tradingbot_only(bot_env: BotEnv) -> None:
    """The Role names the TradingBot in resourceNames: a list or watch with a fieldSelector on
    metadata.name is authorized, an unrestricted one is not."""
    api = client.CustomObjectsApi(config.new_client_from_config(str(bot_env.kubeconfig)))
    selector = f"metadata.name={BOT}"
    listed = api.list_namespaced_custom_object(
        GROUP, VERSION, bot_env.namespace, PLURAL, field_selector=selector
    )
    assert [item["metadata"]["name"] for item in listed["items"]] == [BOT]
    watch = api.list_namespaced_custom_object(
        GROUP,
        VERSION,
        bot_env.namespace,
        PLURAL,
        field_selector=selector,
        watch=True,
        allow_watch_bookmarks=True,
        timeout_seconds=1,
        resource_version=listed["metadata"]["resourceVersion"],
        _preload_content=False,
    )
    assert watch.status == 200
    watch.release_conn()
    try:
        api.list_namespaced_custom_object(GROUP, VERSION, bot_env.namespace, PLURAL)
    except client.ApiException as exc:
        assert exc.status == 403
    else:
        raise AssertionError("an unrestricted list was allowed")


def test_a_halt_stops_every_fill_within_a_second_without_the_operator(bot_env: BotEnv) -> None:
    bot = bot_env.start("alpha-pod-1")
    trading(bot_env, bot, least_trades=3)
    halted_at = bot_env.annotate(**{ANNOTATION_HALT: "true"})
    kube.wait_for(
        lambda: bot_env.kill_switch() is not None and bot_env.kill_switch()[0] == "true",
        timeout=20,
        message="the bot reports the halt",
    )
    time.sleep(3)  # dozens of ticks
    state = bot_env.state()
    assert fills_after(state, halted_at + ONE_SECOND) == []
    code, body = bot.get("/readyz")
    assert code == 503 and isinstance(body, dict)
    assert body["reason"] == "kill switch true (bot switch)"
    assert bot.proc.poll() is None and (bot_env.lease_holder() or "").startswith("alpha-pod-1_")
    assert state is not None and state.reason in ("halt", "periodic")
    assert bot_env.events("KillSwitch")
    assert bot.logged("kill switch obeyed")

    resumed_at = bot_env.annotate(**{ANNOTATION_HALT: None})
    kube.wait_for(lambda: bot.ready, timeout=20, message="ready again without the halt")
    kube.wait_for(
        lambda: fills_after(bot_env.state(), resumed_at),
        timeout=60,
        message="trading resumed",
    )
    stop(bot)


def test_the_fleet_switch_stops_every_fill_within_a_second(
    bot_env: BotEnv, fleet_switch: FleetSwitch
) -> None:
    bot = bot_env.start("alpha-pod-1", FLEET_SWITCH=fleet_switch.env)
    trading(bot_env, bot)
    halted_at = fleet_switch.set("true")
    kube.wait_for(
        lambda: bot.get("/readyz")[0] == 503, timeout=20, message="not ready under the fleet halt"
    )
    time.sleep(3)
    assert fills_after(bot_env.state(), halted_at + ONE_SECOND) == []
    body = bot.get("/readyz")[1]
    assert isinstance(body, dict) and body["reason"] == "kill switch true (fleet switch)"
    fleet_switch.set(None)
    kube.wait_for(lambda: bot.ready, timeout=20, message="ready once the fleet switch is off")
    stop(bot)


def test_a_cut_control_watch_stops_entries_until_it_is_back(
    bot_env: BotEnv, watch_cut_proxy: tuple[WatchCutProxy, Path]
) -> None:
    proxy, through_proxy = watch_cut_proxy
    bot = bot_env.start(
        "alpha-pod-1", KUBECONFIG=str(through_proxy), CONTROL_WATCH_TIMEOUT_SECONDS="2"
    )
    trading(bot_env, bot)
    assert proxy.watch_requests >= 1
    proxy.cut()
    kube.wait_for(
        lambda: bot.metric('tradingbot_control_watch_silent{bot="alpha"}') == 1.0,
        timeout=30,
        message="the bot notices its watch is silent",
    )
    (silent,) = bot.logged("control watch silent: no new entries until it is heard again")
    silent_at = log_time(silent)
    time.sleep(3)
    entries = [f for f in fills_after(bot_env.state(), silent_at) if f.side == "buy"]
    assert entries == []
    assert bot_env.events("ControlWatchSilent")  # everything but the watch still works
    assert bot.ready and bot.proc.poll() is None

    proxy.mend()
    kube.wait_for(
        lambda: bot.metric('tradingbot_control_watch_silent{bot="alpha"}') == 0.0,
        timeout=30,
        message="the watch is heard again",
    )
    (heard,) = bot.logged("control watches heard again: entries resume")
    kube.wait_for(
        lambda: [f for f in fills_after(bot_env.state(), log_time(heard)) if f.side == "buy"],
        timeout=60,
        message="entries resume",
    )
    stop(bot)


def fill_ids(bot: BotProcess) -> set[str]:
    return {str(line["client_order_id"]) for line in bot.logged("fill")}


def test_two_processes_with_one_pod_identity_never_trade_together(bot_env: BotEnv) -> None:
    a = bot_env.start("alpha-pod-1")
    b = bot_env.start("alpha-pod-1")  # same POD_NAME and POD_UID
    kube.wait_for(lambda: a.ready or b.ready, timeout=60, message="one of the two ready")
    leader, follower = (a, b) if a.ready else (b, a)
    kube.wait_for(
        lambda: (s := bot_env.state()) and s.stats.total_trades >= 3,
        timeout=60,
        message="the leader trades",
    )
    time.sleep(2)
    assert not follower.ready and fill_ids(follower) == set()
    code, body = follower.get("/readyz")
    assert code == 503 and isinstance(body, dict) and body["phase"] == "waiting-for-lease"
    (acquired,) = leader.logged("acquired the trader lease")
    assert bot_env.lease_holder() == acquired["identity"]
    assert acquired["identity"].startswith("alpha-pod-1_uid-alpha-pod-1_")

    stop(leader)
    (final,) = leader.logged("final checkpoint written")
    kube.wait_for(lambda: follower.ready, timeout=30, message="the follower takes over")
    kube.wait_for(lambda: fill_ids(follower), timeout=60, message="the follower trades")
    first_follower_fill = min(log_time(line) for line in follower.logged("fill"))
    assert first_follower_fill > log_time(final)
    assert fill_ids(leader).isdisjoint(fill_ids(follower))
    stop(follower)


def test_a_frozen_orphan_places_no_order_writes_nothing_and_exits(bot_env: BotEnv) -> None:
    orphan = bot_env.start("alpha-pod-1")
    trading(bot_env, orphan)
    orphan.proc.send_signal(signal.SIGSTOP)
    try:
        successor = bot_env.start("alpha-pod-1")
        kube.wait_for(
            lambda: successor.ready,
            timeout=LEASE_SECONDS * 4 + 30,
            message="the successor takes the expired Lease",
        )
        kube.wait_for(lambda: fill_ids(successor), timeout=60, message="the successor trades")
    finally:
        resumed_at = datetime.now(UTC)
        orphan.proc.send_signal(signal.SIGCONT)
    assert orphan.wait_exit(30) == 4  # EXIT_FENCED
    late = [line for line in orphan.logged("fill") if log_time(line) > resumed_at]
    assert late == []
    assert orphan.logged("fencing broken: exiting without writing state")
    assert not orphan.logged("final checkpoint written")
    # Had the orphan written state, the successor would have met a conflict and exited.
    time.sleep(2)
    assert successor.proc.poll() is None and successor.ready
    state = bot_env.state()
    assert state is not None
    stored = {f.client_order_id for f in fills_after(state, resumed_at)}
    assert stored <= fill_ids(successor)
    stop(successor)


def held_positions(env: BotEnv, least: int) -> Any:
    return kube.wait_for(
        lambda: (s := env.state()) and len(s.positions) >= least and s,
        timeout=60,
        message=f"{least} positions open",
    )


DRAIN_ATTEMPTS = 3


def test_drain_ends_flat_by_exits_alone_and_reports_it(bot_env: BotEnv) -> None:
    """The strategy exits by itself, so a position seen in the stored state may close before
    the bot observes the drain; such an attempt proves nothing and is repeated (bounded)."""
    bot = bot_env.start("alpha-pod-1")
    trading(bot_env, bot)
    for attempt in range(1, DRAIN_ATTEMPTS + 1):
        held_positions(bot_env, 1)
        drained_at = bot_env.annotate(**{ANNOTATION_HALT: "drain"})
        kube.wait_for(
            lambda: bot_env.kill_switch() == ("drain", True),
            timeout=90,
            message="drained flat and reported",
        )
        if bot.logged("kill switch obeyed")[-1]["positions"]:
            break  # it held something when it obeyed: the drain did the closing
        assert attempt < DRAIN_ATTEMPTS, "the bot was flat already at every drain"
        bot_env.annotate(**{ANNOTATION_HALT: None})
        kube.wait_for(
            lambda: (bot_env.kill_switch() or ("", False))[0] == "" and bot.ready,
            timeout=20,
            message="resumed: no mode reported and ready",
        )
    state = bot_env.state()
    assert state is not None and state.positions == {}
    late = fills_after(state, drained_at + ONE_SECOND)
    assert [f for f in late if f.side == "buy"] == []
    assert bot_env.status()["killSwitch"]["observedAt"]
    assert bot_env.events("KillSwitchFlat")
    stop(bot)


def test_flatten_closes_every_position_at_market_and_reports_flat(bot_env: BotEnv) -> None:
    bot_env.patch_spec({"strategy": {"params": HOLDING}, "risk": WIDE_RISK})
    bot = bot_env.start("alpha-pod-1")
    trading(bot_env, bot)
    before = held_positions(bot_env, 2)
    bot_env.annotate(**{ANNOTATION_HALT: "flatten"})
    kube.wait_for(
        lambda: bot_env.kill_switch() == ("flatten", True),
        timeout=60,
        message="flattened and reported",
    )
    state = bot_env.state()
    assert state is not None and state.positions == {}
    closed = {f.symbol for f in state.journal if f.reason == "flatten"}
    assert set(before.positions) <= closed
    assert all(f.side == "sell" for f in state.journal if f.reason == "flatten")
    (obeyed,) = bot.logged("kill switch obeyed")
    assert set(obeyed["positions"]) >= set(before.positions)
    stop(bot)
