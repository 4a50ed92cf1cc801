"""One trading decision for one symbol, as a pure function of prices, state and limits.

Order of precedence for a held position: stop-loss, take-profit, then the strategy's exit.
For no position: the strategy's entry, sized and checked by the risk chain, and only when
entries are allowed (the lease is held, state writes succeed, no shutdown in progress).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tradingbot.ledger import day_realized_pnl, equity, position_notional, unrealized_pnl
from tradingbot.risk import (
    Portfolio,
    RiskDecision,
    RiskLimits,
    check_entry,
    check_exit,
    daily_loss_pct,
    size_entry,
)
from tradingbot.state.model import StateCheckpoint
from tradingbot.strategy import Signal, Strategy


@dataclass(frozen=True)
class OrderIntent:
    symbol: str
    side: str  # buy | sell
    amount: float
    price: float  # the price the decision was made at
    reason: str  # signal | stop_loss | take_profit

    @property
    def notional(self) -> float:
        return self.amount * self.price


@dataclass(frozen=True)
class Decision:
    intent: OrderIntent | None = None
    refusal: RiskDecision | None = None  # an entry the strategy wanted but a check refused


def portfolio(state: StateCheckpoint, quote: str, day: str, cost_rate: float) -> Portfolio:
    """The risk view of the account as of `state` (marked to the latest prices)."""
    eq = equity(state, quote)
    return Portfolio(
        position_notional=position_notional(state),
        free_quote=state.balances.get(quote, 0.0),
        equity=eq,
        daily_loss_pct=daily_loss_pct(day_realized_pnl(state, day), unrealized_pnl(state), eq),
        fee_rate=cost_rate,
    )


def decide(
    symbol: str,
    closes: Sequence[float],
    state: StateCheckpoint,
    strategy: Strategy,
    limits: RiskLimits,
    *,
    quote: str,
    day: str,
    cost_rate: float,
    entries_allowed: bool,
    to_precision: Callable[[float], float] = lambda amount: amount,
) -> Decision:
    """What to do about `symbol` now. `cost_rate` is fee plus expected slippage, as a fraction
    of notional, so an entry sized to the free balance still fits after costs."""
    if not closes:
        return Decision()
    if any(order.symbol == symbol for order in state.open_orders):
        return Decision()  # an order is still settling: never stack another on it
    price = closes[-1]
    held = state.positions.get(symbol)
    if held is not None and held.amount > 0:
        amount = to_precision(held.amount)
        if amount <= 0:
            return Decision()
        exit_reason = check_exit(held.entry_price, price, limits)
        if exit_reason is None and strategy.signal(closes, holding=True) == Signal.SELL:
            exit_reason = "signal"
        if exit_reason is None:
            return Decision()
        return Decision(OrderIntent(symbol, "sell", amount, price, exit_reason))
    if strategy.signal(closes, holding=False) != Signal.BUY:
        return Decision()
    if not entries_allowed:
        return Decision(refusal=RiskDecision(False, "entries_paused", "new entries are paused"))
    pf = portfolio(state, quote, day, cost_rate)
    request = size_entry(symbol, price, strategy.position_fraction, pf, limits)
    verdict = check_entry(request, pf, limits)
    if not verdict.allowed:
        return Decision(refusal=verdict)
    amount = to_precision(request.notional / price) if price > 0 else 0.0
    if amount <= 0:
        return Decision(refusal=RiskDecision(False, "min_notional", "amount rounds to zero"))
    return Decision(OrderIntent(symbol, "buy", amount, price, "signal"))
