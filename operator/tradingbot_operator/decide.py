"""The restart state machine (SPEC §4) as one pure function.

``decide(bot, pods, now, limits)`` looks at what is (the TradingBot with its status, the pods
that carry its label, the clock, the operator-wide restart slots) and returns what to do next:
pod deletions and creations, a status patch, audit events and when to look again. It never
talks to the API server, so every transition is a table test, and because every input comes
from the cluster (status included) an operator killed at any instant resumes exactly where
it stopped.

The steps are an ordered chain of named checks; the first that applies decides.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tradingbot_api.constants import (
    BlockReason,
    ConditionStatus,
    ConditionType,
    HaltMode,
    PendingActionKind,
    Phase,
    RestartResult,
)
from tradingbot_audit.schema import REDACTED, is_secret_key, redact_secrets
from tradingbot_operator.hashing import bounded_value, canonical_json
from tradingbot_operator.ratelimit import (
    CoalescingWindow,
    check_rate_limit,
    failure_backoff,
    recent_restarts,
)
from tradingbot_operator.recorder import AuditEvent
from tradingbot_operator.timeutil import format_time, parse_time

# A pod whose container restarted this often without becoming ready is crash-looping.
CRASH_LOOP_RESTARTS = 3
# How often to look again while waiting on something that produces no watch event.
POLL_SECONDS = 5.0
# Restart history kept in status (for the hourly rate limit); bounded like the CRD says.
MAX_HISTORY = 100


# -- inputs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldChange:
    path: str
    old: Any
    new: Any


@dataclass(frozen=True)
class PodFacts:
    """What the operator needs to know about one pod of a bot."""

    name: str
    uid: str
    config_hash: str | None
    created_at: dt.datetime | None
    deleting: bool = False
    ready: bool = False
    terminated: bool = False
    restart_count: int = 0
    node_name: str | None = None
    node_lost: bool = False  # its node stopped heartbeating and its bot holds no Lease
    last_exit_reason: str | None = None
    last_exit_code: int | None = None

    @property
    def crash_looping(self) -> bool:
        return self.terminated or (not self.ready and self.restart_count >= CRASH_LOOP_RESTARTS)


@dataclass(frozen=True)
class RestartPolicy:
    coalesce_seconds: float = 2
    max_attempts: int = 5
    grace_period_seconds: int = 30
    max_restarts_per_hour: int = 10


@dataclass(frozen=True)
class Blocker:
    """Why the desired config must not run (found before anything is stopped)."""

    reason: BlockReason
    message: str


@dataclass(frozen=True)
class BotFacts:
    """A TradingBot as the decision needs it; `status` is the stored status (camelCase)."""

    namespace: str
    name: str
    desired_hash: str
    status: Mapping[str, Any]
    policy: RestartPolicy = RestartPolicy()
    generation: int = 1
    suspend: bool = False
    halt_mode: HaltMode | None = None  # the kill switch in force (bot's or fleet's)
    halt_source: str = "bot"  # which switch: "bot" (its annotation) or "fleet"
    kill_switch: Mapping[str, Any] = field(default_factory=dict)  # the bot's report
    deleting: bool = False
    restart_reason: str | None = None
    changes: tuple[FieldChange, ...] = ()
    requested_by: str | None = None  # verified identity of the latest change, if any
    request_source: str = "unverified"  # kubectl, gitops, plugin, ... (see identity.py)
    # The reason given with the latest control action (restart, stop, resume, halt, unhalt).
    action_reason: str | None = None
    blocker: Blocker | None = None  # set when the desired config would need a new pod
    last_change: Mapping[str, Any] | None = None  # the newest verified stamp (status.lastChange)

    @property
    def halt(self) -> bool:
        return self.halt_mode is not None


@dataclass(frozen=True)
class OperatorLimits:
    """Operator-wide facts: other bots' restarts in flight and the readiness budget."""

    restarts_in_flight: int = 0
    max_concurrent_restarts: int = 0  # 0 = unlimited
    ready_timeout_seconds: float = 120.0


# -- outputs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CreatePod:
    config_hash: str


@dataclass(frozen=True)
class DeletePod:
    name: str
    uid: str
    grace_period_seconds: int


Action = CreatePod | DeletePod


@dataclass
class Decision:
    actions: list[Action] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)
    events: list[AuditEvent] = field(default_factory=list)
    requeue_after: float | None = None
    finalize: bool = False  # deletion finished: the finalizer may go

    @property
    def holds_restart_slot(self) -> bool:
        """True while the bot is down because of a restart (counts towards the limit)."""
        return self.status.get("phase") == Phase.RESTARTING

    def wake_at(self, now: dt.datetime, when: dt.datetime) -> None:
        seconds = max((when - now).total_seconds(), 0.05)
        self.requeue_after = (
            seconds if self.requeue_after is None else min(self.requeue_after, seconds)
        )


# -- the chain ------------------------------------------------------------------------------


@dataclass
class _Context:
    bot: BotFacts
    pods: Sequence[PodFacts]
    now: dt.datetime
    limits: OperatorLimits
    decision: Decision = field(default_factory=Decision)

    @property
    def status(self) -> Mapping[str, Any]:
        return self.bot.status

    @property
    def phase(self) -> str:
        return str(self.status.get("phase") or Phase.PENDING)

    @property
    def pending(self) -> Mapping[str, Any]:
        return self.status.get("pendingAction") or {}

    @property
    def alive(self) -> list[PodFacts]:
        return [p for p in self.pods if not p.deleting]

    @property
    def terminating(self) -> list[PodFacts]:
        return [p for p in self.pods if p.deleting]

    # status writers -----------------------------------------------------------------------

    def set_phase(self, phase: Phase) -> None:
        self.decision.status["phase"] = str(phase)

    def set_pending(self, pending: Mapping[str, Any] | None) -> None:
        self.decision.status["pendingAction"] = dict(pending) if pending else None

    def set_condition(
        self, kind: ConditionType, status: ConditionStatus, reason: str, message: str
    ) -> None:
        current = self.decision.status.get("conditions")
        if current is None:
            current = [dict(c) for c in self.status.get("conditions") or []]
        updated = []
        found = False
        for cond in current:
            if cond.get("type") == kind:
                found = True
                changed = cond.get("status") != status
                cond = {
                    **cond,
                    "status": str(status),
                    "reason": reason,
                    "message": message,
                    "observedGeneration": self.bot.generation,
                    "lastTransitionTime": format_time(self.now)
                    if changed
                    else cond.get("lastTransitionTime") or format_time(self.now),
                }
            updated.append(cond)
        if not found:
            updated.append(
                {
                    "type": str(kind),
                    "status": str(status),
                    "reason": reason,
                    "message": message,
                    "observedGeneration": self.bot.generation,
                    "lastTransitionTime": format_time(self.now),
                }
            )
        self.decision.status["conditions"] = updated

    def emit(
        self,
        event_type: str,
        reason: str,
        message: str,
        *,
        severity: str = "info",
        details: Mapping[str, Any] | None = None,
        source: str = "operator",
    ) -> None:
        # "user" marks an event caused by someone's change: it carries their verified
        # identity and tool, or says the identity could not be verified.
        by_user = source == "user"
        details = dict(details or {})
        if by_user and self.bot.action_reason and not details.get("reason"):
            details["reason"] = self.bot.action_reason
        self.decision.events.append(
            AuditEvent(
                event_type=event_type,
                severity=severity,
                source=self.bot.request_source if by_user else source,
                namespace=self.bot.namespace,
                target=self.bot.name,
                action=reason,
                reason=reason,
                message=message,
                details=details,
                user_id=self.bot.requested_by if by_user else None,
            )
        )

    def delete(self, pod: PodFacts) -> None:
        self.decision.actions.append(
            DeletePod(pod.name, pod.uid, self.bot.policy.grace_period_seconds)
        )

    def ts(self) -> str:
        return format_time(self.now)


Check = Callable[[_Context], bool]


def decide(
    bot: BotFacts,
    pods: Sequence[PodFacts],
    now: dt.datetime,
    limits: OperatorLimits | None = None,
) -> Decision:
    ctx = _Context(bot=bot, pods=pods, now=now, limits=limits or OperatorLimits())
    for check in CHAIN:
        if check(ctx):
            break
    alive = ctx.alive
    ctx.decision.status.setdefault(
        "pod", {"name": alive[0].name, "uid": alive[0].uid} if len(alive) == 1 else None
    )
    ctx.decision.status["observedGeneration"] = bot.generation
    ctx.decision.status["desiredConfigHash"] = bot.desired_hash
    if bot.last_change is not None:
        ctx.decision.status["lastChange"] = dict(bot.last_change)
    # Write only what differs from the stored status: steady state costs no API call.
    ctx.decision.status = {k: v for k, v in ctx.decision.status.items() if bot.status.get(k) != v}
    return ctx.decision


def bot_is_being_deleted(ctx: _Context) -> bool:
    """Deletion: stop gracefully, keep the state, then let the finalizer go."""
    if not ctx.bot.deleting:
        return False
    for pod in ctx.alive:
        ctx.delete(pod)
    if ctx.pods:
        if ctx.phase != Phase.STOPPING:
            ctx.set_phase(Phase.STOPPING)
            ctx.emit(
                "stop",
                "Stopping",
                "TradingBot deleted: stopping the bot gracefully; its state is kept",
                details={"trigger": "deletion"},
            )
        ctx.decision.requeue_after = POLL_SECONDS
    else:
        ctx.set_phase(Phase.STOPPED)
        ctx.decision.finalize = True
        ctx.emit(
            "stop",
            "Stopped",
            "bot stopped for deletion; state kept",
            details={"trigger": "deletion"},
        )
    return True


def pods_on_lost_nodes(ctx: _Context) -> bool:
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
            "error",
            "NodeLost",
            f"{pod.name} is on node {pod.node_name}, which stopped heartbeating, and its bot "
            "holds no Lease: removing the pod so that a replacement starts",
            severity="critical",
            details={"pod": pod.name, "node": pod.node_name},
        )
    ctx.decision.requeue_after = 0.5
    return True


_GENTLE_LABELS = {HaltMode.DRAIN: "Draining", HaltMode.FLATTEN: "Flattening"}


def halt_requested(ctx: _Context) -> bool:
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
        if _condition(ctx.status, ConditionType.PROGRESSING).get("reason") != label:
            ctx.set_phase(Phase.STOPPING)
            ctx.set_pending(None)
            ctx.set_condition(
                ConditionType.READY, ConditionStatus.FALSE, "Halted", f"kill switch: {mode}"
            )
            ctx.set_condition(
                ConditionType.PROGRESSING,
                ConditionStatus.TRUE,
                label,
                "no new entries; exits managed until flat"
                if mode == HaltMode.DRAIN
                else "orders cancelled, positions being closed at market",
            )
            ctx.emit(
                "halt",
                label,
                f"kill switch ({mode}, {ctx.bot.halt_source} switch): the bot stops once flat",
                severity="warning",
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
            "Halted",
            f"halted by the kill switch ({mode}, {ctx.bot.halt_source} switch)",
        )
        ctx.set_condition(
            ConditionType.PROGRESSING,
            ConditionStatus.FALSE,
            "Halted",
            "halted; remove the kill switch to resume",
        )
        details: dict[str, Any] = {
            "mode": str(mode),
            "switch": ctx.bot.halt_source,
            "podsStopped": [p.name for p in ctx.alive],
        }
        details["positionsAfter" if label else "positions"] = positions
        ctx.emit(
            "halt",
            "Halted",
            "kill switch: bot stopped without coalescing or rate limit"
            + (f" after it reported flat ({mode})" if label else ""),
            severity="warning",
            source="user",
            details=details,
        )
    if ctx.pods:
        ctx.decision.requeue_after = POLL_SECONDS
    return True


def surplus_pods(ctx: _Context) -> bool:
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
        "error",
        "SurplusPodDeleted",
        f"{len(alive)} pods found for one bot; kept {keep.name}, deleting the rest",
        severity="critical",
        details={"pods": [p.name for p in alive], "kept": keep.name},
    )
    ctx.decision.requeue_after = POLL_SECONDS
    return True


def pod_still_terminating(ctx: _Context) -> bool:
    """Never create a pod while an old one exists: wait for it to be gone."""
    if not ctx.terminating:
        return False
    for pod in ctx.alive:  # a live pod beside a terminating one is surplus too
        ctx.delete(pod)
    ctx.decision.requeue_after = POLL_SECONDS
    return True


def no_pod(ctx: _Context) -> bool:
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
                "Suspended",
                "suspended (stop requested)",
            )
            ctx.set_condition(
                ConditionType.PROGRESSING,
                ConditionStatus.FALSE,
                "Suspended",
                "stopped; resume to start it again (spec.suspend false, no suspend annotation)",
            )
            ctx.emit(
                "stop",
                "Stopped",
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
        _record_blocked(ctx, bot.blocker)
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
            ctx.emit("resume", "Resumed", f"bot resumed from {ctx.phase}", source="user")
    ctx.set_condition(
        ConditionType.PROGRESSING,
        ConditionStatus.TRUE,
        "PodCreated",
        f"pod created with config {bot.desired_hash}",
    )
    ctx.decision.wake_at(ctx.now, ctx.now + dt.timedelta(seconds=ctx.limits.ready_timeout_seconds))
    return True


def change_requested(ctx: _Context) -> bool:
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
        _record_blocked(ctx, bot.blocker)
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
                "config_change",
                "ConfigChanged",
                "changed "
                + "; ".join(
                    f"{c.path}: {_shown(c.path, c.old)} -> {_shown(c.path, c.new)}"
                    for c in bot.changes
                ),
                source="user",
                details=_change_details(bot),
            )
        if first:
            ctx.emit(
                "restart" if kind == PendingActionKind.RESTART else "stop",
                "RestartRequested" if kind == PendingActionKind.RESTART else "StopRequested",
                _describe_request(kind, bot),
                source="user",
                details=_change_details(bot),
            )
        else:
            ctx.emit(
                "restart" if kind == PendingActionKind.RESTART else "stop",
                "RestartCoalesced",
                f"change coalesced into the pending {kind} "
                f"({pending['coalescedChanges']} changes so far)",
                source="user",
                details=_change_details(bot),
            )
        ctx.set_condition(
            ConditionType.PROGRESSING,
            ConditionStatus.TRUE,
            "ChangePending",
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
                    "rate_limited",
                    "RateLimited",
                    f"{verdict.recent} restarts in the last hour reach the limit of "
                    f"{bot.policy.max_restarts_per_hour}; restart deferred until "
                    f"{pending['notBefore']}",
                    severity="warning",
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
        ctx.emit("stop", "Stopping", "stopping the bot gracefully", source="user")
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
            "restart",
            "RestartStarted",
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
        "Restarting" if kind == PendingActionKind.RESTART else "Stopping",
        f"{pod.name} is stopping",
    )
    ctx.decision.requeue_after = POLL_SECONDS
    return True


def _in_flight(ctx: _Context, pod: PodFacts) -> bool:
    """The live pod is the one this operator created for the pending action."""
    pending = ctx.pending
    return bool(pending.get("podCreatedAt")) and pod.config_hash == pending.get("desiredHash")


def new_pod_not_ready(ctx: _Context) -> bool:
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
            "AttemptsExhausted",
            f"gave up after {attempts} attempts: {why}",
        )
        ctx.set_condition(ConditionType.READY, ConditionStatus.FALSE, "Failed", why)
        ctx.set_condition(
            ConditionType.PROGRESSING,
            ConditionStatus.FALSE,
            "AttemptsExhausted",
            "a new change to the bot tries again",
        )
        _finish_restart(ctx, RestartResult.FAILED)
        ctx.emit(
            "error",
            "RestartFailed",
            f"bot failed to start after {attempts} attempts ({why}); giving up until "
            "the TradingBot changes",
            severity="critical",
            details={"attempts": attempts, "reason": why},
        )
        return True
    not_before = ctx.now + failure_backoff(attempts)
    pending["notBefore"] = format_time(not_before)
    ctx.set_pending(pending)
    ctx.set_condition(
        ConditionType.DEGRADED,
        ConditionStatus.TRUE,
        "AttemptFailed",
        f"attempt {attempts} of {ctx.bot.policy.max_attempts} failed: {why}",
    )
    ctx.emit(
        "error",
        "RestartFailed",
        f"attempt {attempts} of {ctx.bot.policy.max_attempts} failed ({why}); retrying "
        f"after {pending['notBefore']}",
        severity="warning",
        details={"attempts": attempts, "reason": why},
    )
    ctx.decision.requeue_after = POLL_SECONDS
    return True


def new_pod_ready(ctx: _Context) -> bool:
    """The pod created for a start or restart is ready: record the outcome."""
    (pod,) = ctx.alive
    if not _in_flight(ctx, pod):
        return False
    pending = ctx.pending
    if pending.get("action") == PendingActionKind.RESTART:
        _finish_restart(ctx, RestartResult.SUCCEEDED)
        ctx.emit(
            "restart",
            "RestartCompleted",
            f"restart completed; config {pod.config_hash} is running",
            details={
                "durationSeconds": ctx.decision.status["restarts"]["last"].get("durationSeconds"),
                "changedFields": pending.get("changedFields"),
            },
        )
    else:
        ctx.emit("start", "Started", f"bot running with config {pod.config_hash}")
    ctx.set_pending(None)
    ctx.set_phase(Phase.RUNNING)
    ctx.decision.status["configHash"] = pod.config_hash
    _mark_healthy(ctx)
    if pod.config_hash != ctx.bot.desired_hash:
        ctx.decision.requeue_after = 0.05  # a newer change arrived meanwhile
    return True


def pod_current(ctx: _Context) -> bool:
    """Steady state: the pod runs the desired config; report its health, cancel reverts."""
    (pod,) = ctx.alive
    pending = ctx.pending
    if pending:
        ctx.set_pending(None)
        ctx.emit(
            "config_change",
            "RestartCancelled",
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
            _condition(ctx.status, ConditionType.READY).get("status") != ConditionStatus.TRUE
            or pending
            or _blocked_condition(ctx.status)
            or _condition(ctx.status, ConditionType.DEGRADED).get("reason") == CRASH_LOOP
        ):
            _mark_healthy(ctx)
        return True
    if crash_loop:
        ctx.decision.requeue_after = POLL_SECONDS
        return True
    # The node restarts a crashed container; report it, do not intervene.
    if _condition(ctx.status, ConditionType.READY).get("status") != ConditionStatus.FALSE:
        ctx.set_condition(
            ConditionType.READY,
            ConditionStatus.FALSE,
            "PodNotReady",
            f"{pod.name} is not ready (container restarts: {pod.restart_count})",
        )
        ctx.set_condition(
            ConditionType.DEGRADED, ConditionStatus.TRUE, "PodNotReady", f"{pod.name} is not ready"
        )
    ctx.decision.requeue_after = POLL_SECONDS
    return True


# A container that restarted this often within the window is crash-looping, even if it is
# Ready between crashes (Ready flapping would otherwise hide it).
CRASH_LOOP = "CrashLoop"
CRASH_LOOP_WINDOW = dt.timedelta(minutes=10)
MAX_RECENT_RESTARTS = 10


def _report_container(ctx: _Context, pod: PodFacts) -> bool:
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
    degraded = _condition(ctx.status, ConditionType.DEGRADED)
    if looping and degraded.get("reason") != CRASH_LOOP:
        last = f"{pod.last_exit_reason or 'exit'} ({pod.last_exit_code})"
        message = (
            f"{pod.name}'s container restarted {len(recent)} times in "
            f"{int(CRASH_LOOP_WINDOW.total_seconds() // 60)} minutes; last: {last}"
        )
        ctx.set_condition(ConditionType.DEGRADED, ConditionStatus.TRUE, CRASH_LOOP, message)
        ctx.set_condition(ConditionType.READY, ConditionStatus.FALSE, CRASH_LOOP, message)
        ctx.emit("error", CRASH_LOOP, message, severity="warning", details=report)
    return looping


# How often to look again while a config is blocked: access can be granted without any
# change to the bot (a RoleBinding, the admission policies coming back).
BLOCKED_POLL_SECONDS = 10.0


def _blocked_condition(status: Mapping[str, Any]) -> bool:
    degraded = _condition(status, ConditionType.DEGRADED)
    return degraded.get("status") == ConditionStatus.TRUE and degraded.get("reason") in set(
        BlockReason
    )


def _record_blocked(ctx: _Context, blocker: Blocker) -> None:
    """Degraded with the reason, once as an Event and in the audit; no pending action."""
    degraded = _condition(ctx.status, ConditionType.DEGRADED)
    if ctx.pending:
        ctx.set_pending(None)
    if (degraded.get("status"), degraded.get("reason"), degraded.get("message")) != (
        ConditionStatus.TRUE,
        blocker.reason,
        blocker.message,
    ):
        ctx.set_condition(
            ConditionType.DEGRADED, ConditionStatus.TRUE, blocker.reason, blocker.message
        )
        running = [p.name for p in ctx.alive]
        ctx.emit(
            "error",
            blocker.reason,
            blocker.message
            + (f"; {running[0]} keeps running its current config" if running else ""),
            severity="warning",
            source="user",
            details={"desiredConfigHash": ctx.bot.desired_hash, "keptPod": running or None},
        )
    ctx.decision.requeue_after = BLOCKED_POLL_SECONDS


def _mark_healthy(ctx: _Context) -> None:
    ctx.set_condition(
        ConditionType.READY,
        ConditionStatus.TRUE,
        "BotReady",
        "the bot is trading with its current config",
    )
    ctx.set_condition(
        ConditionType.PROGRESSING,
        ConditionStatus.FALSE,
        "UpToDate",
        "the running pod has the desired config",
    )
    ctx.set_condition(
        ConditionType.DEGRADED, ConditionStatus.FALSE, "Healthy", "no failed attempts"
    )


CHAIN: tuple[Check, ...] = (
    pods_on_lost_nodes,
    bot_is_being_deleted,
    halt_requested,
    surplus_pods,
    pod_still_terminating,
    no_pod,
    new_pod_not_ready,
    new_pod_ready,
    change_requested,
    pod_current,
)


# -- helpers --------------------------------------------------------------------------------


def _finish_restart(ctx: _Context, result: RestartResult) -> None:
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


def _history(status: Mapping[str, Any]) -> list[str]:
    return list((status.get("restarts") or {}).get("history") or [])


def _condition(status: Mapping[str, Any], kind: ConditionType) -> Mapping[str, Any]:
    for cond in status.get("conditions") or []:
        if cond.get("type") == kind:
            return dict(cond)
    return {}


def _describe_request(kind: PendingActionKind, bot: BotFacts) -> str:
    if kind == PendingActionKind.STOP:
        return "stop requested; waiting for the coalescing window"
    if bot.changes:
        fields = ", ".join(c.path for c in bot.changes)
        return f"config changed ({fields}); restart pending"
    return f"restart requested ({bot.restart_reason or 'restart annotation'}); restart pending"


def _shown(path: str, value: Any, limit: int = 60) -> str:
    """A value as an Event message may show it: secrets masked, long values cut."""
    if is_secret_key(path.rsplit(".", 1)[-1]):
        return REDACTED
    value = redact_secrets(value)
    text = value if isinstance(value, str) else canonical_json(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _change_details(bot: BotFacts) -> dict[str, Any]:
    return {
        "changedFields": [c.path for c in bot.changes],
        "old": {c.path: bounded_value(c.old) for c in bot.changes},
        "new": {c.path: bounded_value(c.new) for c in bot.changes},
        "reason": bot.restart_reason,
    }
