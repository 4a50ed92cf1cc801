"""What the bot writes into its TradingBot's status, and when.

The bot owns `positions`, `pnl`, `trades`, `state` and `killSwitch`; the operator owns the
rest. Writes follow tradingbot.throttle: on a change a user would see, at most one per
STATUS_MIN_INTERVAL_SECONDS (changes in between are coalesced into the next write), a refresh
for PnL drift, never two in flight, and a changed kill switch report at once. Only the
Lease holder writes (`may_write`): a process that lost its Lease must not report positions
it no longer manages. A failed write is logged and tried again with the next change or
refresh; reporting never holds trading up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from tradingbot.killswitch import report_is_urgent
from tradingbot.ledger import position_notional, unrealized_pnl
from tradingbot.state.model import StateCheckpoint
from tradingbot.throttle import (
    STATUS_MIN_INTERVAL_SECONDS,
    STATUS_REFRESH_SECONDS,
    StatusWrite,
    plan_status_write,
)

log = logging.getLogger(__name__)

PUSH_TIMEOUT_SECONDS = 5.0
CLOSE_TIMEOUT_SECONDS = 2.0
STATE_BACKENDS = ("configmap", "pvc")


def status_body(
    state: StateCheckpoint,
    *,
    backend: str | None,
    last_shutdown_clean: bool | None,
    restored_seq: int | None,
    kill_switch: Mapping[str, Any],
) -> dict[str, Any]:
    """The merge patch of the bot's part of the status."""
    notional = position_notional(state)
    stored: dict[str, Any] = {
        "checkpointSeq": state.checkpoint_seq,
        "savedAt": state.saved_at or None,
        "lastShutdownClean": last_shutdown_clean,
        "restoredFromSeq": restored_seq,
    }
    if backend in STATE_BACKENDS:
        stored = {"backend": backend, **stored}
    return {
        "status": {
            "positions": {
                "open": len(notional),
                "symbols": sorted(notional),
                "notional": round(sum(notional.values()), 8),
            },
            "pnl": {
                "realized": round(state.stats.realized_pnl, 8),
                "unrealized": round(unrealized_pnl(state), 8),
            },
            "trades": {"total": state.stats.total_trades, "wins": state.stats.wins},
            "state": stored,
            "killSwitch": dict(kill_switch),
        }
    }


def fingerprint(status: Mapping[str, Any]) -> str:
    """What a user watches change; PnL drifts every tick and only refreshes periodically."""
    return json.dumps(
        [
            status["positions"]["symbols"],
            status["trades"],
            status["state"],
            status.get("killSwitch"),
        ],
        sort_keys=True,
    )


class StatusReporter:
    def __init__(
        self,
        patch: Callable[[dict[str, Any]], Awaitable[None]],
        *,
        may_write: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.monotonic,
        min_interval: float = STATUS_MIN_INTERVAL_SECONDS,
        refresh: float = STATUS_REFRESH_SECONDS,
    ) -> None:
        self._patch = patch
        self._may_write = may_write
        self.clock = clock
        self.min_interval = min_interval
        self.refresh = refresh
        self._task: asyncio.Task[None] | None = None
        self._last_write: float | None = None
        self._sent_fingerprint = ""
        self._sent_kill: Mapping[str, Any] | None = None
        self._latest: dict[str, Any] | None = None
        self._urgent_waiting = False
        self.writes = 0

    @property
    def in_flight(self) -> bool:
        return self._task is not None and not self._task.done()

    def offer(self, body: dict[str, Any]) -> StatusWrite:
        """The current status; written now if due, else remembered for later."""
        self._latest = body
        status = body["status"]
        urgent = report_is_urgent(self._sent_kill, status.get("killSwitch") or {})
        plan = plan_status_write(
            self.clock(),
            last_write=self._last_write,
            in_flight=self.in_flight,
            changed=fingerprint(status) != self._sent_fingerprint,
            urgent=urgent,
            min_interval=self.min_interval,
            refresh=self.refresh,
        )
        if plan == StatusWrite.NOW:
            self._start(body)
        elif plan == StatusWrite.LATER and urgent:
            self._urgent_waiting = True  # goes as soon as the write in flight is done
        return plan

    async def push(self, body: dict[str, Any]) -> None:
        """Write now, after the write in flight (restore, shutdown), waiting for it (each
        at most PUSH_TIMEOUT_SECONDS)."""
        self._latest = body
        if self.in_flight:
            assert self._task is not None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._task), PUSH_TIMEOUT_SECONDS)
        self._start(body)
        assert self._task is not None
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(self._task), PUSH_TIMEOUT_SECONDS)

    async def close(self) -> None:
        if self.in_flight:
            assert self._task is not None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, CLOSE_TIMEOUT_SECONDS)

    def _start(self, body: dict[str, Any]) -> None:
        status = body["status"]
        self._last_write = self.clock()
        self._sent_fingerprint = fingerprint(status)
        self._sent_kill = dict(status.get("killSwitch") or {})
        self._urgent_waiting = False
        self._task = asyncio.create_task(self._write(body))
        self._task.add_done_callback(self._after)

    def _after(self, task: asyncio.Task[None]) -> None:
        if self._urgent_waiting and self._latest is not None and not self.in_flight:
            with contextlib.suppress(RuntimeError):  # the loop is closing
                self._start(self._latest)

    async def _write(self, body: dict[str, Any]) -> None:
        if not self._may_write():
            self._sent_fingerprint = ""
            return
        try:
            await self._patch(body)
            self.writes += 1
        except Exception as exc:
            # Sent again with the next change or refresh.
            self._sent_fingerprint = ""
            self._sent_kill = None
            log.debug("status patch failed", extra={"error": str(exc)[:300]})
