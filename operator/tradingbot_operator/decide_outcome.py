"""What `decide` returns: the pod actions to take, and the `Decision` that carries them
with the status patch, the audit events and when to look again."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from tradingbot_api.constants import Phase
from tradingbot_operator.recorder import AuditEvent


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

    def phase_after(self, phase_before: str | None) -> str | None:
        return self.status.get("phase", phase_before)

    def holds_restart_slot(self, phase_before: str | None = None) -> bool:
        """True while the bot is down because of a restart (counts towards the limit)."""
        return self.phase_after(phase_before) == Phase.RESTARTING

    def wake_at(self, now: dt.datetime, when: dt.datetime) -> None:
        seconds = max((when - now).total_seconds(), 0.05)
        self.requeue_after = (
            seconds if self.requeue_after is None else min(self.requeue_after, seconds)
        )
