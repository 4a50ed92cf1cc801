"""Pure accounting: fills change positions, statistics and the journal of a StateCheckpoint.

Average-cost bookkeeping for long spot positions. Fees paid in the quote currency raise the
cost basis of a buy and lower the proceeds of a sell; fees paid in the base currency shrink
the amount received. A sell realizes `proceeds - amount * average cost`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from tradingbot.state.model import (
    MAX_JOURNAL_ENTRIES,
    Fill,
    OpenOrder,
    Position,
    StateCheckpoint,
    Stats,
)

# Amounts below this fraction of the original position are dust left by fees/precision.
DUST_FRACTION = 1e-9


@dataclass(frozen=True)
class Execution:
    """A filled (or partly filled, then settled) order as reported by an exchange."""

    symbol: str
    side: str  # buy | sell
    amount: float  # base filled
    price: float  # average fill price
    cost: float  # quote value of the fill, before fees
    fee: float
    fee_currency: str
    order_id: str
    client_order_id: str
    time: str  # ISO 8601 UTC


def split_symbol(symbol: str) -> tuple[str, str]:
    """`BTC/USDT` -> (`BTC`, `USDT`); settlement suffixes (`:USDT`) are ignored."""
    base, _, rest = symbol.partition("/")
    quote = rest.split(":", 1)[0]
    if not base or not quote:
        raise ValueError(f"not a unified symbol: {symbol!r}")
    return base, quote


def day_realized_pnl(state: StateCheckpoint, day: str) -> float:
    """Realized PnL of the UTC day `day` (YYYY-MM-DD), from the newest journal entry.

    Each fill carries the running total of its day, so trimming old entries loses nothing.
    """
    if state.journal and state.journal[-1].day == day:
        return state.journal[-1].day_realized_pnl
    return 0.0


def apply_fill(
    state: StateCheckpoint, ex: Execution, *, reason: str = ""
) -> tuple[StateCheckpoint, Fill]:
    """The state after `ex`, and the journal entry recorded for it."""
    base, quote = split_symbol(ex.symbol)
    positions = dict(state.positions)
    held = positions.get(ex.symbol)
    realized = 0.0
    if ex.side == "buy":
        received = ex.amount - (ex.fee if ex.fee_currency == base else 0.0)
        paid = ex.cost + (ex.fee if ex.fee_currency == quote else 0.0)
        old_amount = held.amount if held else 0.0
        old_cost = old_amount * held.entry_price if held else 0.0
        amount = old_amount + received
        positions[ex.symbol] = Position(
            symbol=ex.symbol,
            amount=amount,
            entry_price=(old_cost + paid) / amount if amount > 0 else ex.price,
            mark_price=ex.price,
            opened_at=held.opened_at if held else ex.time,
        )
    elif ex.side == "sell":
        entry = held.entry_price if held else ex.price
        proceeds = ex.cost - (ex.fee if ex.fee_currency == quote else 0.0)
        realized = proceeds - ex.amount * entry
        if held:
            spent = ex.amount + (ex.fee if ex.fee_currency == base else 0.0)
            remaining = held.amount - spent
            if remaining <= held.amount * DUST_FRACTION:
                del positions[ex.symbol]
            else:
                positions[ex.symbol] = replace(held, amount=remaining, mark_price=ex.price)
    else:
        raise ValueError(f"unknown side {ex.side!r}")
    stats = Stats(
        realized_pnl=state.stats.realized_pnl + realized,
        total_trades=state.stats.total_trades + 1,
        wins=state.stats.wins + (1 if ex.side == "sell" and realized > 0 else 0),
    )
    day = ex.time[:10]
    fill = Fill(
        seq=stats.total_trades,
        time=ex.time,
        symbol=ex.symbol,
        side=ex.side,
        amount=ex.amount,
        price=ex.price,
        cost=ex.cost,
        fee=ex.fee,
        fee_currency=ex.fee_currency,
        order_id=ex.order_id,
        client_order_id=ex.client_order_id,
        realized_pnl=realized,
        day=day,
        day_realized_pnl=day_realized_pnl(state, day) + realized,
        reason=reason,
        position_before=held.amount if held else 0.0,
        position_after=positions[ex.symbol].amount if ex.symbol in positions else 0.0,
    )
    journal = (*state.journal, fill)[-MAX_JOURNAL_ENTRIES:]
    open_orders = tuple(
        o
        for o in state.open_orders
        if not ex.client_order_id or o.client_order_id != ex.client_order_id
    )
    return replace(
        state, positions=positions, stats=stats, journal=journal, open_orders=open_orders
    ), fill


def with_open_order(state: StateCheckpoint, order: OpenOrder) -> StateCheckpoint:
    """Add or replace (by clientOrderId) an unsettled order."""
    others = tuple(o for o in state.open_orders if o.client_order_id != order.client_order_id)
    return replace(state, open_orders=(*others, order))


def without_open_order(state: StateCheckpoint, client_order_id: str) -> StateCheckpoint:
    return replace(
        state,
        open_orders=tuple(o for o in state.open_orders if o.client_order_id != client_order_id),
    )


def mark(state: StateCheckpoint, prices: Mapping[str, float]) -> StateCheckpoint:
    """Positions valued at the latest prices (symbols without a price keep their mark)."""
    positions = {
        s: replace(p, mark_price=prices[s]) if s in prices else p
        for s, p in state.positions.items()
    }
    return replace(state, positions=positions)


def unrealized_pnl(state: StateCheckpoint) -> float:
    return sum(p.unrealized_pnl for p in state.positions.values())


def position_notional(state: StateCheckpoint) -> dict[str, float]:
    return {s: p.notional for s, p in state.positions.items()}


def equity(state: StateCheckpoint, quote: str) -> float:
    """Quote balance plus the mark value of every position."""
    return state.balances.get(quote, 0.0) + sum(p.notional for p in state.positions.values())
