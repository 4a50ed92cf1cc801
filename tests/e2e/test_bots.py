"""The product whole: real bots as processes, the operator, the API server. Nothing lost."""

from __future__ import annotations

import copy
import signal
import time

from tests import kube
from tests.e2e.harness import E2E, ledger
from tests.integration.invalid_specs import VALID_BASE_SPEC


def spec(profile: str = "volatile", **restart_policy: int) -> dict:
    s = copy.deepcopy(VALID_BASE_SPEC)
    s["profile"] = profile
    s["symbols"] = ["BTC/USDT", "ETH/USDT", "SOL/USDT"]
    s["risk"].update(maxOpenPositions=3, maxPositionNotional=500)
    s["restartPolicy"].update(gracePeriodSeconds=10, **restart_policy)
    return s


def test_ten_edits_in_a_second_restart_once_and_lose_nothing(e2e: E2E) -> None:
    e2e.start_operator()
    recorder = e2e.record_state("bot-a")
    e2e.bots.create("bot-a", spec(coalesceSeconds=2))
    e2e.bots.wait_running_with("bot-a", timeout=60)
    e2e.wait_trades("bot-a", 1)
    for i in range(10):
        e2e.bots.patch(
            "bot-a",
            {"spec": {"strategy": {"params": {}}, "risk": {"maxDailyLossPct": 3.0 + i * 0.1}}},
        )
        time.sleep(0.08)
    kube.wait_for(
        lambda: e2e.bots.status("bot-a").get("restarts", {}).get("total") == 1,
        timeout=60,
        message="one restart",
    )
    status = e2e.bots.wait_running_with("bot-a", timeout=60)
    time.sleep(3)
    assert e2e.bots.status("bot-a")["restarts"]["total"] == 1
    kube.wait_for(
        lambda: any(c["reason"] == "restore" for c in recorder.checkpoints[1:]),
        timeout=30,
        message="restore checkpoint of the new process",
    )
    shutdown = [c for c in recorder.checkpoints if c["reason"] == "shutdown"]
    assert len(shutdown) == 1, [c["reason"] for c in recorder.checkpoints]
    after = recorder.checkpoints[recorder.checkpoints.index(shutdown[0]) + 1]
    assert after["reason"] == "restore"
    assert ledger(after) == ledger(shutdown[0])
    assert after["checkpointSeq"] > shutdown[0]["checkpointSeq"]
    assert status["restarts"]["last"]["result"] == "succeeded"


def test_a_killed_bot_process_is_restarted_by_the_node_and_loses_no_fill(e2e: E2E) -> None:
    e2e.start_operator()
    recorder = e2e.record_state("bot-a")
    e2e.bots.create("bot-a", spec())
    e2e.bots.wait_running_with("bot-a", timeout=60)
    e2e.wait_trades("bot-a", 2)
    proc = e2e.bot_process("bot-a")
    before_kill = e2e.state("bot-a")
    assert before_kill is not None
    proc.send_signal(signal.SIGKILL)
    kube.wait_for(
        lambda: (p := e2e.bot_process("bot-a")) is not None and p.pid != proc.pid,
        timeout=30,
        message="the node to restart the bot",
    )
    restored = kube.wait_for(
        lambda: next(
            (
                c
                for c in recorder.checkpoints
                if c["reason"] == "restore" and c["checkpointSeq"] > before_kill["checkpointSeq"]
            ),
            None,
        ),
        timeout=60,
        message="restore after the kill",
    )
    last_before = [
        c for c in recorder.checkpoints if c["checkpointSeq"] < restored["checkpointSeq"]
    ][-1]
    assert ledger(restored) == ledger(last_before)
    journal_ids = {f["orderId"] for f in last_before["journal"]}
    restored_ids = {f["orderId"] for f in restored["journal"]}
    assert journal_ids and journal_ids <= restored_ids


def test_operator_killed_mid_restart_completes_with_one_pod(e2e: E2E) -> None:
    e2e.start_operator()
    e2e.bots.create("bot-a", spec(coalesceSeconds=0))
    e2e.bots.wait_running_with("bot-a", timeout=60)
    e2e.operators[-1].stop()
    doomed = e2e.start_operator(TRADINGBOT_OPERATOR_FAILPOINT="after-pod-deleted")
    e2e.bots.patch("bot-a", {"spec": {"symbols": ["BTC/USDT", "ETH/USDT"]}})
    kube.wait_for(lambda: doomed.exited() is not None, timeout=30, message="operator death")
    e2e.start_operator()
    status = e2e.bots.wait_running_with("bot-a", timeout=90)
    assert status["restarts"]["total"] == 1
    assert len(e2e.bots.pods("bot-a")) == 1


def test_suspend_exits_zero_with_a_shutdown_state_and_resume_keeps_positions(e2e: E2E) -> None:
    e2e.start_operator()
    recorder = e2e.record_state("bot-a")
    e2e.bots.create("bot-a", spec(coalesceSeconds=0))
    e2e.bots.wait_running_with("bot-a", timeout=60)
    e2e.wait_trades("bot-a", 1)
    proc = e2e.bot_process("bot-a")
    e2e.bots.patch("bot-a", {"spec": {"suspend": True}})
    assert proc.wait(timeout=30) == 0
    e2e.bots.wait_phase("bot-a", "Stopped", timeout=30)
    stopped = e2e.state("bot-a")
    assert stopped is not None and stopped["reason"] == "shutdown"
    e2e.bots.patch("bot-a", {"spec": {"suspend": False}})
    e2e.bots.wait_running_with("bot-a", timeout=60)
    resumed = kube.wait_for(
        lambda: next(
            (c for c in recorder.checkpoints if c["checkpointSeq"] > stopped["checkpointSeq"]), None
        ),
        timeout=30,
        message="first checkpoint after resume",
    )
    assert resumed["reason"] == "restore"
    assert ledger(resumed) == ledger(stopped)


def test_halt_stops_the_bot_within_its_grace_period(e2e: E2E) -> None:
    e2e.start_operator()
    e2e.bots.create("bot-a", spec(coalesceSeconds=600))
    e2e.bots.wait_running_with("bot-a", timeout=60)
    proc = e2e.bot_process("bot-a")
    started = time.monotonic()
    e2e.bots.annotate("bot-a", **{"trading.r7.dev/halt": "true"})
    proc.wait(timeout=10 + 2)
    assert time.monotonic() - started <= 10 + 2
    e2e.bots.wait_phase("bot-a", "Halted", timeout=10)
    assert e2e.state("bot-a")["reason"] == "shutdown"


def test_restarting_all_bots_with_one_slot_takes_one_down_at_a_time(e2e: E2E) -> None:
    e2e.start_operator("--max-concurrent-restarts", "1")
    names = ["bot-estavel", "bot-medio", "bot-volatil", "bot-meme"]
    profiles = ["stable", "medium", "volatile", "meme"]
    for name, profile in zip(names, profiles, strict=True):
        e2e.bots.create(name, spec(profile, coalesceSeconds=0))
    for name in names:
        e2e.bots.wait_running_with(name, timeout=90)
    e2e.census.watch_down = set(names)
    for name in names:
        e2e.bots.annotate(
            name,
            **{
                "trading.r7.dev/restartedAt": "2026-11-29T12:00:00Z",
                "trading.r7.dev/restart-reason": "restart all",
            },
        )
    for name in names:
        kube.wait_for(
            lambda n=name: (
                e2e.bots.status(n).get("restarts", {}).get("total") == 1
                and e2e.bots.status(n).get("phase") == "Running"
            ),
            timeout=120,
            message=f"{name} restarted",
        )
    assert e2e.census.max_down == 1
