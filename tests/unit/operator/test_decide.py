"""The restart state machine, scenario by scenario (SPEC §4)."""

from __future__ import annotations

import dataclasses

import pytest

from tests.unit.operator.world import T0, World, running_world
from tradingbot_api.constants import BlockReason, HaltMode
from tradingbot_operator.decide import decide
from tradingbot_operator.decide_facts import Blocker, FieldChange, OperatorLimits, PodFacts
from tradingbot_operator.decide_outcome import CreatePod, DeletePod


def condition(world: World, kind: str) -> dict:
    return next(c for c in world.status["conditions"] if c["type"] == kind)


def test_first_start_creates_one_pod_and_reports_running_once_ready() -> None:
    world = World()
    first = world.step()
    assert first.actions == [CreatePod("h1")]
    assert world.phase == "Starting"
    assert world.step().actions == []  # not ready yet: wait, do not create another
    world.make_ready()
    world.step()
    assert world.phase == "Running"
    assert world.status["configHash"] == "h1"
    assert condition(world, "Ready")["status"] == "True"
    assert "Started" in world.reasons()
    assert world.status.get("restarts", {}).get("total", 0) == 0


def test_a_spec_edit_is_recorded_as_pending_without_touching_the_pod() -> None:
    world = running_world()
    world.edit("h2", "spec.risk.stopLossPct")
    d = world.step()
    assert d.actions == []
    pending = world.status["pendingAction"]
    assert pending["action"] == "restart"
    assert pending["changedFields"] == ["spec.risk.stopLossPct"]
    assert pending["coalescedChanges"] == 1
    assert world.phase == "Running"
    assert d.requeue_after == pytest.approx(2.0)
    assert world.reasons() == ["ConfigChanged", "RestartRequested"]
    changed = world.decisions[-1].events[0]
    assert changed.details["old"] == {"spec.risk.stopLossPct": "old"}
    assert changed.details["new"] == {"spec.risk.stopLossPct": "new"}


def test_a_burst_of_edits_within_the_window_makes_exactly_one_restart() -> None:
    world = running_world()
    for i in range(10):
        world.edit(f"burst-{i}", "spec.strategy.params.window")
        world.step()
        world.tick(0.1)
    assert world.deletes() == 0
    assert world.status["pendingAction"]["coalescedChanges"] == 10
    world.tick(2.0)
    world.settle()
    assert world.deletes() == 1
    assert world.creates() == 1
    assert world.status["configHash"] == "burst-9"
    assert world.status["restarts"]["total"] == 1
    last = world.status["restarts"]["last"]
    assert last["result"] == "succeeded"
    assert last["changedFields"] == ["spec.strategy.params.window"]
    assert world.reasons().count("RestartCoalesced") == 9
    assert world.reasons().count("RestartStarted") == 1
    assert world.reasons().count("RestartCompleted") == 1


def test_each_edit_restarts_the_quiet_period() -> None:
    world = running_world()
    world.edit("h2", "spec.symbols")
    world.step()
    world.tick(1.5)
    world.edit("h3", "spec.symbols")
    world.step()
    world.tick(1.5)  # 3 s after the first edit, 1.5 s after the last
    assert world.step().actions == []
    world.tick(0.6)
    assert world.step().actions == [DeletePod("bot-a-1", "uid-1", 30)]


def test_an_edit_reverted_before_the_window_closes_restarts_nothing() -> None:
    world = running_world()
    world.edit("h2", "spec.symbols")
    world.step()
    world.tick(0.5)
    world.edit("h1")
    world.step()
    assert "pendingAction" not in world.status
    world.tick(5)
    world.step()
    assert world.deletes() == 0
    assert "RestartCancelled" in world.reasons()


def test_identical_restart_requests_are_coalesced_into_the_pending_one() -> None:
    world = running_world()
    world.edit("restart-1")
    world.step()
    world.step()  # the same request observed again counts nothing
    assert world.status["pendingAction"]["coalescedChanges"] == 1
    world.edit("restart-2")
    world.step()
    assert world.status["pendingAction"]["coalescedChanges"] == 2
    world.tick(3)
    world.settle()
    assert world.deletes() == 1


def test_restarts_over_the_hourly_limit_are_deferred_not_dropped() -> None:
    world = running_world(max_restarts_per_hour=2, coalesce_seconds=0)
    for i in range(2):
        world.edit(f"h{i + 2}", "spec.symbols")
        world.settle()
        world.tick(60)
    assert world.status["restarts"]["total"] == 2
    world.edit("h9", "spec.symbols")
    world.step()
    pending = world.status["pendingAction"]
    assert pending["notBefore"] == "2026-11-29T13:00:00Z"  # first restart + 1 h
    assert world.reasons().count("RateLimited") == 1
    world.step()
    assert world.reasons().count("RateLimited") == 1  # said once per deferral
    world.tick(3400)  # still inside the hour
    world.step()
    assert world.pods[0].config_hash == "h3"
    world.now = T0.replace(hour=13, minute=0, second=1)
    world.settle()
    assert world.status["configHash"] == "h9"
    assert world.status["restarts"]["total"] == 3


def test_attempts_exhausted_give_failed_and_degraded_then_a_new_change_tries_again() -> None:
    world = running_world(max_attempts=2, coalesce_seconds=0)
    world.edit("broken", "spec.image")
    world.step()  # old pod deleted
    world.finish_deletions()
    world.step()  # new pod created
    world.crash()
    world.step()
    assert world.status["pendingAction"]["attempts"] == 1
    assert world.status["pendingAction"]["notBefore"]
    world.finish_deletions()
    world.step()
    assert not world.pods  # back-off: nothing created yet
    world.tick(6)
    world.step()
    assert len(world.pods) == 1
    world.crash()
    world.step()
    assert world.phase == "Failed"
    assert condition(world, "Degraded")["status"] == "True"
    assert condition(world, "Degraded")["reason"] == "AttemptsExhausted"
    assert world.status["restarts"]["last"]["result"] == "failed"
    critical = [e for d in world.decisions for e in d.events if e.severity == "critical"]
    assert [e.reason for e in critical] == ["RestartFailed"]
    world.finish_deletions()
    world.tick(600)
    assert world.step().actions == []  # gave up on this config
    world.edit("fixed", "spec.image")
    world.step()
    assert world.pods and world.pods[0].config_hash == "fixed"
    assert world.status["pendingAction"]["attempts"] == 0
    world.make_ready()
    world.step()
    assert world.phase == "Running"


def test_a_pod_not_ready_within_the_timeout_is_a_failed_attempt() -> None:
    world = World(max_attempts=3)
    world.limits = OperatorLimits(ready_timeout_seconds=60)
    world.step()
    world.tick(59)
    assert world.step().actions == []
    world.tick(2)
    d = world.step()
    assert isinstance(d.actions[0], DeletePod)
    assert "not ready within 60s" in d.events[0].message


def test_suspend_stops_gracefully_then_resume_starts_again() -> None:
    world = running_world(coalesce_seconds=1)
    world.set(suspend=True)
    world.step()
    assert world.deletes() == 0  # stops are coalesced too
    world.tick(1)
    d = world.step()
    assert d.actions == [DeletePod("bot-a-1", "uid-1", 30)]
    assert world.phase == "Stopping"
    world.finish_deletions()
    world.step()
    assert world.phase == "Stopped"
    assert world.step().actions == []
    world.set(suspend=False)
    world.settle()
    assert world.phase == "Running"
    assert world.creates() == 1
    assert world.status.get("restarts", {}).get("total", 0) == 0
    assert [r for r in world.reasons() if r in ("Stopped", "Resumed")] == ["Stopped", "Resumed"]


def test_halt_stops_at_once_ignoring_window_rate_limit_and_slots() -> None:
    world = running_world(coalesce_seconds=60, max_restarts_per_hour=1)
    world.limits = OperatorLimits(restarts_in_flight=5, max_concurrent_restarts=1)
    world.edit("h2", "spec.symbols")
    world.set(halt_mode=HaltMode.TRUE)
    d = world.step()
    assert d.actions == [DeletePod("bot-a-1", "uid-1", 30)]
    assert world.phase == "Halted"
    assert "pendingAction" not in world.status
    world.finish_deletions()
    assert world.step().actions == []
    world.set(halt_mode=None)
    world.settle()
    assert world.phase == "Running"
    assert world.status["configHash"] == "h2"


def test_deletion_stops_the_bot_then_releases_the_finalizer() -> None:
    world = running_world()
    world.set(deleting=True)
    d = world.step()
    assert d.actions == [DeletePod("bot-a-1", "uid-1", 30)]
    assert not d.finalize
    assert world.step().finalize is False  # still terminating
    world.finish_deletions()
    assert world.step().finalize is True


def test_restart_waits_for_a_slot_when_max_concurrent_restarts_are_in_flight() -> None:
    world = running_world(coalesce_seconds=0)
    world.limits = OperatorLimits(restarts_in_flight=1, max_concurrent_restarts=1)
    world.edit("h2", "spec.symbols")
    d = world.step()
    assert d.actions == []
    assert d.requeue_after == 1.0
    world.limits = OperatorLimits(restarts_in_flight=0, max_concurrent_restarts=1)
    d = world.step()
    assert d.holds_restart_slot()
    world.settle()
    assert not world.decisions[-1].holds_restart_slot()


def test_the_new_pod_is_never_created_while_the_old_one_terminates() -> None:
    world = running_world(coalesce_seconds=0)
    world.edit("h2", "spec.symbols")
    world.step()
    for _ in range(3):
        assert world.step().actions == []
    world.finish_deletions()
    assert world.step().actions == [CreatePod("h2")]


@pytest.mark.parametrize(
    ("grace", "age", "again"),
    [
        (0, 5.0, True),  # marked for removal at once, long ago: the removal was cut off
        (0, 0.5, False),  # the removal normally follows within milliseconds
        (30, 60.0, False),  # a graceful stop: the kubelet's to finish
        (None, 60.0, False),
    ],
)
def test_a_deletion_the_api_server_left_half_done_is_issued_again(
    grace: int | None, age: float, again: bool
) -> None:
    world = running_world(coalesce_seconds=0)
    world.edit("h2", "spec.symbols")
    world.step()
    (pod,) = world.pods
    world.pods = [dataclasses.replace(pod, deletion_due=world.now, deletion_grace_seconds=grace)]
    world.tick(age)
    d = world.step()
    assert d.actions == ([DeletePod(pod.name, pod.uid, 0)] if again else [])
    world.finish_deletions()
    assert world.step().actions == [CreatePod("h2")]


def test_a_half_deleted_pod_does_not_hold_up_a_deletion_or_a_halt() -> None:
    for change in ({"deleting": True}, {"halt_mode": HaltMode.TRUE}):
        world = running_world()
        world.set(**change)
        world.step()
        (pod,) = world.pods
        world.pods = [dataclasses.replace(pod, deletion_due=world.now, deletion_grace_seconds=0)]
        world.tick(10)
        assert DeletePod(pod.name, pod.uid, 0) in world.step().actions, change


def test_surplus_pods_are_deleted_keeping_the_current_ready_one() -> None:
    world = running_world()
    stray = PodFacts(name="stray", uid="uid-x", config_hash="h0", created_at=T0)
    world.pods.append(stray)
    d = world.step()
    assert d.actions == [DeletePod("stray", "uid-x", 30)]
    assert d.events[0].severity == "critical"


def test_a_newer_change_during_a_restart_waits_for_that_restart_to_settle() -> None:
    world = running_world(coalesce_seconds=0)
    world.edit("h2", "spec.symbols")
    world.step()
    world.finish_deletions()
    world.step()  # pod for h2 created, not ready
    world.edit("h3", "spec.symbols")
    assert world.step().actions == []
    world.settle()
    assert world.status["restarts"]["total"] == 2
    assert world.status["configHash"] == "h3"


def test_operator_restart_mid_restart_resumes_from_status_alone() -> None:
    world = running_world(coalesce_seconds=0)
    world.edit("h2", "spec.symbols")
    world.step()  # old pod deleted, status says Restarting
    world.finish_deletions()
    # A fresh operator has nothing but the stored status and the pods it lists.
    fresh = decide(world.bot, [], world.now, OperatorLimits())
    assert fresh.actions == [CreatePod("h2")]
    assert fresh.status.get("phase") in (None, "Restarting")


def test_nothing_changes_in_steady_state() -> None:
    world = running_world()
    d = world.step()
    assert d.actions == [] and d.status == {} and d.events == []


def test_a_crash_in_steady_state_is_reported_not_acted_on() -> None:
    world = running_world()
    world.pods = [dataclasses.replace(world.pods[0], ready=False, restart_count=1)]
    d = world.step()
    assert d.actions == []
    assert condition(world, "Ready")["status"] == "False"
    world.make_ready()
    world.step()
    assert condition(world, "Ready")["status"] == "True"


def test_a_restart_recorded_but_not_acted_on_is_finished_without_counting_twice() -> None:
    world = running_world(coalesce_seconds=0, max_restarts_per_hour=1)
    world.edit("h2", "spec.symbols")
    world.step()
    # The operator died after writing status and before deleting: the pod is still alive.
    world.pods = [dataclasses.replace(p, deleting=False) for p in world.pods]
    world.decisions.clear()
    d = world.step()
    assert d.actions == [DeletePod("bot-a-1", "uid-1", 30)]
    assert "RateLimited" not in world.reasons()
    world.settle()
    assert world.status["restarts"]["total"] == 1
    assert len(world.status["restarts"]["history"]) == 1


def test_change_messages_never_show_secret_values() -> None:
    world = running_world()
    world.bot = dataclasses.replace(
        world.bot,
        desired_hash="h2",
        changes=(
            FieldChange("spec.strategy.params.apiSecret", "old-secret", "new-secret"),
            FieldChange("spec.strategy.params.extra", {"token": "t0k"}, {"token": "t1k"}),
        ),
    )
    world.step()
    text = " ".join(e.message for d in world.decisions for e in d.events)
    assert "secret" not in text.replace("apiSecret", "") and "t0k" not in text
    assert "***" in text


INVALID = Blocker(BlockReason.SPEC_INVALID, "invalid spec: spec.strategy.params.fast: unknown")


def test_an_invalid_edit_never_stops_a_healthy_bot() -> None:
    world = running_world()
    world.edit("h2", "spec.strategy.params.fast")
    world.set(blocker=INVALID)
    for _ in range(3):
        d = world.step()
        world.tick(5)
    assert world.deletes() == 0 and world.creates() == 0
    assert world.phase == "Running"
    degraded = condition(world, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "SpecInvalid")
    assert "spec.strategy.params.fast" in degraded["message"]
    assert condition(world, "Ready")["status"] == "True"
    assert world.reasons() == ["SpecInvalid"]  # once, not on every pass
    assert "pendingAction" not in world.status or world.status["pendingAction"] is None
    assert d.requeue_after is not None


def test_a_fixed_edit_after_an_invalid_one_restarts_once_and_clears_degraded() -> None:
    world = running_world()
    world.edit("h2", "spec.strategy.params.fast")
    world.set(blocker=INVALID)
    world.step()
    world.edit("h3", "spec.strategy.params.window")
    world.set(blocker=None)
    world.step()
    world.tick(2.0)
    world.settle()
    assert (world.deletes(), world.creates()) == (1, 1)
    assert world.status["configHash"] == "h3"
    assert condition(world, "Degraded")["status"] == "False"


def test_reverting_an_invalid_edit_clears_degraded_without_a_restart() -> None:
    world = running_world()
    world.edit("h2", "spec.strategy.params.fast")
    world.set(blocker=INVALID)
    world.step()
    world.edit("h1")
    world.set(blocker=None)
    world.step()
    assert world.deletes() == 0
    assert condition(world, "Degraded")["status"] == "False"


def test_a_bot_whose_config_cannot_run_is_never_started() -> None:
    world = World()
    world.set(
        blocker=Blocker(BlockReason.SECRET_NOT_ALLOWED, "Secret keys is not mounted: eve may not")
    )
    d = world.step()
    assert d.actions == []
    assert world.phase == "Failed"
    assert condition(world, "Ready")["reason"] == "SecretNotAllowed"
    assert world.reasons() == ["SecretNotAllowed"]


def test_a_blocker_does_not_keep_a_bot_from_stopping_or_halting() -> None:
    world = running_world()
    world.edit("h2", "spec.image")
    world.set(blocker=Blocker(BlockReason.IMAGE_NOT_ALLOWED, "spec.image evil is not allowed"))
    world.step()
    world.set(halt_mode=HaltMode.TRUE)
    world.step()
    assert world.deletes() == 1 and world.phase == "Halted"


@pytest.mark.parametrize(
    ("action", "setup"),
    [
        ("halt", lambda w: w.set(halt_mode=HaltMode.TRUE)),
        ("stop", lambda w: w.set(suspend=True)),
    ],
)
def test_the_reason_given_with_a_control_action_is_in_its_audit_record(
    action: str, setup: object
) -> None:
    world = running_world()
    world.set(action_reason="exchange outage", requested_by="alice", request_source="plugin")
    setup(world)  # type: ignore[operator]
    world.step()
    events = [e for d in world.decisions for e in d.events if e.event_type == action]
    assert events and all(e.details.get("reason") == "exchange outage" for e in events)
    assert events[0].user_id == "alice"


@pytest.mark.parametrize("mode", [HaltMode.DRAIN, HaltMode.FLATTEN])
def test_drain_and_flatten_keep_the_pod_until_the_bot_reports_flat(mode: HaltMode) -> None:
    world = running_world()
    world.set(status={**world.status, "positions": {"open": 2, "notional": 900.0}})
    world.set(halt_mode=mode)
    for _ in range(3):
        world.step()
        world.tick(5)
    assert world.deletes() == 0
    assert world.phase == "Stopping"
    assert condition(world, "Progressing")["reason"] in ("Draining", "Flattening")
    halts = [e for d in world.decisions for e in d.events if e.event_type == "halt"]
    assert len(halts) == 1 and halts[0].details["positionsBefore"]["open"] == 2
    # The bot says it obeys another mode, or is not flat yet: still waiting.
    world.set(kill_switch={"mode": "true", "flat": True})
    world.step()
    world.set(kill_switch={"mode": str(mode), "flat": False})
    world.step()
    assert world.deletes() == 0
    world.set(
        kill_switch={"mode": str(mode), "flat": True},
        status={**world.status, "positions": {"open": 0, "notional": 0.0}},
    )
    world.step()
    assert world.deletes() == 1
    world.settle()
    assert world.phase == "Halted"
    halted = [e for d in world.decisions for e in d.events if e.reason == "Halted"]
    assert halted and halted[-1].details["positionsAfter"]["open"] == 0


def test_halt_true_stops_at_once_even_with_open_positions() -> None:
    world = running_world()
    world.set(status={**world.status, "positions": {"open": 2}}, halt_mode=HaltMode.TRUE)
    world.step()
    assert world.deletes() == 1


def test_a_pod_on_a_lost_node_is_removed_at_once_and_replaced() -> None:
    world = running_world()
    (pod,) = world.pods
    world.pods = [dataclasses.replace(pod, node_name="node-a", node_lost=True)]
    d = world.step()
    assert d.actions == [DeletePod(pod.name, pod.uid, 0)]
    (event,) = d.events
    assert (event.reason, event.severity) == ("NodeLost", "critical")
    world.finish_deletions()
    world.step()
    assert world.creates() == 1


def test_a_terminating_pod_on_a_lost_node_does_not_hold_up_a_deletion() -> None:
    world = running_world()
    world.set(deleting=True)
    world.step()
    (pod,) = world.pods
    assert pod.deleting
    world.pods = [dataclasses.replace(pod, node_name="node-a", node_lost=True)]
    d = world.step()
    assert DeletePod(pod.name, pod.uid, 0) in d.actions
    world.finish_deletions()
    assert world.step().finalize is True


def test_a_container_that_keeps_restarting_reads_crash_loop_even_when_ready_between() -> None:
    world = running_world()
    (pod,) = world.pods
    for restarts in (1, 2):
        world.pods = [dataclasses.replace(pod, restart_count=restarts, last_exit_code=1)]
        world.step()
        world.tick(30)
    assert condition(world, "Degraded")["status"] == "False"
    world.pods = [
        dataclasses.replace(pod, restart_count=3, last_exit_reason="Error", last_exit_code=1)
    ]
    world.step()
    degraded = condition(world, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "CrashLoop")
    assert "restarted 3 times" in degraded["message"] and "Error (1)" in degraded["message"]
    assert world.status["container"]["restarts"] == 3
    assert world.reasons().count("CrashLoop") == 1
    world.step()
    assert world.reasons().count("CrashLoop") == 1  # once
    world.tick(11 * 60)  # no restart for longer than the window: healthy again
    world.step()
    assert condition(world, "Degraded")["status"] == "False"
    assert condition(world, "Ready")["status"] == "True"
