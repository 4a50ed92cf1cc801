"""What the parts of the bot runtime share.

`tradingbot.runtime.BotRuntime` is one object whose methods are grouped by job: start-up
and configuration (tradingbot.startup), obeying what controls the bot (tradingbot.obey),
deciding and placing orders (tradingbot.orders), checkpoints (tradingbot.checkpoints),
reporting (tradingbot.reporting) and the process lifecycle (tradingbot.runtime). This base
declares the state they share and the steps one part asks of another, so that each part
type-checks on its own; every step here is implemented by exactly one part.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tradingbot.audit import AuditReporter
    from tradingbot.config import BotConfig, Settings
    from tradingbot.control import ControlWatcher
    from tradingbot.credentials import Credentials
    from tradingbot.engine import OrderIntent
    from tradingbot.health import HealthState
    from tradingbot.killswitch import GateVerdict, OrderKind
    from tradingbot.kube import EventRecorder, KubeApi
    from tradingbot.metrics import BotMetrics
    from tradingbot.notices import NoticeSender
    from tradingbot.state.model import Fill, StateCheckpoint
    from tradingbot.state.stores import StateStore
    from tradingbot.status import StatusReporter
    from tradingbot.strategy import Strategy
    from tradingbot.throttle import ErrorThrottle
    from tradingbot_api.audit_http import TokenSource
    from tradingbot_api.constants import CheckpointReason, HaltMode
    from tradingbot_api.lease import LeaseFence


# Positions by symbol, as a halt notice reports them.
Held = dict[str, float]


class RuntimeParts:
    settings: Settings
    api: KubeApi | None
    store: StateStore | None
    metrics: BotMetrics
    health: HealthState
    events: EventRecorder | None
    fence: LeaseFence | None
    config: BotConfig | None
    credentials: Credentials | None
    exchange: Any
    feed: Any
    strategy: Strategy | None
    state: StateCheckpoint
    history: dict[str, deque[float]]
    restored_seq: int | None
    last_shutdown_clean: bool | None
    write_failing: bool
    decisions: int
    first_decision_at: float | None
    stop_event: asyncio.Event
    stop_requested_at: float | None
    status: StatusReporter
    audit: AuditReporter | None
    notices: NoticeSender | None
    errors: ErrorThrottle
    control: ControlWatcher | None
    kill_observed_at: str | None
    _exchange_factory: Callable[[BotConfig], Any] | None
    _feed_factory: Callable[[BotConfig, StateCheckpoint], Any] | None
    _audit_token: TokenSource | None
    _durable_fill_seq: int
    _save_task: asyncio.Future[StateCheckpoint] | None
    _last_checkpoint: float
    _breach_day: str | None
    _wake: asyncio.Event
    _initial_object: dict[str, Any] | None
    _seen_mode: HaltMode | None
    _obeyed: tuple[HaltMode | None, bool]
    _obeyed_at: str | None
    _flat_reported: tuple[HaltMode | None, str | None] | None
    _silent_flagged: bool
    _background: set[asyncio.Task[Any]]

    @property
    def stopping(self) -> bool:
        return self.stop_event.is_set()

    # -- lifecycle (tradingbot.runtime)

    async def _sleep(self, seconds: float) -> None:
        raise NotImplementedError

    def _shutdown_budget(self) -> float:
        raise NotImplementedError

    # -- start-up (tradingbot.startup)

    def _api(self) -> KubeApi:
        raise NotImplementedError

    # -- checkpoints (tradingbot.checkpoints)

    async def _checkpoint(self, reason: CheckpointReason) -> bool:
        raise NotImplementedError

    # -- control (tradingbot.obey)

    def _holds_lease(self) -> bool:
        raise NotImplementedError

    def _gate(self, kind: OrderKind) -> GateVerdict:
        raise NotImplementedError

    def _admit(self, intent: OrderIntent) -> bool:
        raise NotImplementedError

    def _flat(self) -> bool:
        raise NotImplementedError

    # -- orders (tradingbot.orders)

    def _precision(self, symbol: str, amount: float) -> float:
        raise NotImplementedError

    async def _cancel_open_orders(self, which: str) -> int:
        raise NotImplementedError

    # -- reporting (tradingbot.reporting)

    def _configure_audit(self) -> None:
        raise NotImplementedError

    def _schedule_status(self) -> None:
        raise NotImplementedError

    def _event_soon(self, kind: str, reason: str, message: str) -> None:
        raise NotImplementedError

    def _notice_halt(
        self, action: str, mode: HaltMode | None, source: str, positions: Held, cancelled: int = 0
    ) -> None:
        raise NotImplementedError

    def _report_error(
        self, category: str, error_type: str, message: str = "", method: str = ""
    ) -> None:
        raise NotImplementedError

    def _audit_lost(self, before: tuple[Fill, ...], after: tuple[Fill, ...]) -> None:
        raise NotImplementedError
