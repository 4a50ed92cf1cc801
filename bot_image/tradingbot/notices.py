"""The bot's own audit events besides fills: `halt` (kill switch obeyed, flat, resumed) and
`error` (exchange errors by type, failed state writes), sent to the audit sidecar.

Fills have a durable outbox (the journal, see tradingbot.audit); these do not. They are kept
in memory, bounded (MAX_PENDING; when full, the oldest error makes room, a halt is dropped
only for a newer halt), sent in the background in batches with capped back-off, and retried
until the sidecar stores them or refuses them for good, for as long as the process lives.
Each event's dedup key is fixed when the event is made, so a resend that did arrive the
first time is a no-op. Nothing here waits on the network for the caller: `report` only
queues. Error events are rate limited per error type before they get here
(tradingbot.throttle).

The event builders are pure; the details they carry are explicit fields (never an exception
object or a request), and every text passes the log redactor and is cut to MAX_TEXT.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Final

from tradingbot.audit import (
    BACKOFF_CAP_SECONDS,
    OUTCOME_ACKED,
    OUTCOME_REJECTED,
    OUTCOME_RETRY,
    AuditSender,
    classify_status,
    stored_flags,
)
from tradingbot.metrics import BotMetrics
from tradingbot_api.audit_http import AuditClient
from tradingbot_api.constants import EventType, HaltMode, Severity

log = logging.getLogger(__name__)

MAX_PENDING: Final = 200
MAX_BATCH: Final = 50
MAX_TEXT: Final = 300
MAX_POSITIONS: Final = 100

Redact = Callable[[str], str]


def _text(value: str, redact: Redact | None) -> str:
    clean = redact(value) if redact is not None else value
    return clean[:MAX_TEXT]


def _positions(positions: Mapping[str, float]) -> dict[str, float]:
    return {s: float(a) for s, a in list(sorted(positions.items()))[:MAX_POSITIONS]}


def halt_event(
    *,
    bot: str,
    namespace: str,
    action: str,
    mode: str,
    source: str,
    observed_at: str,
    positions: Mapping[str, float],
    cancelled_orders: int = 0,
) -> dict[str, Any]:
    """A `halt` event: `action` is the mode obeyed (true, drain, flatten), `flat` when a
    drain or flatten holds no position any more, or `resumed` when the switch was removed.
    `positions` are the amounts held at that moment (before anything is cancelled or sold
    when the mode is first obeyed)."""
    severity = (
        Severity.CRITICAL if action in (HaltMode.TRUE, HaltMode.FLATTEN) else Severity.WARNING
    )
    if action in ("flat", "resumed"):
        severity = Severity.INFO
    return {
        "event_type": EventType.HALT,
        "severity": severity,
        "target": bot,
        "namespace": namespace,
        "timestamp": observed_at,
        "action": action,
        "details": {
            "mode": mode,
            "switch": source,
            "observedAt": observed_at,
            "positions": _positions(positions),
            "cancelledOrders": cancelled_orders,
        },
        # One per process and observation: a resend is a duplicate, another process (or a
        # second halt) is a new record.
        "dedup_key": f"halt/{action}/{uuid.uuid4().hex}",
    }


def error_event(
    *,
    bot: str,
    namespace: str,
    error_type: str,
    category: str,
    at: str,
    message: str = "",
    method: str = "",
    suppressed: int = 0,
    redact: Redact | None = None,
) -> dict[str, Any]:
    """An `error` event: `category` says where (exchange, state_write), `error_type` which
    (a ccxt class name, StateWriteError, ...); `suppressed` counts the events of this type
    the rate limit held back before this one."""
    details: dict[str, Any] = {"errorType": _text(error_type, redact), "suppressed": suppressed}
    if method:
        details["method"] = _text(method, redact)
    if message:
        details["message"] = _text(message, redact)
    return {
        "event_type": EventType.ERROR,
        "severity": Severity.WARNING,
        "target": bot,
        "namespace": namespace,
        "timestamp": at,
        "action": category,
        "details": details,
        "dedup_key": f"error/{uuid.uuid4().hex}",
    }


def enqueue(pending: deque[dict[str, Any]], event: dict[str, Any], limit: int) -> bool:
    """Add `event`, making room when full: the oldest error goes first, then the oldest
    halt. False when `event` itself was dropped (an error when only halts are queued)."""
    if len(pending) < limit:
        pending.append(event)
        return True
    victim = next((e for e in pending if e["event_type"] == EventType.ERROR), None)
    if victim is None:
        if event["event_type"] == EventType.ERROR:
            return False
        victim = pending[0]
    pending.remove(victim)
    pending.append(event)
    return True


class NoticeSender(AuditSender):
    """Sends queued events through the bot's audit client (`bot_events_client`) in the
    background until settled."""

    def __init__(
        self,
        client: AuditClient,
        *,
        metrics: BotMetrics,
        backoff_cap: float = BACKOFF_CAP_SECONDS,
        limit: int = MAX_PENDING,
    ) -> None:
        super().__init__(client, metrics, backoff_cap)
        self.limit = limit
        self.pending: deque[dict[str, Any]] = deque()
        self._task: asyncio.Task[None] | None = None

    def report(self, event: dict[str, Any]) -> None:
        if not enqueue(self.pending, event, self.limit):
            self.metrics.audit_dropped(1)
        self._wake.set()

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._stop.clear()
            self._task = asyncio.create_task(self._run(), name="audit-notices")

    async def stop(self, flush_budget: float = 0.0) -> None:
        """Stop sending; with a budget, one last attempt for what is queued."""
        self._stop.set()
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if flush_budget > 0.05 and self.pending:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._send_batch(), flush_budget)

    async def _run(self) -> None:
        while not self._stop.is_set():
            await self._wake.wait()
            self._wake.clear()
            while self.pending and not self._stop.is_set():
                try:
                    settled = await self._send_batch()
                except Exception:
                    log.exception("audit event delivery failed")
                    settled = False
                if not settled:
                    await self._pause(least=0.1)

    async def _send_batch(self) -> bool:
        """Send the oldest queued events; True when they are settled."""
        batch = list(self.pending)[:MAX_BATCH]
        if not batch:
            return True
        answer = await self._client.post(batch)
        outcome = OUTCOME_RETRY if answer.status is None else classify_status(answer.status)
        if outcome == OUTCOME_ACKED and stored_flags(answer.payload, len(batch)) is None:
            outcome = OUTCOME_RETRY
        if outcome == OUTCOME_RETRY:
            self._retrying(answer, len(batch))
            return False
        for event in batch:
            with contextlib.suppress(ValueError):
                self.pending.remove(event)
        if outcome == OUTCOME_ACKED:
            self._delivered(len(batch))
            return True
        # Refused for good (or one event spoils the batch): resending cannot help.
        self._refused(
            answer,
            len(batch),
            event_types=sorted({e["event_type"] for e in batch}),
            outcome=OUTCOME_REJECTED,
        )
        return True
