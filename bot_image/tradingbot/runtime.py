"""The bot process: identity and config from the API, fencing, restore, trade loop, shutdown.

Lifecycle of `python -m tradingbot`:

1. Serve /metrics, /healthz, /readyz (not ready yet).
2. Read the TradingBot `BOT_NAME` in `POD_NAMESPACE` and, outside paper mode, the credentials
   from the files of the Secret volume in CREDENTIALS_DIR (a missing or empty file is a config
   error); registers the credentials with the log redactor before anything else happens.
3. Wait for the Lease `<bot>-trader` (another process may still be trading).
4. Restore the newest good checkpoint (fallback to the previous one is loud: log + Warning
   Event); an unreadable state stops the bot instead of trading on an empty one. Write a
   `restore` checkpoint (proves this process can write and is the only writer), report the
   restored checkpointSeq (Event, status, metric). Ready.
5. Each tick: prices, marks, daily-loss check, one decision per symbol, orders, a `fill`
   checkpoint after every fill, a `periodic` one on schedule. With AUDIT_URL set, stored fills
   are reported to the audit sidecar in the background (tradingbot.audit); acknowledgements
   are stored as journal flags with the next checkpoint.
6. SIGTERM: no new orders, at most a second for a last audit send, a `shutdown` checkpoint,
   Lease released, exit 0, all inside the grace period. Losing the Lease or a write conflict
   stops trading at once and goes back to step 3.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import signal
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tradingbot.audit import (
    SHUTDOWN_FLUSH_SECONDS,
    AuditReporter,
    JournalView,
    events_per_fill,
    mark_audited,
    unaudited_removed,
)
from tradingbot.clock import utc_now_iso
from tradingbot.config import BotConfig, ConfigError, Settings, parse_tradingbot
from tradingbot.constants import (
    API_GROUP,
    API_VERSION,
    REASON_FILL,
    REASON_ORDER,
    REASON_PERIODIC,
    REASON_RESTORE,
    REASON_SHUTDOWN,
    TRADINGBOT_PLURAL,
    lease_name,
)
from tradingbot.credentials import Credentials, read_credentials
from tradingbot.engine import OrderIntent, decide
from tradingbot.exchange.base import FILLED, OPEN, REJECTED, FeedUnavailableError, OrderResult
from tradingbot.exchange.errors import ExchangeCallError
from tradingbot.fencing import LeaseFence, LeaseLostError
from tradingbot.health import HealthServer, HealthState
from tradingbot.kube import (
    EventRecorder,
    KubeApi,
    KubeApiError,
    KubeClient,
    arequest,
    namespaced_path,
)
from tradingbot.ledger import (
    apply_fill,
    day_realized_pnl,
    equity,
    mark,
    position_notional,
    split_symbol,
    unrealized_pnl,
    with_open_order,
    without_open_order,
)
from tradingbot.logsetup import REDACTOR
from tradingbot.metrics import BotMetrics
from tradingbot.risk import daily_loss_pct
from tradingbot.state.model import Fill, OpenOrder, StateCheckpoint, StateCorruptError
from tradingbot.state.stores import (
    SOURCE_EMPTY,
    ConfigMapStateStore,
    FileStateStore,
    StateConflictError,
    StateStore,
    StateWriteError,
)
from tradingbot.strategy import Strategy

log = logging.getLogger("tradingbot")

EXIT_OK = 0
EXIT_FORCED = 1
EXIT_CONFIG = 2
EXIT_STATE = 3

# Time kept back from the grace period for releasing the Lease and closing connections.
SHUTDOWN_MARGIN_SECONDS = 2.0
# Status patches: soon after a change a user would see (fill, position, checkpoint), and at
# least this often for PnL drift; never more than one in flight.
STATUS_MIN_INTERVAL_SECONDS = 2.0
STATUS_REFRESH_SECONDS = 30.0
MAX_CONSECUTIVE_TICK_FAILURES = 30
HISTORY_EXTRA = 50
STARTUP_RETRY_SECONDS = 2.0


class BotRuntime:
    def __init__(
        self,
        settings: Settings,
        *,
        api: KubeApi | None = None,
        store: StateStore | None = None,
        metrics: BotMetrics | None = None,
        exchange_factory: Callable[[BotConfig], Any] | None = None,
        feed_factory: Callable[[BotConfig, StateCheckpoint], Any] | None = None,
        audit_token: Callable[[], str | None] | None = None,
    ) -> None:
        self.settings = settings
        self.api = api
        self.store = store
        self.metrics = metrics or BotMetrics(settings.bot_name)
        self.health = HealthState(stale_after=max(60.0, settings.tick_seconds * 10))
        self.server = HealthServer(
            self.health, self.metrics, settings.pod_ip, settings.metrics_port
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
        self._status_task: asyncio.Task[None] | None = None
        self._last_status = 0.0
        self._last_fingerprint = ""

    # ------------------------------------------------------------------ process lifecycle

    def request_stop(self, why: str = "signal") -> None:
        if not self.stop_event.is_set():
            log.info("stop requested: no new orders, flushing state", extra={"why": why})
            self.stop_requested_at = time.monotonic()
            self.health.ready = False
            self.health.phase = "stopping"
            self.stop_event.set()

    @property
    def stopping(self) -> bool:
        return self.stop_event.is_set()

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
        if self.audit is not None:
            await self.audit.close()
        if self._status_task is not None and not self._status_task.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._status_task, 2.0)
        for closable in (self.feed, self.exchange):
            if closable is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(closable.close(), 2.0)
        await self.server.stop()
        closer = getattr(self.api, "close", None)
        if callable(closer):
            with contextlib.suppress(Exception):
                closer()

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
        try:
            return await self._trade_while_fenced()
        finally:
            # Also on an unexpected error: a successor should not wait for expiry.
            await self.fence.release()

    async def _trade_while_fenced(self) -> int:
        assert self.fence is not None
        code = EXIT_OK
        while not self.stopping:
            self.health.phase = "waiting-for-lease"
            if not await self.fence.acquire(self.stop_event):
                break
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
                code = EXIT_STATE
                break
            finally:
                self.health.ready = False
                self.metrics.set_flag(self.metrics.lease_held, False)
            if finished:
                break
            # Lease lost or someone else wrote the state: start over from the Lease.
            await self.fence.release()
            await self._sleep(1.0)
        return code

    async def _configure(self) -> None:
        s = self.settings
        if self.api is None:
            try:
                self.api = await asyncio.to_thread(KubeClient.from_environment, s.kubeconfig)
            except Exception as exc:
                raise ConfigError(f"cannot load Kubernetes credentials: {exc}") from exc
        obj = await self._retry_api(lambda: self._read_tradingbot())
        if obj is None:
            return
        self.events = EventRecorder(
            self.api,
            s.namespace,
            s.bot_name,
            bot_uid=str((obj.get("metadata") or {}).get("uid", "")),
            pod_name=s.pod_name,
        )
        config = parse_tradingbot(obj)
        self.config = config
        self.strategy = Strategy(config.profile, config.params)
        credentials = None
        if config.mode != "paper":
            # Mounted before the container starts: a missing file is a broken pod template,
            # not something to wait for.
            credentials = await asyncio.to_thread(
                read_credentials, Path(s.credentials_dir), config.mode
            )
            REDACTOR.add(credentials.api_key, credentials.secret)
            self.credentials = credentials
        self._configure_audit()
        if self.store is None:
            if config.state_backend == "pvc":
                self.store = FileStateStore(Path(s.state_dir))
            else:
                self.store = ConfigMapStateStore(self._api(), s.namespace, s.bot_name)
        duration = s.lease_duration_seconds
        self.fence = LeaseFence(
            self._api(),
            s.namespace,
            lease_name(s.bot_name),
            s.identity,
            bot=s.bot_name,
            duration_seconds=duration,
            renew_interval=duration / 3,
            renew_deadline=duration * 2 / 3,
            retry_interval=min(1.0, duration / 5),
        )
        if self._exchange_factory is not None:
            self.exchange = self._exchange_factory(config)
        elif config.mode != "paper":
            from tradingbot.exchange.live import LiveExchange

            assert credentials is not None
            self.exchange = LiveExchange(
                config.exchange_id,
                config.mode,
                api_key=credentials.api_key,
                secret=credentials.secret,
                sink=self.metrics,
            )
        if self.exchange is not None:
            try:
                await self._retry_api(self.exchange.open)
            except ValueError as exc:  # e.g. an exchange id ccxt does not know
                raise ConfigError(f"spec.exchange.id: {exc}") from exc
        log.info(
            "configured",
            extra={
                "bot": s.bot_name,
                "profile": config.profile,
                "exchange": config.exchange_id,
                "mode": config.mode,
                "symbols": list(config.symbols),
                "state_backend": self.store.backend,
                "identity": s.identity,
            },
        )

    def _api(self) -> KubeApi:
        assert self.api is not None
        return self.api

    def _configure_audit(self) -> None:
        s = self.settings
        if not s.audit_url:
            log.info(
                "audit reporting off: AUDIT_URL is not set, fills are not sent to the audit log"
            )
            return
        if self.audit is not None:
            return
        token = self._audit_token or getattr(self.api, "bearer_token", None)
        if token is None:
            log.warning(
                "audit reporting off: the Kubernetes client offers no bearer token to "
                "authenticate to the audit sidecar with"
            )
            return
        self.audit = AuditReporter(
            s.audit_url,
            bot=s.bot_name,
            namespace=s.namespace,
            metrics=self.metrics,
            view=self._audit_view,
            on_acked=self._audit_acked,
            token=token,
            redact=REDACTOR.redact,
        )
        log.info("reporting fills to the audit sidecar", extra={"audit_url": s.audit_url})

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

    async def _read_tradingbot(self) -> dict[str, Any]:
        s = self.settings
        path = namespaced_path(
            f"{API_GROUP}/{API_VERSION}", s.namespace, TRADINGBOT_PLURAL, s.bot_name
        )
        try:
            return await arequest(self._api(), "GET", path)
        except KubeApiError as exc:
            if exc.status == 404:
                raise ConfigError(f"TradingBot {s.namespace}/{s.bot_name} not found") from exc
            raise

    async def _retry_api(self, call: Callable[[], Any]) -> Any:
        """Retry start-up reads until they succeed or a stop is requested (None then)."""
        while not self.stopping:
            try:
                return await call()
            except (ConfigError, ValueError, StateCorruptError):
                raise
            except Exception as exc:
                log.warning("start-up request failed; retrying", extra={"error": str(exc)})
                await self._sleep(STARTUP_RETRY_SECONDS)
        return None

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
        self.last_shutdown_clean = None if first_start else state.reason == REASON_SHUTDOWN
        if first_start and config.mode == "paper":
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
        while not await self._checkpoint(REASON_RESTORE):
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
            await self._shutdown_checkpoint()
        finally:
            if self.audit is not None:
                await self.audit.stop()

    async def _trade(self) -> None:
        await self._start_feed()
        await self._push_status()
        self.health.phase = "trading"
        self.health.ready = True
        self.health.detail = {
            "restoredFromSeq": self.restored_seq,
            "checkpointSeq": self.state.checkpoint_seq,
        }
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
                except Exception:
                    # One bad tick must not take positions down with the process; a bot that
                    # fails every tick is restarted (and restores) instead of spinning.
                    failures += 1
                    log.exception("tick failed", extra={"consecutive_failures": failures})
                    if failures >= MAX_CONSECUTIVE_TICK_FAILURES:
                        raise
                self.health.tick()
                await self._sleep(
                    max(0.0, self.settings.tick_seconds - (time.monotonic() - started))
                )
        finally:
            self.health.ready = False

    def _audit_flush_budget(self) -> float:
        """At most SHUTDOWN_FLUSH_SECONDS, and never what the shutdown checkpoint needs."""
        elapsed = time.monotonic() - (self.stop_requested_at or time.monotonic())
        spare = self._shutdown_budget() - elapsed - 2.0
        return max(0.0, min(SHUTDOWN_FLUSH_SECONDS, spare))

    async def _shutdown_checkpoint(self) -> None:
        elapsed = time.monotonic() - (self.stop_requested_at or time.monotonic())
        budget = max(0.5, self._shutdown_budget() - elapsed - 1.0)
        try:
            ok = await asyncio.wait_for(self._checkpoint(REASON_SHUTDOWN), budget)
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

    # ------------------------------------------------------------------ exchange and feed

    async def _open_exchange(self, first_start: bool) -> None:
        from tradingbot.exchange.paper import PaperExchange

        assert self.config is not None
        config = self.config
        if config.mode == "paper" and (self._exchange_factory is None or self.exchange is None):
            paper = PaperExchange(
                self.state.balances,
                fee_rate=config.params["feeRate"],
                slippage_pct=config.params["slippagePct"],
            )
            paper.restore_cost_basis(
                {
                    split_symbol(p.symbol)[0]: p.amount * p.entry_price
                    for p in self.state.positions.values()
                }
            )
            self.exchange = paper
        elif self.exchange is not None and self.exchange.mode != "paper":
            with contextlib.suppress(Exception):
                balances = await self.exchange.fetch_balances()
                self.state = replace(self.state, balances=balances)

    def _cost_rate(self) -> float:
        assert self.config is not None
        p = self.config.params
        # Live markets: assume a taker fee and half a percent of slippage when sizing.
        if self.config.mode == "paper":
            return float(p["feeRate"]) + float(p["slippagePct"]) / 100
        return 0.001 + 0.005

    async def _start_feed(self) -> None:
        from tradingbot.exchange.feeds import CcxtTickerFeed, SeededPriceFeed

        assert self.config is not None and self.strategy is not None
        config = self.config
        anchors = {s: p.mark_price for s, p in self.state.positions.items()}
        length = self.strategy.min_history + HISTORY_EXTRA
        choice = self.settings.price_feed or config.params["priceFeed"]
        if self.feed is not None:  # from a previous fenced session
            with contextlib.suppress(Exception):
                await self.feed.close()
        if self._feed_factory is not None:
            self.feed = self._feed_factory(config, self.state)
        elif config.mode != "paper":
            self.feed = CcxtTickerFeed(
                config.exchange_id, config.params["timeframe"], exchange=self.exchange.client
            )
        elif choice in ("live", "auto"):
            self.feed = CcxtTickerFeed(config.exchange_id, config.params["timeframe"])
        else:
            self.feed = SeededPriceFeed(config.profile, config.params["seed"], anchors)
        warm: dict[str, list[float]] | None = None
        while warm is None and not self.stopping:
            try:
                warm = await asyncio.wait_for(self.feed.warmup(config.symbols, length), 15.0)
            except (FeedUnavailableError, TimeoutError) as exc:
                if choice == "auto" and config.mode == "paper":
                    log.warning(
                        "live prices unavailable; using the seeded feed", extra={"error": str(exc)}
                    )
                    with contextlib.suppress(Exception):
                        await self.feed.close()
                    self.feed = SeededPriceFeed(config.profile, config.params["seed"], anchors)
                    continue
                log.warning("price feed unavailable; retrying", extra={"error": str(exc)})
                await self._sleep(STARTUP_RETRY_SECONDS)
        warm = warm or {}
        self.history = {s: deque(warm.get(s, []), maxlen=length) for s in config.symbols}
        self.health.detail["feed"] = self.feed.name

    async def _reconcile_open_orders(self) -> None:
        """Settle orders recorded before a restart: a fill the exchange made while this bot
        was down is applied, never forgotten; an order the exchange never saw is dropped."""
        if not self.state.open_orders:
            return
        if self.exchange is None or self.exchange.mode == "paper":
            log.warning(
                "dropping open orders recorded in paper mode (paper fills are immediate)",
                extra={"orders": len(self.state.open_orders)},
            )
            self.state = replace(self.state, open_orders=())
            return
        for order in list(self.state.open_orders):
            try:
                result = await self.exchange.fetch_order(
                    order.symbol, order.order_id, order.client_order_id
                )
            except ExchangeCallError as exc:
                log.warning(
                    "could not reconcile an open order; will retry",
                    extra={"client_order_id": order.client_order_id, "error": str(exc)},
                )
                continue
            await self._settle(order, result)

    async def _settle(self, order: OpenOrder, result: OrderResult | None) -> None:
        if result is None or result.status not in (FILLED, OPEN):
            log.info(
                "order not on the exchange or closed without a fill; dropping it",
                extra={"client_order_id": order.client_order_id},
            )
            self.state = without_open_order(self.state, order.client_order_id)
        elif result.status == FILLED and result.execution is not None:
            await self._record_fill(result, order.reason)
        elif result.status == OPEN:
            self.state = with_open_order(
                self.state,
                replace(order, order_id=result.order_id or order.order_id, status="open"),
            )

    # ------------------------------------------------------------------ trading

    async def _tick(self) -> None:
        assert self.config is not None and self.strategy is not None and self.fence is not None
        config = self.config
        try:
            prices = dict(await asyncio.wait_for(self.feed.next_prices(config.symbols), 15.0))
        except (FeedUnavailableError, TimeoutError) as exc:
            log.warning("no prices this tick", extra={"error": str(exc)})
            return
        for symbol, price in prices.items():
            self.history.setdefault(symbol, deque(maxlen=200)).append(price)
        if self.exchange.mode == "paper":
            self.exchange.update_prices(prices)
        self.state = mark(self.state, prices)
        day = datetime.now(UTC).strftime("%Y-%m-%d")
        await self._check_daily_loss(day)
        if self.state.open_orders:
            await self._reconcile_open_orders()
        for symbol in config.symbols:
            if self.stopping:
                break
            if not self.fence.held:
                raise LeaseLostError("lease not renewed in time")
            closes = list(self.history.get(symbol, ()))
            decision = decide(
                symbol,
                closes,
                self.state,
                self.strategy,
                config.limits,
                quote=config.quote,
                day=day,
                cost_rate=self._cost_rate(),
                entries_allowed=self._entries_allowed(day),
                to_precision=functools.partial(self._precision, symbol),
            )
            self.decisions += 1
            if self.first_decision_at is None:
                self.first_decision_at = time.monotonic()
                log.info("first decision", extra={"symbol": symbol})
            if decision.intent is not None:
                await self._execute(decision.intent)
        due = time.monotonic() - self._last_checkpoint >= self.settings.checkpoint_interval_seconds
        if due or self.write_failing:
            await self._checkpoint(REASON_PERIODIC)
        self._update_metrics(day)
        self._schedule_status()

    def _precision(self, symbol: str, amount: float) -> float:
        try:
            return float(self.exchange.amount_to_precision(symbol, amount))
        except Exception:  # ccxt refuses amounts below the market's precision
            return 0.0

    def _entries_allowed(self, day: str) -> bool:
        return not (self.stopping or self.write_failing or self._breach_day == day)

    async def _check_daily_loss(self, day: str) -> None:
        assert self.config is not None
        eq = equity(self.state, self.config.quote)
        pct = daily_loss_pct(day_realized_pnl(self.state, day), unrealized_pnl(self.state), eq)
        self.metrics.daily_loss_pct.labels(bot=self.settings.bot_name).set(pct)
        breached = pct >= self.config.limits.max_daily_loss_pct
        if breached and self._breach_day != day:
            self._breach_day = day
            message = (
                f"daily loss {pct:.2f}% reached maxDailyLossPct "
                f"{self.config.limits.max_daily_loss_pct:g}%: no new entries until "
                f"{day} ends (UTC); open positions keep their stop-loss/take-profit"
            )
            log.warning("daily loss limit breached", extra={"daily_loss_pct": pct})
            if self.events is not None:
                await self.events.warning("DailyLossLimitReached", message)
        elif self._breach_day is not None and self._breach_day != day:
            self._breach_day = None
        self.metrics.set_flag(self.metrics.daily_loss_breached, self._breach_day == day)

    def _client_order_id(self) -> str:
        # Binance allows 36 characters of [A-Za-z0-9._:/-]; others are laxer.
        return f"tb{uuid.uuid4().hex[:30]}"

    async def _execute(self, intent: OrderIntent) -> None:
        coid = self._client_order_id()
        live = self.exchange.mode != "paper"
        order = OpenOrder(
            client_order_id=coid,
            symbol=intent.symbol,
            side=intent.side,
            amount=intent.amount,
            created_at=utc_now_iso(),
            reason=intent.reason,
        )
        if live:
            # Record the intent first: if the process dies after the exchange filled the
            # order, the restart finds it by clientOrderId instead of losing the fill.
            self.state = with_open_order(self.state, order)
            if not await self._checkpoint(REASON_ORDER):
                self.state = without_open_order(self.state, coid)
                log.warning(
                    "order skipped: its intent could not be recorded",
                    extra={"symbol": intent.symbol, "side": intent.side},
                )
                return
        try:
            result = await self.exchange.market_order(
                intent.symbol, intent.side, intent.amount, coid
            )
        except ExchangeCallError as exc:
            log.error(
                "order failed",
                extra={
                    "symbol": intent.symbol,
                    "side": intent.side,
                    "error_type": exc.error_type,
                    "error": str(exc),
                },
            )
            return  # a live intent stays recorded and is reconciled on the next ticks
        if result.status == FILLED and result.execution is not None:
            await self._record_fill(result, intent.reason)
        elif result.status == OPEN:
            self.state = with_open_order(
                self.state, replace(order, order_id=result.order_id, status="open")
            )
        else:
            self.state = without_open_order(self.state, coid)
            error_type = result.error_type or "OrderRejected"
            self.metrics.exchange_error(error_type)
            self.metrics.trade(intent.symbol, intent.side, REJECTED)
            log.warning(
                "order refused by the exchange",
                extra={
                    "symbol": intent.symbol,
                    "side": intent.side,
                    "amount": intent.amount,
                    "error_type": error_type,
                    "error": result.message,
                },
            )

    async def _record_fill(self, result: OrderResult, reason: str) -> None:
        assert result.execution is not None
        ex = result.execution
        before = self.state.journal
        self.state, fill = apply_fill(self.state, ex, reason=reason)
        self._audit_lost(before, self.state.journal)
        if self.exchange.mode == "paper":
            self.state = replace(self.state, balances=dict(self.exchange.balances))
        else:
            with contextlib.suppress(Exception):  # sizing uses it; a stale value is refused
                balances = await self.exchange.fetch_balances()  # by the exchange, not lost
                self.state = replace(self.state, balances=balances)
        self.metrics.trade(ex.symbol, ex.side, FILLED)
        log.info(
            "fill",
            extra={
                "symbol": ex.symbol,
                "side": ex.side,
                "amount": ex.amount,
                "price": ex.price,
                "fee": ex.fee,
                "reason": reason,
                "realized_pnl": fill.realized_pnl,
                "trade_seq": fill.seq,
            },
        )
        # The in-memory state already holds the fill; the checkpoint makes it durable.
        await self._checkpoint(REASON_FILL)

    # ------------------------------------------------------------------ state

    async def _checkpoint(self, reason: str) -> bool:
        """Store the current state as the next checkpoint. False if the write failed (new
        entries pause until one succeeds); raises when fencing says another writer exists."""
        assert self.store is not None and self.fence is not None
        if self._save_task is not None and not self._save_task.done():
            # A write abandoned by a cancelled caller is still running in its thread; let it
            # finish so two writes never race.
            with contextlib.suppress(Exception):
                await asyncio.shield(self._save_task)
        if not self.fence.held:
            raise LeaseLostError("not the lease holder: refusing to write state")
        candidate = self.state.next(reason=reason, writer_pod=self.settings.pod_name)
        started = time.monotonic()
        self._save_task = asyncio.ensure_future(self.store.save(candidate))
        try:
            stored = await asyncio.shield(self._save_task)
        except StateConflictError:
            raise
        except (StateWriteError, OSError) as exc:
            if not self.write_failing:
                log.error(
                    "state write failed: no new entries until a write succeeds",
                    extra={"reason": reason, "error": str(exc)},
                )
            self.write_failing = True
            self.metrics.set_flag(self.metrics.state_write_failing, True)
            return False
        seconds = time.monotonic() - started
        # Keep in memory whatever changed while the write was in flight; drop only the
        # journal entries the size guard trimmed from what was stored.
        trimmed = len(candidate.journal) - len(stored.journal)
        if trimmed:
            self._audit_lost(self.state.journal[:trimmed], ())
        self.state = replace(
            self.state,
            checkpoint_seq=stored.checkpoint_seq,
            saved_at=stored.saved_at,
            reason=stored.reason,
            writer_pod=stored.writer_pod,
            journal=self.state.journal[trimmed:],
        )
        if self.write_failing:
            log.info("state writes succeed again: entries resume")
        self.write_failing = False
        self.metrics.set_flag(self.metrics.state_write_failing, False)
        self.metrics.checkpoint(reason, seconds, stored.checkpoint_seq)
        self._last_checkpoint = time.monotonic()
        self.health.detail["checkpointSeq"] = stored.checkpoint_seq
        if stored.journal:
            self._durable_fill_seq = stored.journal[-1].seq
        if self.audit is not None:
            self.audit.notify()
        return True

    # ------------------------------------------------------------------ reporting

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
        notional = position_notional(self.state)
        state: dict[str, Any] = {
            "backend": self.store.backend if self.store else None,
            "checkpointSeq": self.state.checkpoint_seq,
            "savedAt": self.state.saved_at or None,
            "lastShutdownClean": self.last_shutdown_clean,
            "restoredFromSeq": self.restored_seq,
        }
        if state["backend"] not in ("configmap", "pvc"):
            state.pop("backend")
        return {
            "status": {
                "positions": {
                    "open": len(notional),
                    "symbols": sorted(notional),
                    "notional": round(sum(notional.values()), 8),
                },
                "pnl": {
                    "realized": round(self.state.stats.realized_pnl, 8),
                    "unrealized": round(unrealized_pnl(self.state), 8),
                },
                "trades": {"total": self.state.stats.total_trades, "wins": self.state.stats.wins},
                "state": state,
            }
        }

    def _schedule_status(self) -> None:
        """Patch the status in the background, at most every few seconds: reporting must
        never slow trading down."""
        if self.api is None or self.config is None:
            return
        now = time.monotonic()
        body = self.status_patch()
        status = body["status"]
        # What a user watches change; PnL drifts every tick and only refreshes periodically.
        fingerprint = json.dumps(
            [status["positions"]["symbols"], status["trades"], status["state"]], sort_keys=True
        )
        elapsed = now - self._last_status
        changed = fingerprint != self._last_fingerprint
        if elapsed < STATUS_MIN_INTERVAL_SECONDS or (
            not changed and elapsed < STATUS_REFRESH_SECONDS
        ):
            return
        if self._status_task is not None and not self._status_task.done():
            return
        self._last_status = now
        self._last_fingerprint = fingerprint
        self._status_task = asyncio.create_task(self._patch_status(body))

    async def _push_status(self) -> None:
        """Report now (restore, shutdown): after any patch in flight, so this one lands last."""
        if self.api is None or self.config is None:
            return
        if self._status_task is not None and not self._status_task.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._status_task), 5.0)
        self._last_status = time.monotonic()
        self._status_task = asyncio.create_task(self._patch_status(self.status_patch()))
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(self._status_task), 5.0)

    async def _patch_status(self, body: dict[str, Any]) -> None:
        s = self.settings
        path = (
            namespaced_path(
                f"{API_GROUP}/{API_VERSION}", s.namespace, TRADINGBOT_PLURAL, s.bot_name
            )
            + "/status"
        )
        try:
            await arequest(
                self._api(), "PATCH", path, body, content_type="application/merge-patch+json"
            )
        except Exception as exc:
            log.debug("status patch failed", extra={"error": str(exc)})
