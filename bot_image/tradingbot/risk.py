"""Risk limits and the pure checks run before every order.

Entry checks form an ordered chain; the first violation wins and is reported with the name of
the check and a sentence for the log. Exits are never blocked by limits: closing a position
only reduces risk. Stop-loss and take-profit turn into exits here, not in the strategy.

The presets and the bounds of `spec.risk` are part of the API (`tradingbot_api.risk`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tradingbot_api.risk import DEFAULT_LIMITS, RISK_PATH, validate_risk

__all__ = ["DEFAULT_LIMITS", "RISK_PATH", "RiskLimits", "validate_risk"]

# Orders below this notional are skipped: exchanges reject dust (Binance: 5-10 USDT).
MIN_ORDER_NOTIONAL = 10.0


@dataclass(frozen=True)
class RiskLimits:
    max_position_notional: float
    max_open_positions: int
    stop_loss_pct: float
    take_profit_pct: float
    max_daily_loss_pct: float
    min_order_notional: float = MIN_ORDER_NOTIONAL

    @classmethod
    def for_profile(cls, profile: str, risk: Mapping[str, Any] | None = None) -> RiskLimits:
        """Profile defaults overlaid with the fields set in `spec.risk`."""
        if profile not in DEFAULT_LIMITS:
            raise ValueError(f"unknown profile {profile!r}")
        merged = {
            **DEFAULT_LIMITS[profile],
            **{k: v for k, v in (risk or {}).items() if v is not None},
        }
        errors = validate_risk(merged)
        if errors:
            raise ValueError("; ".join(errors))
        return cls(
            max_position_notional=float(merged["maxPositionNotional"]),
            max_open_positions=int(merged["maxOpenPositions"]),
            stop_loss_pct=float(merged["stopLossPct"]),
            take_profit_pct=float(merged["takeProfitPct"]),
            max_daily_loss_pct=float(merged["maxDailyLossPct"]),
        )


@dataclass(frozen=True)
class RiskDecision:
    allowed: bool
    check: str
    message: str

    @classmethod
    def allow(cls) -> RiskDecision:
        return cls(True, "", "")


@dataclass(frozen=True)
class EntryRequest:
    symbol: str
    notional: float
    price: float


@dataclass(frozen=True)
class Portfolio:
    """What the checks need to know about the account, in the quote currency."""

    position_notional: Mapping[str, float]  # open positions by symbol (mark value)
    free_quote: float
    equity: float
    daily_loss_pct: float = 0.0
    fee_rate: float = 0.0


Check = Callable[[EntryRequest, Portfolio, RiskLimits], RiskDecision | None]


def check_daily_loss(req: EntryRequest, pf: Portfolio, lim: RiskLimits) -> RiskDecision | None:
    if pf.daily_loss_pct >= lim.max_daily_loss_pct:
        return RiskDecision(
            False,
            "daily_loss",
            f"daily loss {pf.daily_loss_pct:.2f}% reached "
            f"maxDailyLossPct {lim.max_daily_loss_pct:g}%: no new entries today",
        )
    return None


def check_open_positions(req: EntryRequest, pf: Portfolio, lim: RiskLimits) -> RiskDecision | None:
    already_open = pf.position_notional.get(req.symbol, 0.0) > 0
    open_count = sum(1 for v in pf.position_notional.values() if v > 0)
    if not already_open and open_count >= lim.max_open_positions:
        return RiskDecision(
            False,
            "max_open_positions",
            f"{open_count} positions open, maxOpenPositions is {lim.max_open_positions}",
        )
    return None


def check_position_notional(
    req: EntryRequest, pf: Portfolio, lim: RiskLimits
) -> RiskDecision | None:
    after = pf.position_notional.get(req.symbol, 0.0) + req.notional
    # A relative tolerance so that an order sized exactly to the limit is not refused by
    # floating-point noise.
    if after > lim.max_position_notional * (1 + 1e-9):
        return RiskDecision(
            False,
            "max_position_notional",
            f"{req.symbol} notional would be "
            f"{after:.2f}, maxPositionNotional is {lim.max_position_notional:g}",
        )
    return None


def check_funds(req: EntryRequest, pf: Portfolio, lim: RiskLimits) -> RiskDecision | None:
    cost = req.notional * (1 + pf.fee_rate)
    if cost > pf.free_quote * (1 + 1e-9):
        return RiskDecision(
            False, "funds", f"order costs {cost:.2f}, free balance is {pf.free_quote:.2f}"
        )
    return None


def check_min_notional(req: EntryRequest, pf: Portfolio, lim: RiskLimits) -> RiskDecision | None:
    if req.notional < lim.min_order_notional:
        return RiskDecision(
            False,
            "min_notional",
            f"order notional {req.notional:.2f} is below the minimum {lim.min_order_notional:g}",
        )
    return None


ENTRY_CHECKS: tuple[Check, ...] = (
    check_daily_loss,
    check_open_positions,
    check_position_notional,
    check_min_notional,
    check_funds,
)


def check_entry(req: EntryRequest, pf: Portfolio, lim: RiskLimits) -> RiskDecision:
    """Run the entry chain; the first violation wins."""
    for check in ENTRY_CHECKS:
        decision = check(req, pf, lim)
        if decision is not None:
            return decision
    return RiskDecision.allow()


def size_entry(
    symbol: str, price: float, fraction: float, pf: Portfolio, lim: RiskLimits
) -> EntryRequest:
    """The largest entry the strategy wants that stays inside the per-position limit and the
    free balance (fees included). The chain still runs on the result."""
    wanted = pf.equity * fraction
    room = lim.max_position_notional - pf.position_notional.get(symbol, 0.0)
    affordable = pf.free_quote / (1 + pf.fee_rate)
    notional = max(0.0, min(wanted, room, affordable))
    return EntryRequest(symbol=symbol, notional=notional, price=price)


def check_exit(entry_price: float, price: float, lim: RiskLimits) -> str | None:
    """`stop_loss` or `take_profit` when the mark price crossed a limit, else None."""
    if entry_price <= 0:
        return None
    change_pct = (price / entry_price - 1.0) * 100.0
    if change_pct <= -lim.stop_loss_pct:
        return "stop_loss"
    if change_pct >= lim.take_profit_pct:
        return "take_profit"
    return None


def daily_loss_pct(day_realized_pnl: float, unrealized_pnl: float, equity: float) -> float:
    """Today's loss as a percent of the equity the day started with (0 when in profit).

    Open losses count, open gains do not: a drawdown must stop entries before it is realized,
    and paper gains must not buy room for more losses.
    """
    pnl = day_realized_pnl + min(unrealized_pnl, 0.0)
    if pnl >= 0:
        return 0.0
    start_equity = equity - pnl
    if start_equity <= 0:
        return 100.0
    return -pnl / start_equity * 100.0


def check_exit_order(amount: float, held: float, price: float) -> RiskDecision:
    """The checks an exit still passes. Limits never block it (closing only reduces risk);
    what does is a sell that cannot be right: nothing to sell, more than is held (spot, long
    only: that would open a short), or no price to value it at."""
    if amount <= 0:
        return RiskDecision(False, "exit_amount", "nothing to sell")
    if amount > held * (1 + 1e-9):
        return RiskDecision(
            False, "exit_exceeds_position", f"sell {amount:.8f} exceeds the {held:.8f} held"
        )
    if price <= 0:
        return RiskDecision(False, "exit_price", "no price for the exit")
    return RiskDecision.allow()
