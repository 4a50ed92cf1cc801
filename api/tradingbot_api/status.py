"""``status`` of a TradingBot (SPEC §3): written by the operator and, for its own part
(positions, PnL, trades, state, the kill switch report), by the bot.

Tolerant of fields added by newer writers; the CRD in ``crds/`` states the same fields and
bounds (tested in ``tests/unit/test_crd_models.py``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, Field, StringConstraints, WithJsonSchema

from tradingbot_api.base import StatusModel as _StatusModel
from tradingbot_api.constants import (
    ConditionStatus,
    ConditionType,
    HaltMode,
    PendingActionKind,
    Phase,
    RestartResult,
    StateBackend,
)


class Condition(_StatusModel):
    """One entry of ``status.conditions`` (``Ready``, ``Progressing``, ``Degraded``)."""

    type: ConditionType
    status: ConditionStatus
    reason: str | None = None
    message: str | None = None
    last_transition_time: datetime | None = None
    observed_generation: int | None = None


class PodRef(_StatusModel):
    """The bot pod the operator currently runs (the uid is the delete precondition)."""

    name: str | None = None
    uid: str | None = None


class ContainerStatus(_StatusModel):
    """The bot container as its node reports it (restarts in the last 10 minutes make a
    CrashLoop)."""

    pod: Annotated[str, StringConstraints(max_length=253)] | None = None
    restarts: int | None = Field(default=None, ge=0)
    recent_restarts: list[datetime] = Field(default_factory=list, max_length=10)
    last_exit_reason: Annotated[str, StringConstraints(max_length=128)] | None = None
    last_exit_code: int | None = None


class LastChange(_StatusModel):
    """The newest verified change stamp: who, with which tool, when the API server wrote it
    and the resourceVersion it was written over. A stamp older than this one is a replay."""

    by: Annotated[str, StringConstraints(max_length=512)] | None = None
    source: Annotated[str, StringConstraints(max_length=32)] | None = None
    stamp_time: datetime | None = None
    stamp_revision: Annotated[str, StringConstraints(max_length=32)] | None = None


class PendingAction(_StatusModel):
    """A requested action waiting for the coalescing window and the rate limit (SPEC §4)."""

    action: PendingActionKind
    reason: str | None = None
    first_requested_at: datetime | None = None
    last_requested_at: datetime | None = None
    coalesced_changes: int = 0
    attempts: int = 0
    not_before: datetime | None = None
    changed_fields: list[str] = Field(default_factory=list)
    desired_hash: str | None = None
    started_at: datetime | None = None
    pod_created_at: datetime | None = None
    requested_by: str | None = None


class RestartRecord(_StatusModel):
    """The most recent restart, for ``kubectl describe`` and the benchmarks."""

    reason: str | None = None
    changed_fields: list[str] = Field(default_factory=list)
    requested_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    duration_seconds: float | None = None
    result: RestartResult | None = None
    attempts: int = 0


class RestartsStatus(_StatusModel):
    """Restart counter (``status.restarts.total`` is a stable name) and the last restart."""

    total: int = 0
    history: list[datetime] = Field(default_factory=list)
    last: RestartRecord | None = None


class PositionsStatus(_StatusModel):
    """Open positions as last reported by the bot."""

    open: int = 0
    symbols: list[str] = Field(default_factory=list)
    notional: float = 0.0


class PnlStatus(_StatusModel):
    """Profit and loss in the quote currency."""

    realized: float = 0.0
    unrealized: float = 0.0


class TradesStatus(_StatusModel):
    """Trade counters since the bot was created (they survive restarts via the state)."""

    total: int = 0
    wins: int = 0


class StateStatus(_StatusModel):
    """Last state checkpoint and restore, so the operator can verify nothing was lost."""

    backend: StateBackend | None = None
    checkpoint_seq: int | None = None
    saved_at: datetime | None = None
    last_shutdown_clean: bool | None = None
    restored_from_seq: int | None = None


def _kill_switch_mode(value: str) -> str:
    if value and value not in set(HaltMode):
        raise ValueError(f"must be empty or one of {', '.join(HaltMode)}, got {value!r}")
    return value


# The mode a bot obeys: a HaltMode, or "" when it obeys none.
KillSwitchMode = Annotated[
    str,
    AfterValidator(_kill_switch_mode),
    WithJsonSchema({"type": "string", "enum": ["", *(m.value for m in HaltMode)]}),
]


class KillSwitchStatus(_StatusModel):
    """The kill switch as the bot obeys it, written by the bot (even with the operator
    down). The operator finishes a drain or flatten once ``mode`` matches the switch in force
    and ``flat`` is true."""

    mode: KillSwitchMode | None = None
    observed_at: datetime | None = None
    flat: bool | None = None


class TradingBotStatus(_StatusModel):
    """``status`` of a TradingBot, written through the status subresource."""

    phase: Phase | None = None
    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list)
    config_hash: str | None = None
    desired_config_hash: str | None = None
    pod: PodRef | None = None
    container: ContainerStatus | None = None
    last_change: LastChange | None = None
    pending_action: PendingAction | None = None
    audit_outbox: list[dict[str, Any]] = Field(default_factory=list, max_length=200)
    restarts: RestartsStatus = Field(default_factory=RestartsStatus)
    positions: PositionsStatus = Field(default_factory=PositionsStatus)
    pnl: PnlStatus = Field(default_factory=PnlStatus)
    trades: TradesStatus = Field(default_factory=TradesStatus)
    state: StateStatus | None = None
    kill_switch: KillSwitchStatus | None = None

    def to_dict(self) -> dict[str, Any]:
        """The status as JSON with CRD names, omitting unset fields."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    def to_patch(self) -> dict[str, Any]:
        """The status as the body of a JSON merge patch of ``status``.

        Unset fields are sent as ``null`` so that the patch removes them (a finished
        ``pendingAction`` disappears); the result makes the stored status equal this model.
        """
        return self.model_dump(mode="json", by_alias=True, exclude_none=False)

    def condition(self, type_: ConditionType) -> Condition | None:
        """The condition of that type, if present."""
        return next((c for c in self.conditions if c.type == type_), None)

    def set_condition(
        self,
        type_: ConditionType,
        status: ConditionStatus,
        reason: str,
        message: str,
        now: datetime,
        observed_generation: int | None = None,
    ) -> Condition:
        """Add or update a condition; ``lastTransitionTime`` moves only when status changes."""
        current = self.condition(type_)
        transition = now if current is None or current.status != status else None
        updated = Condition(
            type=type_,
            status=status,
            reason=reason,
            message=message,
            last_transition_time=transition or (current.last_transition_time if current else now),
            observed_generation=observed_generation,
        )
        self.conditions = [c for c in self.conditions if c.type != type_] + [updated]
        return updated
