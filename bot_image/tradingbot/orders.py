"""How the runtime decides and places orders: the exchange and the price feed, one decision
per symbol (or the flatten sells), every order through the gate, fills recorded and
checkpointed, orders reconciled after a restart and cancelled when a kill switch says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections import deque
from dataclasses import replace

from tradingbot.engine import OrderIntent, decide
from tradingbot.exchange.base import (
    CANCELED,
    FILLED,
    OPEN,
    REJECTED,
    FeedUnavailableError,
    OrderResult,
)
from tradingbot.exchange.errors import ExchangeCallError
from tradingbot.killswitch import OrderKind, flatten_intents, manages_exits, order_kind
from tradingbot.ledger import (
    apply_fill,
    day_realized_pnl,
    equity,
    split_symbol,
    unrealized_pnl,
    with_open_order,
    without_open_order,
)
from tradingbot.parts import RuntimeParts
from tradingbot.risk import check_exit_order, daily_loss_pct
from tradingbot.state.model import OpenOrder
from tradingbot_api.constants import CheckpointReason, ExchangeMode, HaltMode
from tradingbot_api.lease import LeaseLostError
from tradingbot_api.times import utc_now_iso

log = logging.getLogger("tradingbot")

HISTORY_EXTRA = 50
STARTUP_RETRY_SECONDS = 2.0


class OrderPart(RuntimeParts):
    async def _open_exchange(self, first_start: bool) -> None:
        from tradingbot.exchange.paper import PaperExchange

        assert self.config is not None
        config = self.config
        if config.mode == ExchangeMode.PAPER and (
            self._exchange_factory is None or self.exchange is None
        ):
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
        elif self.exchange is not None and self.exchange.mode != ExchangeMode.PAPER:
            with contextlib.suppress(Exception):
                balances = await self.exchange.fetch_balances()
                self.state = replace(self.state, balances=balances)

    def _cost_rate(self) -> float:
        assert self.config is not None
        p = self.config.params
        # Live markets: assume a taker fee and half a percent of slippage when sizing.
        if self.config.mode == ExchangeMode.PAPER:
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
        elif config.mode != ExchangeMode.PAPER:
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
                if choice == "auto" and config.mode == ExchangeMode.PAPER:
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
        if self.exchange is None or self.exchange.mode == ExchangeMode.PAPER:
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
                self._order_call_failed("reconcile", order, exc)
                continue
            await self._settle(order, result)

    async def _cancel_open_orders(self, which: str) -> int:
        """Cancel the bot's own open orders on the exchange: `entries` (buys) or `all`.
        Returns how many were cancelled; what fails stays recorded and is tried again."""
        if not which or not self.state.open_orders:
            return 0
        if self.exchange is None or self.exchange.mode == ExchangeMode.PAPER:
            return 0  # paper orders fill at once; reconciling drops any left over
        await self._reconcile_open_orders()  # what filled meanwhile, and the exchange's ids
        cancelled = 0
        for order in list(self.state.open_orders):
            if (which == "entries" and order.side != "buy") or not order.order_id:
                continue
            if not self._holds_lease():
                raise LeaseLostError("the trader lease is not valid by this process's clock")
            try:
                result = await self.exchange.cancel_order(order.symbol, order.order_id)
                if result.status != CANCELED:
                    # Filled first, or already gone: settle what the exchange says it is.
                    result = await self.exchange.fetch_order(
                        order.symbol, order.order_id, order.client_order_id
                    )
            except ExchangeCallError as exc:
                self._order_call_failed("cancel", order, exc)
                continue
            if result is not None and result.status == CANCELED:
                self.state = without_open_order(self.state, order.client_order_id)
                cancelled += 1
                log.info(
                    "open order cancelled",
                    extra={"client_order_id": order.client_order_id, "side": order.side},
                )
            else:
                await self._settle(order, result)
        return cancelled

    def _order_call_failed(self, action: str, order: OpenOrder, exc: ExchangeCallError) -> None:
        log.warning(
            f"could not {action} an open order; will retry",
            extra={"client_order_id": order.client_order_id, "error": str(exc)},
        )
        self._report_error("exchange", exc.error_type, str(exc), exc.method)

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

    def _precision(self, symbol: str, amount: float) -> float:
        if self.exchange is None:
            return amount
        try:
            return float(self.exchange.amount_to_precision(symbol, amount))
        except Exception:  # ccxt refuses amounts below the market's precision
            return 0.0

    def _client_order_id(self) -> str:
        # Binance allows 36 characters of [A-Za-z0-9._:/-]; others are laxer.
        return f"tb{uuid.uuid4().hex[:30]}"

    async def _execute(self, intent: OrderIntent) -> None:
        if not self._admit(intent):
            return
        if order_kind(intent) == OrderKind.EXIT:
            held = self.state.positions.get(intent.symbol)
            check = check_exit_order(intent.amount, held.amount if held else 0.0, intent.price)
            if not check.allowed:
                log.warning(
                    "exit refused by the exit checks",
                    extra={"symbol": intent.symbol, "check": check.check, "why": check.message},
                )
                return
        coid = self._client_order_id()
        live = self.exchange.mode != ExchangeMode.PAPER
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
            if not await self._checkpoint(CheckpointReason.ORDER):
                self.state = without_open_order(self.state, coid)
                log.warning(
                    "order skipped: its intent could not be recorded",
                    extra={"symbol": intent.symbol, "side": intent.side},
                )
                return
            # The write took a while: a halt may have come in, or the Lease gone, meanwhile.
            if not self._admit(intent):
                self.state = without_open_order(self.state, coid)
                return
        try:
            result = await self.exchange.market_order(
                intent.symbol,
                intent.side,
                intent.amount,
                coid,
                may_send=lambda: self._gate(order_kind(intent)).allowed,
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
            self._report_error("exchange", exc.error_type, str(exc), exc.method)
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
            self._report_error("exchange", error_type, result.message, "create_order")
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
        if self.exchange.mode == ExchangeMode.PAPER:
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
                "client_order_id": ex.client_order_id,
            },
        )
        # The in-memory state already holds the fill; the checkpoint makes it durable.
        await self._checkpoint(CheckpointReason.FILL)

    async def _decide_and_execute(self, prices: dict[str, float], day: str) -> None:
        assert self.config is not None and self.strategy is not None and self.fence is not None
        assert self.control is not None
        control = self.control.state
        if not manages_exits(control.mode, control.suspended):
            return
        if control.mode == HaltMode.FLATTEN:
            for intent in flatten_intents(self.state, prices, self._precision):
                if self.stopping:
                    break
                await self._execute(intent)
            return
        for symbol in self.config.symbols:
            if self.stopping:
                break
            if not self.fence.held:
                raise LeaseLostError("lease not renewed in time")
            closes = list(self.history.get(symbol, ()))
            entry_gate = self._gate(OrderKind.ENTRY)
            decision = decide(
                symbol,
                closes,
                self.state,
                self.strategy,
                self.config.limits,
                quote=self.config.quote,
                day=day,
                cost_rate=self._cost_rate(),
                entries_allowed=entry_gate.allowed,
                to_precision=functools.partial(self._precision, symbol),
            )
            self.decisions += 1
            if self.first_decision_at is None:
                self.first_decision_at = time.monotonic()
                log.info("first decision", extra={"symbol": symbol})
            if decision.refusal is not None and decision.refusal.check == "entries_paused":
                self.metrics.blocked(entry_gate.check)  # the strategy wanted in
            if decision.intent is not None:
                await self._execute(decision.intent)

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
