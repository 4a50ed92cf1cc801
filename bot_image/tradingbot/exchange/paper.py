"""Simulated spot exchange: market orders fill at once at the current price.

A buy pays `price * (1 + slippage)`, a sell receives `price * (1 - slippage)`; the fee is a
fraction of the fill's cost, charged in the quote currency. Balances start from a wallet and
are restored from the bot's state after a restart, so simulated PnL survives restarts.
Refusals use ccxt's error names (InsufficientFunds, InvalidOrder) so metrics and logs read the
same in every mode.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping
from decimal import ROUND_DOWN, Context, Decimal

from tradingbot.exchange.base import FILLED, REJECTED, Gate, OrderResult
from tradingbot.ledger import Execution, split_symbol
from tradingbot_api.constants import ExchangeMode
from tradingbot_api.times import utc_now_iso

EIGHT_DECIMALS = Decimal("1e-8")
WIDE = Context(prec=400)  # any finite float fits: 1e308 has 309 digits, plus 8 decimals


class PaperExchange:
    mode = ExchangeMode.PAPER

    def __init__(
        self,
        balances: Mapping[str, float],
        *,
        fee_rate: float = 0.001,
        slippage_pct: float = 0.05,
        clock: Callable[[], str] = utc_now_iso,
    ) -> None:
        self.balances: dict[str, float] = {k: float(v) for k, v in balances.items()}
        self.fee_rate = fee_rate
        self.slippage = slippage_pct / 100.0
        self.prices: dict[str, float] = {}
        self.realized_pnl = 0.0
        self.fees_paid = 0.0
        self._cost_basis: dict[str, float] = {}  # base asset -> quote spent on what is held
        self._clock = clock
        self._ids = itertools.count(1)
        self._orders: dict[str, OrderResult] = {}

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def update_prices(self, prices: Mapping[str, float]) -> None:
        self.prices.update(prices)

    def amount_to_precision(self, symbol: str, amount: float) -> float:
        # Eight decimals, truncated, like most spot markets; never round up past the balance.
        # In decimal: `int(amount * 1e8)` would cut 0.29 to 0.28999999 and leave dust behind
        # every sell of a whole position.
        if not math.isfinite(amount) or amount <= 0:
            return 0.0
        return float(
            Decimal(repr(amount)).quantize(EIGHT_DECIMALS, rounding=ROUND_DOWN, context=WIDE)
        )

    def _reject(self, coid: str, error_type: str, message: str) -> OrderResult:
        return OrderResult(
            status=REJECTED, client_order_id=coid, error_type=error_type, message=message
        )

    async def market_order(
        self, symbol: str, side: str, amount: float, client_order_id: str, *, may_send: Gate = None
    ) -> OrderResult:
        # One attempt only: nothing to ask `may_send`.
        base, quote = split_symbol(symbol)
        price = self.prices.get(symbol)
        if price is None or price <= 0:
            return self._reject(client_order_id, "BadSymbol", f"no price for {symbol}")
        if side not in ("buy", "sell") or amount <= 0:
            return self._reject(
                client_order_id, "InvalidOrder", f"invalid order {side} {amount} {symbol}"
            )
        fill_price = price * (1 + self.slippage) if side == "buy" else price * (1 - self.slippage)
        cost = amount * fill_price
        fee = cost * self.fee_rate
        if side == "buy":
            if cost + fee > self.balances.get(quote, 0.0) + 1e-9:
                return self._reject(
                    client_order_id,
                    "InsufficientFunds",
                    f"need {cost + fee:.8f} {quote}, have {self.balances.get(quote, 0.0):.8f}",
                )
            self.balances[quote] = self.balances.get(quote, 0.0) - cost - fee
            self.balances[base] = self.balances.get(base, 0.0) + amount
            self._cost_basis[base] = self._cost_basis.get(base, 0.0) + cost + fee
        else:
            held = self.balances.get(base, 0.0)
            if amount > held + 1e-12:
                return self._reject(
                    client_order_id,
                    "InsufficientFunds",
                    f"need {amount:.8f} {base}, have {held:.8f}",
                )
            basis = self._cost_basis.get(base, 0.0) * (amount / held if held else 0.0)
            self._cost_basis[base] = self._cost_basis.get(base, 0.0) - basis
            self.balances[base] = held - amount
            if self.balances[base] <= 1e-12:
                self.balances.pop(base)
                self._cost_basis.pop(base, None)
            self.balances[quote] = self.balances.get(quote, 0.0) + cost - fee
            self.realized_pnl += cost - fee - basis
        self.fees_paid += fee
        order_id = f"paper-{next(self._ids)}"
        result = OrderResult(
            status=FILLED,
            client_order_id=client_order_id,
            order_id=order_id,
            execution=Execution(
                symbol=symbol,
                side=side,
                amount=amount,
                price=fill_price,
                cost=cost,
                fee=fee,
                fee_currency=quote,
                order_id=order_id,
                client_order_id=client_order_id,
                time=self._clock(),
            ),
        )
        self._orders[order_id] = result
        return result

    async def fetch_order(
        self, symbol: str, order_id: str = "", client_order_id: str = ""
    ) -> OrderResult | None:
        if order_id:
            return self._orders.get(order_id)
        return next(
            (o for o in self._orders.values() if o.client_order_id == client_order_id), None
        )

    async def cancel_order(self, symbol: str, order_id: str) -> OrderResult:
        # Paper market orders are filled before anyone could cancel them.
        return self._reject("", "OrderNotFound", f"order {order_id} is not open")

    async def fetch_balances(self) -> dict[str, float]:
        return dict(self.balances)

    def restore_cost_basis(self, basis: Mapping[str, float]) -> None:
        """Cost basis per base asset after a restart (from the restored positions)."""
        self._cost_basis = dict(basis)
