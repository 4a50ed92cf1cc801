"""What the runtime reports, never waiting on it: status (tradingbot.status), metrics,
Events, fills to the audit sidecar (tradingbot.audit), halts and errors (tradingbot.notices,
errors rate limited per type by tradingbot.throttle).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

from tradingbot.audit import (
    SHUTDOWN_FLUSH_SECONDS,
    AuditReporter,
    JournalView,
    bot_events_client,
    events_per_fill,
    mark_audited,
    unaudited_removed,
)
from tradingbot.killswitch import kill_switch_report
from tradingbot.kube import tradingbot_path
from tradingbot.ledger import equity, position_notional, unrealized_pnl
from tradingbot.logsetup import REDACTOR
from tradingbot.notices import NoticeSender, error_event, halt_event
from tradingbot.parts import Held, RuntimeParts
from tradingbot.state.model import Fill
from tradingbot.status import status_body
from tradingbot_api.constants import HaltMode
from tradingbot_api.times import utc_now_iso

log = logging.getLogger("tradingbot")

# Events are for humans: posted in the background, a few at a time, never waited for.
MAX_EVENTS_IN_FLIGHT = 8


class ReportingPart(RuntimeParts):
    def _notice_halt(
        self, action: str, mode: HaltMode | None, source: str, positions: Held, cancelled: int = 0
    ) -> None:
        if self.notices is None:
            return
        self.notices.report(
            halt_event(
                bot=self.settings.bot_name,
                namespace=self.settings.namespace,
                action=action,
                mode=str(mode or ""),
                source=source,
                observed_at=utc_now_iso(),
                positions=positions,
                cancelled_orders=cancelled,
            )
        )

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _event_soon(self, kind: str, reason: str, message: str) -> None:
        if self.events is None or len(self._background) >= MAX_EVENTS_IN_FLIGHT:
            return
        self._spawn(self.events.emit(kind, reason, message))

    def _report_error(
        self, category: str, error_type: str, message: str = "", method: str = ""
    ) -> None:
        """An `error` audit event, at most one per type and minute (never waits)."""
        if self.notices is None:
            return
        send, suppressed = self.errors.admit(f"{category}.{error_type}", time.monotonic())
        if send:
            self.notices.report(
                self._error_event(category, error_type, message, method, suppressed)
            )

    def _report_held_back_errors(self) -> None:
        if self.notices is None:
            return
        for key, count in self.errors.summaries(time.monotonic()):
            category, _, error_type = key.partition(".")
            self.notices.report(self._error_event(category, error_type, "", "", count))

    def _error_event(
        self, category: str, error_type: str, message: str, method: str, suppressed: int
    ) -> dict[str, Any]:
        return error_event(
            bot=self.settings.bot_name,
            namespace=self.settings.namespace,
            error_type=error_type,
            category=category,
            at=utc_now_iso(),
            message=message,
            method=method,
            suppressed=suppressed,
            redact=REDACTOR.redact,
        )

    def _configure_audit(self) -> None:
        s = self.settings
        if not s.audit_url:
            log.info(
                "audit reporting off: AUDIT_URL is not set, fills are not sent to the audit log"
            )
            return
        if self.audit is not None:
            return
        token = self._audit_token or self._api().token_source()
        if token is None:
            log.warning(
                "audit reporting off: the Kubernetes client offers no bearer token to "
                "authenticate to the audit sidecar with"
            )
            return
        client = bot_events_client(s.audit_url, token)
        self.audit = AuditReporter(
            client,
            bot=s.bot_name,
            namespace=s.namespace,
            metrics=self.metrics,
            view=self._audit_view,
            on_acked=self._audit_acked,
            redact=REDACTOR.redact,
        )
        self.notices = NoticeSender(client, metrics=self.metrics)
        self.notices.start()
        log.info(
            "reporting fills, halts and errors to the audit sidecar",
            extra={"audit_url": s.audit_url},
        )

    def _audit_view(self) -> JournalView:
        return JournalView(self.state.journal, self._durable_fill_seq, self.state.checkpoint_seq)

    def _audit_acked(self, seqs: set[int]) -> None:
        # Stored with the next checkpoint; until then a restart simply resends (dedup).
        self.state = mark_audited(self.state, seqs)

    def _audit_lost(self, before: tuple[Fill, ...], after: tuple[Fill, ...]) -> None:
        """Count and report unaudited fills the journal trimmed away (never blocks)."""
        if self.audit is None:
            return
        lost = unaudited_removed(before, after)
        if not lost:
            return
        events = sum(events_per_fill(f) for f in lost)
        self.metrics.audit_dropped(events)
        log.warning(
            "journal trimmed fills the audit sidecar has not acknowledged; their audit "
            "events are lost",
            extra={"events": events, "trade_seqs": [f.seq for f in lost]},
        )

    def _audit_flush_budget(self) -> float:
        """At most SHUTDOWN_FLUSH_SECONDS, and never what the shutdown checkpoint needs."""
        elapsed = time.monotonic() - (self.stop_requested_at or time.monotonic())
        spare = self._shutdown_budget() - elapsed - 2.0
        return max(0.0, min(SHUTDOWN_FLUSH_SECONDS, spare))

    def _update_metrics(self, day: str) -> None:
        assert self.config is not None
        self.metrics.portfolio(
            notional=position_notional(self.state),
            realized=self.state.stats.realized_pnl,
            unrealized=unrealized_pnl(self.state),
            equity=equity(self.state, self.config.quote),
        )

    def status_patch(self) -> dict[str, Any]:
        """What the bot reports in its TradingBot's status (the operator owns the rest)."""
        return status_body(
            self.state,
            backend=self.store.backend if self.store else None,
            last_shutdown_clean=self.last_shutdown_clean,
            restored_seq=self.restored_seq,
            kill_switch=kill_switch_report(self._obeyed[0], self._obeyed_at, self._flat()),
        )

    def _schedule_status(self) -> None:
        """Offer the current status; tradingbot.status decides whether it is written now."""
        if self.api is None or self.config is None:
            return
        self.status.offer(self.status_patch())

    async def _push_status(self) -> None:
        """Report now (restore, shutdown): after any patch in flight, so this one lands last."""
        if self.api is None or self.config is None:
            return
        await self.status.push(self.status_patch())

    async def _patch_status(self, body: dict[str, Any]) -> None:
        s = self.settings
        await self._api().merge_patch(tradingbot_path(s.namespace, s.bot_name, "status"), body)
