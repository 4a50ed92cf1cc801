"""The chain's steps for starting a pod: none is live (stay stopped, wait out back-off,
or create one), and the pod created for a start or restart is not ready yet or is ready."""

from __future__ import annotations

import datetime as dt

from tradingbot_api.constants import (
    ConditionReason,
    ConditionStatus,
    ConditionType,
    EventReason,
    EventType,
    PendingActionKind,
    Phase,
    RestartResult,
    Severity,
)
from tradingbot_api.times import format_time, parse_time
from tradingbot_operator.decide_context import POLL_SECONDS, Context, mark_healthy, record_blocked
from tradingbot_operator.decide_facts import PodFacts
from tradingbot_operator.decide_outcome import CreatePod
from tradingbot_operator.ratelimit import failure_backoff


def no_pod(ctx: Context) -> bool:
    """No pod: stay stopped, wait out back-off, or create the pod with the desired hash."""
    if ctx.alive:
        return False
    bot, pending = ctx.bot, ctx.pending
    if bot.suspend:
        if ctx.phase != Phase.STOPPED:
            ctx.set_phase(Phase.STOPPED)
            ctx.set_pending(None)
            ctx.set_condition(
                ConditionType.READY,
                ConditionStatus.FALSE,
                ConditionReason.SUSPENDED,
                "suspended (stop requested)",
            )
            ctx.set_condition(
                ConditionType.PROGRESSING,
                ConditionStatus.FALSE,
                ConditionReason.SUSPENDED,
                "stopped; resume to start it again (spec.suspend false, no suspend annotation)",
            )
            ctx.emit(
                EventType.STOP,
                EventReason.STOPPED,
                "bot stopped gracefully; positions kept",
                source="user",
            )
        return True
    if ctx.phase == Phase.FAILED and pending.get("desiredHash") == bot.desired_hash:
        return True  # gave up on this config; a new change tries again
    not_before = parse_time(pending.get("notBefore"))
    if pending.get("desiredHash") == bot.desired_hash and not_before and not_before > ctx.now:
        ctx.decision.wake_at(ctx.now, not_before)
        return True
    restarting = ctx.phase == Phase.RESTARTING and bool(pending.get("startedAt"))
    if bot.blocker is not None:
        if restarting:
            _finish_restart(ctx, RestartResult.FAILED)
        record_blocked(ctx, bot.blocker)
        ctx.set_phase(Phase.FAILED)
        ctx.set_condition(
            ConditionType.READY, ConditionStatus.FALSE, bot.blocker.reason, bot.blocker.message
        )
        return True
    resuming = ctx.phase in (Phase.STOPPED, Phase.HALTED)
    same_target = pending.get("desiredHash") == bot.desired_hash
    attempts = int(pending.get("attempts") or 0) if same_target else 0
    new_pending = {
        **(pending if (restarting or same_target) else {}),
        "action": pending.get("action") if restarting else str(PendingActionKind.START),
        "reason": pending.get("reason")
        if restarting
        else ("resume" if resuming else "first start"),
        "desiredHash": bot.desired_hash,
        "attempts": attempts,
        "podCreatedAt": ctx.ts(),
        "notBefore": None,
    }
    new_pending.setdefault("firstRequestedAt", ctx.ts())
    new_pending.setdefault("lastRequestedAt", ctx.ts())
    new_pending.setdefault("coalescedChanges", 0)
    ctx.decision.actions.append(CreatePod(bot.desired_hash))
    ctx.set_pending(new_pending)
    if not restarting:
        ctx.set_phase(Phase.STARTING)
        if resuming:
            ctx.emit(
                EventType.RESUME,
                EventReason.RESUMED,
                f"bot resumed from {ctx.phase}",
                source="user",
            )
    ctx.set_condition(
        ConditionType.PROGRESSING,
        ConditionStatus.TRUE,
        ConditionReason.POD_CREATED,
        f"pod created with config {bot.desired_hash}",
    )
    ctx.decision.wake_at(ctx.now, ctx.now + dt.timedelta(seconds=ctx.limits.ready_timeout_seconds))
    return True


def _in_flight(ctx: Context, pod: PodFacts) -> bool:
    """The live pod is the one this operator created for the pending action."""
    pending = ctx.pending
    return bool(pending.get("podCreatedAt")) and pod.config_hash == pending.get("desiredHash")


def new_pod_not_ready(ctx: Context) -> bool:
    """The pod created for a start or restart: wait for readiness, or count a failed attempt.

    A newer change waits until this attempt settles, so every restart is recorded whole.
    """
    (pod,) = ctx.alive
    if (pod.ready and not pod.terminated) or not _in_flight(ctx, pod):
        return False
    pending = dict(ctx.pending)
    created = parse_time(pending.get("podCreatedAt")) or pod.created_at or ctx.now
    deadline = created + dt.timedelta(seconds=ctx.limits.ready_timeout_seconds)
    if not pod.crash_looping and ctx.now < deadline:
        ctx.decision.wake_at(ctx.now, deadline)
        return True
    attempts = int(pending.get("attempts") or 0) + 1
    why = (
        "crash-looping"
        if pod.crash_looping
        else (f"not ready within {ctx.limits.ready_timeout_seconds:g}s")
    )
    ctx.delete(pod)
    pending["attempts"] = attempts
    if attempts >= ctx.bot.policy.max_attempts:
        pending["notBefore"] = None
        ctx.set_pending(pending)
        ctx.set_phase(Phase.FAILED)
        ctx.set_condition(
            ConditionType.DEGRADED,
            ConditionStatus.TRUE,
            ConditionReason.ATTEMPTS_EXHAUSTED,
            f"gave up after {attempts} attempts: {why}",
        )
        ctx.set_condition(ConditionType.READY, ConditionStatus.FALSE, ConditionReason.FAILED, why)
        ctx.set_condition(
            ConditionType.PROGRESSING,
            ConditionStatus.FALSE,
            ConditionReason.ATTEMPTS_EXHAUSTED,
            "a new change to the bot tries again",
        )
        _finish_restart(ctx, RestartResult.FAILED)
        ctx.emit(
            EventType.ERROR,
            EventReason.RESTART_FAILED,
            f"bot failed to start after {attempts} attempts ({why}); giving up until "
            "the TradingBot changes",
            severity=Severity.CRITICAL,
            details={"attempts": attempts, "reason": why},
        )
        return True
    not_before = ctx.now + failure_backoff(attempts)
    pending["notBefore"] = format_time(not_before)
    ctx.set_pending(pending)
    ctx.set_condition(
        ConditionType.DEGRADED,
        ConditionStatus.TRUE,
        ConditionReason.ATTEMPT_FAILED,
        f"attempt {attempts} of {ctx.bot.policy.max_attempts} failed: {why}",
    )
    ctx.emit(
        EventType.ERROR,
        EventReason.RESTART_FAILED,
        f"attempt {attempts} of {ctx.bot.policy.max_attempts} failed ({why}); retrying "
        f"after {pending['notBefore']}",
        severity=Severity.WARNING,
        details={"attempts": attempts, "reason": why},
    )
    ctx.decision.requeue_after = POLL_SECONDS
    return True


def new_pod_ready(ctx: Context) -> bool:
    """The pod created for a start or restart is ready: record the outcome."""
    (pod,) = ctx.alive
    if not _in_flight(ctx, pod):
        return False
    pending = ctx.pending
    if pending.get("action") == PendingActionKind.RESTART:
        _finish_restart(ctx, RestartResult.SUCCEEDED)
        ctx.emit(
            EventType.RESTART,
            EventReason.RESTART_COMPLETED,
            f"restart completed; config {pod.config_hash} is running",
            details={
                "durationSeconds": ctx.decision.status["restarts"]["last"].get("durationSeconds"),
                "changedFields": pending.get("changedFields"),
            },
        )
    else:
        ctx.emit(EventType.START, EventReason.STARTED, f"bot running with config {pod.config_hash}")
    ctx.set_pending(None)
    ctx.set_phase(Phase.RUNNING)
    ctx.decision.status["configHash"] = pod.config_hash
    mark_healthy(ctx)
    if pod.config_hash != ctx.bot.desired_hash:
        ctx.decision.requeue_after = 0.05  # a newer change arrived meanwhile
    return True


def _finish_restart(ctx: Context, result: RestartResult) -> None:
    restarts = dict(ctx.decision.status.get("restarts") or ctx.status.get("restarts") or {})
    last = dict(restarts.get("last") or {})
    if last.get("result") != RestartResult.IN_PROGRESS:
        return
    started = parse_time(last.get("startedAt"))
    last.update(
        completedAt=ctx.ts(),
        result=str(result),
        attempts=int(ctx.pending.get("attempts") or 0)
        + (1 if result == RestartResult.SUCCEEDED else 0),
    )
    if started:
        last["durationSeconds"] = round((ctx.now - started).total_seconds(), 3)
    restarts["last"] = last
    restarts["total"] = int(restarts.get("total") or 0) + 1
    ctx.decision.status["restarts"] = restarts
