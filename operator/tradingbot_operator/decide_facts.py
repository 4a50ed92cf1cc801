"""What `decide` is told: the TradingBot, its pods and the operator-wide limits.

Plain frozen dataclasses, built from the API objects by `reconcile_gather`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tradingbot_api.constants import BlockReason, HaltMode

# A pod whose container restarted this often without becoming ready is crash-looping.
CRASH_LOOP_RESTARTS = 3


@dataclass(frozen=True)
class FieldChange:
    path: str
    old: Any
    new: Any


# How long a pod marked for removal at once may stay before its deletion is taken as cut
# off midway (the removal normally follows the mark within milliseconds).
HALF_DELETED_SECONDS = 2.0


@dataclass(frozen=True)
class PodFacts:
    """What the operator needs to know about one pod of a bot."""

    name: str
    uid: str
    config_hash: str | None
    created_at: dt.datetime | None
    deleting: bool = False
    # Set by the API server's first phase of a deletion; 0 means "remove at once".
    deletion_due: dt.datetime | None = None
    deletion_grace_seconds: int | None = None
    ready: bool = False
    terminated: bool = False
    restart_count: int = 0
    node_name: str | None = None
    node_lost: bool = False  # its node stopped heartbeating and its bot holds no Lease
    last_exit_reason: str | None = None
    last_exit_code: int | None = None

    def half_deleted(self, now: dt.datetime) -> bool:
        """The API server deletes in two phases (mark, then remove); when the second fails
        (the deleting client cut off mid-request), a pod marked for removal at once stays,
        and only a kubelet or the pod garbage collector would remove it. Kubernetes
        documents the recovery: the same delete again."""
        return (
            self.deleting
            and self.deletion_grace_seconds == 0
            and self.deletion_due is not None
            and (now - self.deletion_due).total_seconds() > HALF_DELETED_SECONDS
        )

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
