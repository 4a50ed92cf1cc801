"""The chain's steps for a bot whose pod runs: a change to act on (coalesce, rate-limit,
then restart or stop), or the steady state with the container's health."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from tradingbot_api.constants import (
    BlockReason,
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
from tradingbot_operator.decide_context import (
    POLL_SECONDS,
    Context,
    condition,
    mark_healthy,
    record_blocked,
)
from tradingbot_operator.decide_facts import CRASH_LOOP_RESTARTS, PodFacts
from tradingbot_operator.decide_messages import change_details, describe_request, shown
from tradingbot_operator.ratelimit import CoalescingWindow, check_rate_limit, recent_restarts

# Restart history kept in status (for the hourly rate limit); bounded like the CRD says.
MAX_HISTORY = 100


def change_requested(ctx: Context) -> bool:
    """The live pod runs another config, or the bot should stop: coalesce, limit, act."""
    (pod,) = ctx.alive
    bot = ctx.bot
    stopping = bot.suspend
    if not stopping and pod.config_hash == bot.desired_hash:
        return False
    if (
        ctx.phase == Phase.FAILED
        and not stopping
        and ctx.pending.get("desiredHash") == bot.desired_hash
    ):
        return True
    if not stopping and bot.blocker is not None:
        # The running pod keeps its config: a change that cannot run never stops a healthy bot.
        record_blocked(ctx, bot.blocker)
        return True
    kind = PendingActionKind.STOP if stopping else PendingActionKind.RESTART
    target = "stop" if stopping else bot.desired_hash
    pending = dict(ctx.pending)
    if (pending.get("startedAt") or pending.get("podCreatedAt")) and pending.get(
        "desiredHash"
    ) != target:
        pending = {}  # a new change supersedes a failed or finished attempt
    if pending.get("desiredHash") != target:
        first = not pending or pending.get("action") == PendingActionKind.START
        pending = {
            "action": str(kind),
            "reason": bot.restart_reason or ("stop requested" if stopping else "config change"),
            "desiredHash": target,
            "changedFields": [c.path for c in bot.changes],
            "firstRequestedAt": pending.get("firstRequestedAt") if not first else ctx.ts(),
            "lastRequestedAt": ctx.ts(),
            "coalescedChanges": int(pending.get("coalescedChanges") or 0) + 1 if not first else 1,
            "attempts": 0,
            "notBefore": None,
        }
        if bot.requested_by:
            pending["requestedBy"] = bot.requested_by
        ctx.set_pending(pending)
        if bot.changes and kind == PendingActionKind.RESTART:
            ctx.emit(
                EventType.CONFIG_CHANGE,
                EventReason.CONFIG_CHANGED,
                "changed "
                + "; ".join(
                    f"{c.path}: {shown(c.path, c.old)} -> {shown(c.path, c.new)}"
                    for c in bot.changes
                ),
                source="user",
                details=change_details(bot),
            )
        if first:
            ctx.emit(
                EventType.RESTART if kind == PendingActionKind.RESTART else EventType.STOP,
                EventReason.RESTART_REQUESTED
                if kind == PendingActionKind.RESTART
                else EventReason.STOP_REQUESTED,
                describe_request(kind, bot),
                source="user",
                details=change_details(bot),
            )
        else:
            ctx.emit(
                EventType.RESTART if kind == PendingActionKind.RESTART else EventType.STOP,
                EventReason.RESTART_COALESCED,
                f"change coalesced into the pending {kind} "
                f"({pending['coalescedChanges']} changes so far)",
                source="user",
                details=change_details(bot),
            )
        ctx.set_condition(
            ConditionType.PROGRESSING,
            ConditionStatus.TRUE,
            ConditionReason.CHANGE_PENDING,
            f"{kind} pending: waiting {bot.policy.coalesce_seconds:g}s for further changes",
        )
    window = CoalescingWindow(
        first_requested_at=parse_time(pending["firstRequestedAt"]) or ctx.now,
        last_requested_at=parse_time(pending["lastRequestedAt"]) or ctx.now,
        quiet_seconds=bot.policy.coalesce_seconds,
    )
    if not window.is_closed(ctx.now):
        ctx.decision.wake_at(ctx.now, window.closes_at)
        return True
    history = [t for t in (parse_time(v) for v in _history(ctx.status)) if t]
    # Already started (status was written, the operator stopped before the delete): finish
    # it without counting it against the limits a second time.
    resumed = bool(pending.get("startedAt"))
    if kind == PendingActionKind.RESTART and not resumed:
        verdict = check_rate_limit(history, ctx.now, bot.policy.max_restarts_per_hour)
        if not verdict.allowed:
            assert verdict.not_before is not None
            if pending.get("notBefore") != format_time(verdict.not_before):
                pending["notBefore"] = format_time(verdict.not_before)
                ctx.set_pending(pending)
                ctx.emit(
                    EventType.RATE_LIMITED,
                    EventReason.RATE_LIMITED,
                    f"{verdict.recent} restarts in the last hour reach the limit of "
                    f"{bot.policy.max_restarts_per_hour}; restart deferred until "
                    f"{pending['notBefore']}",
                    severity=Severity.WARNING,
                    details={"notBefore": pending["notBefore"]},
                )
            ctx.decision.wake_at(ctx.now, verdict.not_before)
            return True
        limit = ctx.limits.max_concurrent_restarts
        if limit and ctx.limits.restarts_in_flight >= limit:
            ctx.decision.requeue_after = 1.0
            return True
    # Act: the old pod goes first; the new one is created only once it is gone.
    ctx.delete(pod)
    if resumed:
        ctx.decision.requeue_after = POLL_SECONDS
        return True
    pending["startedAt"] = ctx.ts()
    pending["notBefore"] = None
    ctx.set_pending(pending)
    if kind == PendingActionKind.STOP:
        ctx.set_phase(Phase.STOPPING)
        ctx.emit(EventType.STOP, EventReason.STOPPING, "stopping the bot gracefully", source="user")
    elif not resumed:
        ctx.set_phase(Phase.RESTARTING)
        kept = [format_time(t) for t in recent_restarts(history, ctx.now)]
        restarts = dict(ctx.status.get("restarts") or {})
        restarts["history"] = ([*kept, ctx.ts()])[-MAX_HISTORY:]
        restarts["last"] = {
            "reason": pending.get("reason"),
            "changedFields": pending.get("changedFields") or [],
            "requestedAt": pending.get("firstRequestedAt"),
            "startedAt": ctx.ts(),
            "result": str(RestartResult.IN_PROGRESS),
        }
        ctx.decision.status["restarts"] = restarts
        ctx.emit(
            EventType.RESTART,
            EventReason.RESTART_STARTED,
            f"restarting: stopping {pod.name} gracefully, then starting config "
            f"{bot.desired_hash} ({pending.get('coalescedChanges', 1)} coalesced changes)",
            details={
                "oldPod": pod.name,
                "changedFields": pending.get("changedFields"),
                "coalescedChanges": pending.get("coalescedChanges"),
            },
        )
    ctx.set_condition(
        ConditionType.READY,
        ConditionStatus.FALSE,
        ConditionReason.RESTARTING
        if kind == PendingActionKind.RESTART
        else ConditionReason.STOPPING,
        f"{pod.name} is stopping",
    )
    ctx.decision.requeue_after = POLL_SECONDS
    return True


def pod_current(ctx: Context) -> bool:
    """Steady state: the pod runs the desired config; report its health, cancel reverts."""
    (pod,) = ctx.alive
    pending = ctx.pending
    if pending:
        ctx.set_pending(None)
        ctx.emit(
            EventType.CONFIG_CHANGE,
            EventReason.RESTART_CANCELLED,
            "the pending change was reverted to the running config; nothing to do",
            source="user",
            details={"coalescedChanges": pending.get("coalescedChanges")},
        )
    if ctx.status.get("configHash") != pod.config_hash:
        ctx.decision.status["configHash"] = pod.config_hash
    crash_loop = _report_container(ctx, pod)
    if pod.ready and not pod.terminated and not crash_loop:
        if ctx.phase != Phase.RUNNING:
            ctx.set_phase(Phase.RUNNING)
        if (
            condition(ctx.status, ConditionType.READY).get("status") != ConditionStatus.TRUE
            or pending
            or _blocked_condition(ctx.status)
            or condition(ctx.status, ConditionType.DEGRADED).get("reason") == CRASH_LOOP
        ):
            mark_healthy(ctx)
        return True
    if crash_loop:
        ctx.decision.requeue_after = POLL_SECONDS
        return True
    # The node restarts a crashed container; report it, do not intervene.
    if condition(ctx.status, ConditionType.READY).get("status") != ConditionStatus.FALSE:
        ctx.set_condition(
            ConditionType.READY,
            ConditionStatus.FALSE,
            ConditionReason.POD_NOT_READY,
            f"{pod.name} is not ready (container restarts: {pod.restart_count})",
        )
        ctx.set_condition(
            ConditionType.DEGRADED,
            ConditionStatus.TRUE,
            ConditionReason.POD_NOT_READY,
            f"{pod.name} is not ready",
        )
    ctx.decision.requeue_after = POLL_SECONDS
    return True


# A container that restarted this often within the window is crash-looping, even if it is
# Ready between crashes (Ready flapping would otherwise hide it).
CRASH_LOOP = ConditionReason.CRASH_LOOP


CRASH_LOOP_WINDOW = dt.timedelta(minutes=10)


MAX_RECENT_RESTARTS = 10


def _report_container(ctx: Context, pod: PodFacts) -> bool:
    """Container restarts and the last exit in `status.container`; True while the container
    is crash-looping (condition Degraded, reason CrashLoop, once as an Event)."""
    seen = dict(ctx.status.get("container") or {})
    same_pod = seen.get("pod") == pod.name
    recent = [
        t
        for t in (parse_time(v) for v in (seen.get("recentRestarts") or []) if same_pod)
        if t and ctx.now - t <= CRASH_LOOP_WINDOW
    ]
    before = int(seen.get("restarts") or 0) if same_pod else 0
    recent += [ctx.now] * max(0, min(pod.restart_count - before, MAX_RECENT_RESTARTS))
    recent = recent[-MAX_RECENT_RESTARTS:]
    report = {
        "pod": pod.name,
        "restarts": pod.restart_count,
        "recentRestarts": [format_time(t) for t in recent],
        "lastExitReason": pod.last_exit_reason,
        "lastExitCode": pod.last_exit_code,
    }
    if report != {**report, **{k: seen.get(k) for k in report}}:
        ctx.decision.status["container"] = report
    looping = len(recent) >= CRASH_LOOP_RESTARTS
    degraded = condition(ctx.status, ConditionType.DEGRADED)
    if looping and degraded.get("reason") != CRASH_LOOP:
        last = f"{pod.last_exit_reason or 'exit'} ({pod.last_exit_code})"
        message = (
            f"{pod.name}'s container restarted {len(recent)} times in "
            f"{int(CRASH_LOOP_WINDOW.total_seconds() // 60)} minutes; last: {last}"
        )
        ctx.set_condition(ConditionType.DEGRADED, ConditionStatus.TRUE, CRASH_LOOP, message)
        ctx.set_condition(ConditionType.READY, ConditionStatus.FALSE, CRASH_LOOP, message)
        ctx.emit(
            EventType.ERROR,
            EventReason.CRASH_LOOP,
            message,
            severity=Severity.WARNING,
            details=report,
        )
    return looping


def _blocked_condition(status: Mapping[str, Any]) -> bool:
    degraded = condition(status, ConditionType.DEGRADED)
    return degraded.get("status") == ConditionStatus.TRUE and degraded.get("reason") in set(
        BlockReason
    )


def _history(status: Mapping[str, Any]) -> list[str]:
    return list((status.get("restarts") or {}).get("history") or [])
