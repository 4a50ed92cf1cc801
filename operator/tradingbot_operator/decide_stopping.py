"""The chain's first steps: pods that must go before anything else.

A deletion left half done, a pod on a lost node, a deleted TradingBot, the kill switch,
surplus pods, and a pod still terminating (never create one while an old one exists).
"""

from __future__ import annotations

from typing import Any

from tradingbot_api.constants import (
    ConditionReason,
    ConditionStatus,
    ConditionType,
    EventReason,
    EventType,
    HaltMode,
    Phase,
    Severity,
)
from tradingbot_operator.decide_context import POLL_SECONDS, Context, condition
from tradingbot_operator.decide_outcome import DeletePod


def bot_is_being_deleted(ctx: Context) -> bool:
    """Deletion: stop gracefully, keep the state, then let the finalizer go."""
    if not ctx.bot.deleting:
        return False
    for pod in ctx.alive:
        ctx.delete(pod)
    if ctx.pods:
        if ctx.phase != Phase.STOPPING:
            ctx.set_phase(Phase.STOPPING)
            ctx.emit(
                EventType.STOP,
                EventReason.STOPPING,
                "TradingBot deleted: stopping the bot gracefully; its state is kept",
                details={"trigger": "deletion"},
            )
        ctx.decision.requeue_after = POLL_SECONDS
    else:
        ctx.set_phase(Phase.STOPPED)
        ctx.decision.finalize = True
        ctx.emit(
            EventType.STOP,
            EventReason.STOPPED,
            "bot stopped for deletion; state kept",
            details={"trigger": "deletion"},
        )
    return True


def half_deleted_pods(ctx: Context) -> bool:
    """A deletion the API server marked but never finished (see PodFacts.half_deleted) is
    finished, whatever else this pass decides: every step below waits for such a pod to
    go, and without a kubelet or pod garbage collector for it, it never would."""
    for pod in ctx.pods:
        if pod.half_deleted(ctx.now) and not pod.node_lost:  # the next step deletes those
            ctx.decision.actions.append(DeletePod(pod.name, pod.uid, 0))
    return False


def pods_on_lost_nodes(ctx: Context) -> bool:
    """A pod whose node stopped heartbeating, and whose bot no longer holds its Lease, will
    never be stopped by that node: remove it at once (no grace: nothing runs it any more)
    so that a replacement can start. The Lease check is what makes this safe: a bot that
    still renews its Lease is alive somewhere, and a new one would wait for it anyway."""
    lost = [p for p in ctx.pods if p.node_lost]
    if not lost:
        return False
    for pod in lost:
        ctx.decision.actions.append(DeletePod(pod.name, pod.uid, 0))
        ctx.emit(
            EventType.ERROR,
            EventReason.NODE_LOST,
            f"{pod.name} is on node {pod.node_name}, which stopped heartbeating, and its bot "
            "holds no Lease: removing the pod so that a replacement starts",
            severity=Severity.CRITICAL,
            details={"pod": pod.name, "node": pod.node_name},
        )
    ctx.decision.requeue_after = 0.5
    return True


_GENTLE_LABELS = {HaltMode.DRAIN: EventReason.DRAINING, HaltMode.FLATTEN: EventReason.FLATTENING}


def halt_requested(ctx: Context) -> bool:
    """The kill switch: no coalescing window, no rate limit, no restart slot.

    `true` stops the pod now. `drain` and `flatten` keep it until the bot reports that it
    obeys that mode and holds no position (`status.killSwitch`), then stop it."""
    mode = ctx.bot.halt_mode
    if mode is None:
        return False
    positions = dict(ctx.status.get("positions") or {})
    report = ctx.bot.kill_switch
    label = _GENTLE_LABELS.get(mode)
    done = report.get("mode") == mode and report.get("flat") is True
    if label and ctx.alive and not done:
        if condition(ctx.status, ConditionType.PROGRESSING).get("reason") != label:
            progressing = ConditionReason(label)
            ctx.set_phase(Phase.STOPPING)
            ctx.set_pending(None)
            ctx.set_condition(
                ConditionType.READY,
                ConditionStatus.FALSE,
                ConditionReason.HALTED,
                f"kill switch: {mode}",
            )
            ctx.set_condition(
                ConditionType.PROGRESSING,
                ConditionStatus.TRUE,
                progressing,
                "no new entries; exits managed until flat"
                if mode == HaltMode.DRAIN
                else "orders cancelled, positions being closed at market",
            )
            ctx.emit(
                EventType.HALT,
                label,
                f"kill switch ({mode}, {ctx.bot.halt_source} switch): the bot stops once flat",
                severity=Severity.WARNING,
                source="user",
                details={
                    "mode": str(mode),
                    "switch": ctx.bot.halt_source,
                    "positionsBefore": positions,
                },
            )
        ctx.decision.requeue_after = POLL_SECONDS
        return True
    first = ctx.phase != Phase.HALTED or bool(ctx.alive)
    for pod in ctx.alive:
        ctx.delete(pod)
    if first:
        ctx.set_phase(Phase.HALTED)
        ctx.set_pending(None)
        ctx.set_condition(
            ConditionType.READY,
            ConditionStatus.FALSE,
            ConditionReason.HALTED,
            f"halted by the kill switch ({mode}, {ctx.bot.halt_source} switch)",
        )
        ctx.set_condition(
            ConditionType.PROGRESSING,
            ConditionStatus.FALSE,
            ConditionReason.HALTED,
            "halted; remove the kill switch to resume",
        )
        details: dict[str, Any] = {
            "mode": str(mode),
            "switch": ctx.bot.halt_source,
            "podsStopped": [p.name for p in ctx.alive],
        }
        details["positionsAfter" if label else "positions"] = positions
        ctx.emit(
            EventType.HALT,
            EventReason.HALTED,
            "kill switch: bot stopped without coalescing or rate limit"
            + (f" after it reported flat ({mode})" if label else ""),
            severity=Severity.WARNING,
            source="user",
            details=details,
        )
    if ctx.pods:
        ctx.decision.requeue_after = POLL_SECONDS
    return True


def surplus_pods(ctx: Context) -> bool:
    """More than one live pod for a bot must never last: keep the best one, delete others."""
    alive = ctx.alive
    if len(alive) <= 1:
        return False
    keep = sorted(
        alive,
        key=lambda p: (p.config_hash != ctx.bot.desired_hash, not p.ready, p.created_at or ctx.now),
    )[0]
    for pod in alive:
        if pod is not keep:
            ctx.delete(pod)
    ctx.emit(
        EventType.ERROR,
        EventReason.SURPLUS_POD_DELETED,
        f"{len(alive)} pods found for one bot; kept {keep.name}, deleting the rest",
        severity=Severity.CRITICAL,
        details={"pods": [p.name for p in alive], "kept": keep.name},
    )
    ctx.decision.requeue_after = POLL_SECONDS
    return True


def pod_still_terminating(ctx: Context) -> bool:
    """Never create a pod while an old one exists: wait for it to be gone."""
    if not ctx.terminating:
        return False
    for pod in ctx.alive:  # a live pod beside a terminating one is surplus too
        ctx.delete(pod)
    ctx.decision.requeue_after = POLL_SECONDS
    return True
