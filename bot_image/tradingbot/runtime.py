"""The bot process: identity and config from the API, fencing, restore, trade loop, shutdown.

Lifecycle of `python -m tradingbot`:

1. Serve /metrics, /healthz, /readyz (not ready yet).
2. Read the TradingBot `BOT_NAME` in `POD_NAMESPACE` and, outside paper mode, the credentials
   from the files of the Secret volume in CREDENTIALS_DIR (a missing or empty file is a config
   error); registers the credentials with the log redactor before anything else happens.
   Start watching the TradingBot and the fleet switch (tradingbot.control) for the whole
   life of the process: the kill switch and suspension are obeyed without the operator.
3. Wait for the Lease `<bot>-trader` (another process may still be trading).
4. Restore the newest good checkpoint (fallback to the previous one is loud: log + Warning
   Event); an unreadable state stops the bot instead of trading on an empty one. Write a
   `restore` checkpoint (proves this process can write and is the only writer), report the
   restored checkpointSeq (Event, status, metric). Once both switches were read: Ready.
5. Each tick: prices, marks, daily-loss check, the kill switch (tradingbot.killswitch: what
   each mode does, step by step), one decision per symbol, orders, a `fill` checkpoint after
   every fill, a `periodic` one on schedule. Every order, entry or exit, first passes the
   order gate: the Lease still valid by this process's clock, no stop, no suspension, the
   kill switch, and for entries a control watch heard recently, state writes working and the
   daily loss limit. With AUDIT_URL set, stored fills are reported to the audit sidecar in
   the background (tradingbot.audit), and so are halts and errors (tradingbot.notices);
   acknowledgements of fills are stored as journal flags with the next checkpoint.
6. SIGTERM: no new orders, at most a second for a last audit send, a `shutdown` checkpoint,
   Lease released, exit 0, all inside the grace period. Losing the Lease (or a write by
   another process) stops trading at once and ends the process with EXIT_FENCED without
   writing state: its memory may be stale, and a fresh process (new nonce) starts over
   from step 3.

This module is the lifecycle; the runtime's other jobs are parts of the same object:
tradingbot.startup (identity, config and credentials, what they configure),
tradingbot.obey (kill switch, suspension, order gate), tradingbot.orders (decisions, orders,
fills, exchange and feed), tradingbot.checkpoints (state writes) and tradingbot.reporting
(status, metrics, Events, audit).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from tradingbot.audit import AuditReporter
from tradingbot.checkpoints import CheckpointPart
from tradingbot.config import BotConfig, ConfigError, Settings
from tradingbot.control import ControlWatcher
from tradingbot.credentials import Credentials
from tradingbot.exchange.base import FeedUnavailableError
from tradingbot.health import HealthServer, HealthState
from tradingbot.kube import EventRecorder, KubeApi
from tradingbot.ledger import mark
from tradingbot.metrics import BotMetrics
from tradingbot.notices import NoticeSender
from tradingbot.obey import ControlPart
from tradingbot.orders import STARTUP_RETRY_SECONDS, OrderPart
from tradingbot.reporting import ReportingPart
from tradingbot.startup import StartupPart
from tradingbot.state.model import StateCheckpoint, StateCorruptError
from tradingbot.state.stores import (
    SOURCE_EMPTY,
    StateConflictError,
    StateStore,
)
from tradingbot.status import StatusReporter
from tradingbot.strategy import Strategy
from tradingbot.throttle import ErrorThrottle
from tradingbot_api.audit_http import TokenSource
from tradingbot_api.constants import CheckpointReason, ExchangeMode, HaltMode
from tradingbot_api.lease import LeaseFence, LeaseLostError
from tradingbot_api.times import utc_now

log = logging.getLogger("tradingbot")

EXIT_OK = 0
EXIT_FORCED = 1
EXIT_CONFIG = 2
EXIT_STATE = 3
# The Lease was lost or another process wrote the state: this process must not go on.
EXIT_FENCED = 4

# Time kept back from the grace period for releasing the Lease and closing connections.
SHUTDOWN_MARGIN_SECONDS = 2.0
MAX_CONSECUTIVE_TICK_FAILURES = 30


class BotRuntime(ControlPart, OrderPart, ReportingPart, StartupPart, CheckpointPart):
    """One bot process; its methods are grouped by job in the parts it is made of."""

    def __init__(
        self,
        settings: Settings,
        *,
        api: KubeApi | None = None,
        store: StateStore | None = None,
        metrics: BotMetrics | None = None,
        exchange_factory: Callable[[BotConfig], Any] | None = None,
        feed_factory: Callable[[BotConfig, StateCheckpoint], Any] | None = None,
        audit_token: TokenSource | None = None,
    ) -> None:
        self.settings = settings
        self.api = api
        self.store = store
        self.metrics = metrics or BotMetrics(settings.bot_name)
        self.health = HealthState(stale_after=max(60.0, settings.tick_seconds * 10))
        self.server = HealthServer(
            self.health,
            self.metrics,
            settings.pod_ip,
            settings.metrics_port,
            pod=settings.pod_uid or settings.pod_name,
        )
        self._exchange_factory = exchange_factory
        self._feed_factory = feed_factory
        self._audit_token = audit_token
        self.audit: AuditReporter | None = None
        # Seq of the newest fill in a stored checkpoint: only those are reported.
        self._durable_fill_seq = 0
        self.stop_event = asyncio.Event()
        self.stop_requested_at: float | None = None
        self.config: BotConfig | None = None
        self.events: EventRecorder | None = None
        self.fence: LeaseFence | None = None
        self.exchange: Any = None
        # Kept for an `exchange_factory`, which must sign with what the files hold.
        self.credentials: Credentials | None = None
        self.feed: Any = None
        self.strategy: Strategy | None = None
        self.state = StateCheckpoint()
        self.history: dict[str, deque[float]] = {}
        self.restored_seq: int | None = None
        self.last_shutdown_clean: bool | None = None
        self.write_failing = False
        self.decisions = 0
        self.first_decision_at: float | None = None
        self._save_task: asyncio.Future[StateCheckpoint] | None = None
        self._last_checkpoint = 0.0
        self._breach_day: str | None = None
        self.status = StatusReporter(self._patch_status, may_write=self._holds_lease)
        # What controls the bot (tradingbot.control), and what the trade loop last acted on.
        self.control: ControlWatcher | None = None
        self._initial_object: dict[str, Any] | None = None
        self._seen_mode: HaltMode | None = None
        self.kill_observed_at: str | None = None
        self._obeyed: tuple[HaltMode | None, bool] = (None, False)
        self._obeyed_at: str | None = None
        self._flat_reported: tuple[HaltMode | None, str | None] | None = None
        self._silent_flagged = False
        self._wake = asyncio.Event()
        self.notices: NoticeSender | None = None
        self.errors = ErrorThrottle()
        self._background: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------------ process lifecycle

    def request_stop(self, why: str = "signal") -> None:
        if not self.stop_event.is_set():
            log.info("stop requested: no new orders, flushing state", extra={"why": why})
            self.stop_requested_at = time.monotonic()
            self.health.ready = False
            self.health.phase = "stopping"
            self.stop_event.set()
            self._wake.set()

    def _shutdown_budget(self) -> float:
        return max(1.0, self.settings.grace_period_seconds - SHUTDOWN_MARGIN_SECONDS)

    async def run(self) -> int:
        """Run until stopped; returns the process exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop, sig.name)
        await self.server.start()
        log.info(
            "serving health and metrics",
            extra={"address": f"{self.settings.pod_ip}:{self.server.port}"},
        )
        main = asyncio.create_task(self._main())
        stop_wait = asyncio.create_task(self.stop_event.wait())
        try:
            await asyncio.wait({main, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            if not main.done():
                # Stop requested: the main task winds down by itself; bound it by the grace
                # period so the kubelet's SIGKILL never lands in the middle of a write.
                elapsed = time.monotonic() - (self.stop_requested_at or time.monotonic())
                budget = max(0.5, self._shutdown_budget() - elapsed)
                done, _ = await asyncio.wait({main}, timeout=budget)
                if not done:
                    log.error(
                        "shutdown exceeded the grace period; exiting without release",
                        extra={"budget_seconds": budget},
                    )
                    main.cancel()
                    await asyncio.gather(main, return_exceptions=True)
                    return EXIT_FORCED
            return main.result()
        finally:
            stop_wait.cancel()
            await self._close()

    async def _close(self) -> None:
        if self.control is not None:
            await self.control.stop()
        if self.audit is not None:
            await self.audit.close()
        if self.notices is not None:
            await self.notices.close()
        await self.status.close()
        for closable in (self.feed, self.exchange):
            if closable is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(closable.close(), 2.0)
        if self._background:
            await asyncio.wait(set(self._background), timeout=2.0)
        await self.server.stop()
        if self.api is not None:
            with contextlib.suppress(Exception):
                await self.api.close()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop_event.wait(), seconds)

    async def _main(self) -> int:
        try:
            await self._configure()
        except ConfigError as exc:
            log.error("invalid configuration; not trading", extra={"error": str(exc)})
            if self.events is not None:
                await self.events.warning("InvalidConfig", str(exc))
            return EXIT_CONFIG
        if self.stopping or self.config is None:
            return EXIT_OK
        assert self.fence is not None
        self._start_control()
        try:
            return await self._trade_while_fenced()
        finally:
            # Also on an unexpected error: a successor should not wait for expiry.
            await self.fence.release()

    async def _trade_while_fenced(self) -> int:
        assert self.fence is not None
        self.health.phase = "waiting-for-lease"
        if not await self.fence.acquire(self.stop_event):
            return EXIT_OK
        self.metrics.set_flag(self.metrics.lease_held, True)
        try:
            finished = await self._fenced_session()
        except StateCorruptError as exc:
            log.error(
                "stored state exists but cannot be read; refusing to trade on an empty state",
                extra={"error": str(exc)},
            )
            if self.events is not None:
                await self.events.warning("StateUnreadable", str(exc))
            return EXIT_STATE
        finally:
            self.health.ready = False
            self.metrics.set_flag(self.metrics.lease_held, False)
        if finished:
            return EXIT_OK
        # Lease lost or someone else wrote the state: whatever this process holds in memory
        # may be stale, and a process that was frozen past its Lease must not come back.
        # The container restarts as a new process that waits for the Lease and restores.
        log.error("fencing broken: exiting without writing state", extra={"code": EXIT_FENCED})
        return EXIT_FENCED

    # ------------------------------------------------------------------ one fenced session

    async def _fenced_session(self) -> bool:
        """Trade while the Lease is ours. True: stopped on request; False: fence broken."""
        assert self.fence is not None
        renewals = asyncio.create_task(self.fence.keep_renewed())
        session = asyncio.create_task(self._session())
        lost = asyncio.create_task(self.fence.lost.wait())
        try:
            await asyncio.wait({session, lost}, return_when=asyncio.FIRST_COMPLETED)
            if not session.done():
                log.error("trader lease lost: stopped trading")
                session.cancel()
                await asyncio.gather(session, return_exceptions=True)
                return False
            try:
                session.result()
            except (LeaseLostError, StateConflictError) as exc:
                log.error("fencing broken: stopped trading", extra={"error": str(exc)})
                return False
            return True
        finally:
            lost.cancel()
            renewals.cancel()
            await asyncio.gather(renewals, return_exceptions=True)

    async def _session(self) -> None:
        assert self.config is not None and self.store is not None
        config = self.config
        self.health.phase = "restoring"
        result = await self._retry_api(self.store.load)
        if result is None:
            return
        if result.fell_back:
            message = (
                f"restored the previous checkpoint (checkpointSeq "
                f"{result.state.checkpoint_seq}) because {result.problem}"
            )
            log.error(
                "state fallback",
                extra={"problem": result.problem, "checkpoint_seq": result.state.checkpoint_seq},
            )
            if self.events is not None:
                await self.events.warning("StateFallback", message)
        state = result.state
        first_start = result.source == SOURCE_EMPTY
        self.restored_seq = None if first_start else state.checkpoint_seq
        self.last_shutdown_clean = (
            None if first_start else state.reason == CheckpointReason.SHUTDOWN
        )
        if first_start and config.mode == ExchangeMode.PAPER:
            state = replace(state, balances={config.quote: float(config.params["startingBalance"])})
        self.state = state
        orphans = sorted(set(state.positions) - set(config.symbols))
        if orphans:
            # Kept and reported, never dropped: a human decides what to do with them.
            log.warning(
                "restored positions in symbols no longer traded; they are kept but not managed",
                extra={"symbols": orphans},
            )
        await self._open_exchange(first_start)
        await self._reconcile_open_orders()
        # The first write must succeed before trading: it proves this process can store fills
        # and, with the ConfigMap's resourceVersion, that it is the only writer.
        while not await self._checkpoint(CheckpointReason.RESTORE):
            if self.stopping:
                return
            await self._sleep(STARTUP_RETRY_SECONDS)
        self.metrics.restored_seq.labels(bot=self.settings.bot_name).set(
            -1 if self.restored_seq is None else self.restored_seq
        )
        if self.events is not None:
            if first_start:
                await self.events.normal(
                    "StateInitialized",
                    f"no stored state: first start with a fresh wallet ({self.store.backend})",
                )
            else:
                await self.events.normal(
                    "StateRestored",
                    f"restored checkpointSeq {self.restored_seq} from "
                    f"{self.store.backend} ({result.source}); {len(state.positions)} open "
                    f"positions, {state.stats.total_trades} trades",
                )
        log.info(
            "state restored",
            extra={
                "restored_seq": self.restored_seq,
                "source": result.source,
                "positions": sorted(self.state.positions),
                "checkpoint_seq": self.state.checkpoint_seq,
            },
        )
        if self.audit is not None:
            # Whatever an earlier process left unaudited goes first.
            self.audit.start()
        try:
            await self._trade()
            if self.audit is not None:
                # One last best-effort send, so the shutdown checkpoint stores the flags.
                await self.audit.stop(self._audit_flush_budget())
            if self.notices is not None:
                await self.notices.stop(self._audit_flush_budget())
            await self._shutdown_checkpoint()
        finally:
            if self.audit is not None:
                await self.audit.stop()

    async def _trade(self) -> None:
        await self._start_feed()
        if not await self._control_known():
            return
        await self._push_status()
        self.health.phase = "trading"
        self.health.detail = {
            "restoredFromSeq": self.restored_seq,
            "checkpointSeq": self.state.checkpoint_seq,
        }
        self._update_readiness()
        self.health.tick()
        self._last_checkpoint = time.monotonic()
        failures = 0
        try:
            while not self.stopping:
                started = time.monotonic()
                try:
                    await self._tick()
                    failures = 0
                except (LeaseLostError, StateConflictError):
                    raise
                except Exception as exc:
                    # One bad tick must not take positions down with the process; a bot that
                    # fails every tick is restarted (and restores) instead of spinning.
                    failures += 1
                    log.exception("tick failed", extra={"consecutive_failures": failures})
                    self._report_error("tick", type(exc).__name__, str(exc))
                    if failures >= MAX_CONSECUTIVE_TICK_FAILURES:
                        raise
                self.health.tick()
                await self._pause(
                    max(0.0, self.settings.tick_seconds - (time.monotonic() - started))
                )
        finally:
            self.health.ready = False

    async def _pause(self, seconds: float) -> None:
        """Until the next tick, a stop request, or a change of what controls the bot."""
        if seconds > 0 and not self._wake.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), seconds)
        self._wake.clear()

    async def _shutdown_checkpoint(self) -> None:
        elapsed = time.monotonic() - (self.stop_requested_at or time.monotonic())
        budget = max(0.5, self._shutdown_budget() - elapsed - 1.0)
        try:
            ok = await asyncio.wait_for(self._checkpoint(CheckpointReason.SHUTDOWN), budget)
        except TimeoutError:
            ok = False
        if ok:
            self.last_shutdown_clean = True
            log.info(
                "final checkpoint written",
                extra={
                    "checkpoint_seq": self.state.checkpoint_seq,
                    "positions": sorted(self.state.positions),
                },
            )
            await self._push_status()
        else:
            log.error(
                "final checkpoint failed; the last stored checkpoint stands",
                extra={"checkpoint_seq": self.state.checkpoint_seq},
            )

    # ------------------------------------------------------------------ trading

    async def _tick(self) -> None:
        assert self.config is not None and self.strategy is not None and self.fence is not None
        config = self.config
        try:
            prices = dict(await asyncio.wait_for(self.feed.next_prices(config.symbols), 15.0))
        except (FeedUnavailableError, TimeoutError) as exc:
            log.warning("no prices this tick", extra={"error": str(exc)})
            prices = {}
        for symbol, price in prices.items():
            self.history.setdefault(symbol, deque(maxlen=200)).append(price)
        if self.exchange.mode == ExchangeMode.PAPER:
            self.exchange.update_prices(prices)
        self.state = mark(self.state, prices)
        day = utc_now().strftime("%Y-%m-%d")
        await self._check_daily_loss(day)
        self._watch_health()
        await self._obey_control()
        if self.state.open_orders:
            await self._reconcile_open_orders()
        if prices:
            await self._decide_and_execute(prices, day)
        if not self.fence.held:
            raise LeaseLostError("lease not renewed in time")
        due = time.monotonic() - self._last_checkpoint >= self.settings.checkpoint_interval_seconds
        if due or self.write_failing:
            await self._checkpoint(CheckpointReason.PERIODIC)
        self._update_metrics(day)
        self._report_held_back_errors()
        self._schedule_status()
        self._report_flat()
