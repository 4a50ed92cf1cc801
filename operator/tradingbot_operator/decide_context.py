"""The state one `decide` pass works on, and the status reads and writes its steps share.

`Context` holds the inputs and the `Decision` being built, with the writers every step uses
(phase, pending action, conditions, audit events, pod deletions). `condition`,
`record_blocked` and `mark_healthy` are the condition reads and writes that more than one
step needs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tradingbot_api.constants import (
    BlockReason,
    ConditionReason,
    ConditionStatus,
    ConditionType,
    EventReason,
    EventType,
    Phase,
    Severity,
)
from tradingbot_api.times import format_time
from tradingbot_operator.decide_facts import Blocker, BotFacts, OperatorLimits, PodFacts
from tradingbot_operator.decide_outcome import Decision, DeletePod
from tradingbot_operator.recorder import AuditEvent

# How often to look again while waiting on something that produces no watch event.
POLL_SECONDS = 5.0


@dataclass
class Context:
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
        self,
        kind: ConditionType,
        status: ConditionStatus,
        reason: ConditionReason | BlockReason,
        message: str,
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
                    "reason": str(reason),
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
                    "reason": str(reason),
                    "message": message,
                    "observedGeneration": self.bot.generation,
                    "lastTransitionTime": format_time(self.now),
                }
            )
        self.decision.status["conditions"] = updated

    def emit(
        self,
        event_type: EventType,
        reason: EventReason | BlockReason,
        message: str,
        *,
        severity: Severity = Severity.INFO,
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


def condition(status: Mapping[str, Any], kind: ConditionType) -> Mapping[str, Any]:
    for cond in status.get("conditions") or []:
        if cond.get("type") == kind:
            return dict(cond)
    return {}


# How often to look again while a config is blocked: access can be granted without any
# change to the bot (a RoleBinding, the admission policies coming back).
BLOCKED_POLL_SECONDS = 10.0


def record_blocked(ctx: Context, blocker: Blocker) -> None:
    """Degraded with the reason, once as an Event and in the audit; no pending action."""
    degraded = condition(ctx.status, ConditionType.DEGRADED)
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
            EventType.ERROR,
            blocker.reason,
            blocker.message
            + (f"; {running[0]} keeps running its current config" if running else ""),
            severity=Severity.WARNING,
            source="user",
            details={"desiredConfigHash": ctx.bot.desired_hash, "keptPod": running or None},
        )
    ctx.decision.requeue_after = BLOCKED_POLL_SECONDS


def mark_healthy(ctx: Context) -> None:
    ctx.set_condition(
        ConditionType.READY,
        ConditionStatus.TRUE,
        ConditionReason.BOT_READY,
        "the bot is trading with its current config",
    )
    ctx.set_condition(
        ConditionType.PROGRESSING,
        ConditionStatus.FALSE,
        ConditionReason.UP_TO_DATE,
        "the running pod has the desired config",
    )
    ctx.set_condition(
        ConditionType.DEGRADED, ConditionStatus.FALSE, ConditionReason.HEALTHY, "no failed attempts"
    )
