"""A real exchange through ccxt (async) for `sandbox` and `live` modes.

Market orders carry a clientOrderId chosen by the bot. A network failure while placing one
is ambiguous (the order may have reached the exchange), so before sending it again the bot
asks the exchange for that clientOrderId: an order is never sent twice.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from typing import Any

from tradingbot.exchange.base import CANCELED, FILLED, OPEN, REJECTED, Gate, OrderResult
from tradingbot.exchange.errors import (
    RAISE,
    RECORD,
    ErrorSink,
    ExchangeCallError,
    RetryPolicy,
    call_with_retry,
    classify,
)
from tradingbot.ledger import Execution, split_symbol
from tradingbot_api.constants import ExchangeMode
from tradingbot_api.times import utc_now_iso

# Spot only: no margin, futures or currency endpoints (they need other permissions, cost
# requests at start, and a spot bot has no use for them).
EXCHANGE_OPTIONS: dict[str, dict[str, Any]] = {
    "binance": {
        "defaultType": "spot",
        "fetchMarkets": {"types": ["spot"]},
        "fetchCurrencies": False,
        "fetchMargins": False,
    },
}
DEFAULT_OPTIONS: dict[str, Any] = {"defaultType": "spot"}


def parse_ccxt_order(order: Mapping[str, Any], client_order_id: str) -> OrderResult:
    """A ccxt unified order structure as an OrderResult (pure)."""
    status = order.get("status")
    order_id = str(order.get("id") or "")
    coid = str(order.get("clientOrderId") or client_order_id)
    filled = float(order.get("filled") or 0.0)
    if status == "open" or (status is None and filled == 0):
        return OrderResult(status=OPEN, client_order_id=coid, order_id=order_id)
    if filled <= 0:
        outcome = REJECTED if status == "rejected" else CANCELED
        return OrderResult(
            status=outcome,
            client_order_id=coid,
            order_id=order_id,
            error_type="OrderRejected" if outcome == REJECTED else "",
            message=f"order {order_id} {status} without a fill",
        )
    symbol = str(order["symbol"])
    average = order.get("average") or order.get("price")
    cost = order.get("cost")
    price = float(average) if average else float(cost or 0.0) / filled
    fee, fee_currency = _fee(order, symbol)
    return OrderResult(
        status=FILLED,
        client_order_id=coid,
        order_id=order_id,
        execution=Execution(
            symbol=symbol,
            side=str(order["side"]),
            amount=filled,
            price=price,
            cost=float(cost) if cost else filled * price,
            fee=fee,
            fee_currency=fee_currency,
            order_id=order_id,
            client_order_id=coid,
            time=str(order.get("datetime") or utc_now_iso()),
        ),
    )


def _fee(order: Mapping[str, Any], symbol: str) -> tuple[float, str]:
    fees = [f for f in (order.get("fees") or []) if f and f.get("cost") is not None]
    if not fees and order.get("fee") and order["fee"].get("cost") is not None:
        fees = [order["fee"]]
    if not fees:
        return 0.0, split_symbol(symbol)[1]
    currency = str(fees[0].get("currency") or split_symbol(symbol)[1])
    return sum(float(f["cost"]) for f in fees if f.get("currency", currency) == currency), currency


class LiveExchange:
    """ccxt exchange class wrapped with the error policy and request metrics."""

    def __init__(
        self,
        exchange_id: str,
        mode: str,
        *,
        api_key: str,
        secret: str,
        sink: ErrorSink,
        api_urls: Mapping[str, str] | None = None,
        options: Mapping[str, Any] | None = None,
        attempts: int = 4,
        base_delay: float = 0.5,
        timeout_ms: int = 10_000,
    ) -> None:
        if mode not in (ExchangeMode.SANDBOX, ExchangeMode.LIVE):
            raise ValueError(f"LiveExchange is for sandbox or live mode, not {mode!r}")
        self.exchange_id = exchange_id
        self.mode = mode
        self._credentials = {"apiKey": api_key, "secret": secret}
        self._sink = sink
        self._api_urls = dict(api_urls or {})
        self._options = {
            **DEFAULT_OPTIONS,
            **EXCHANGE_OPTIONS.get(exchange_id, {}),
            **(options or {}),
        }
        self._retry = RetryPolicy(attempts=attempts, base_delay=base_delay)
        self._timeout_ms = timeout_ms
        self.client: Any = None

    async def open(self) -> None:
        """Create the ccxt client and load the markets. May be called again after a failure
        (the runtime retries): every failed attempt closes the client it created, so none
        is left with an open HTTP session."""
        import ccxt.async_support as ccxt  # lazy: ~0.8 s, paid only by real exchanges

        cls = getattr(ccxt, self.exchange_id, None)
        if cls is None:
            raise ValueError(f"ccxt has no exchange {self.exchange_id!r}")
        await self.close()  # a client from an earlier open
        client = cls(
            {
                **self._credentials,
                "enableRateLimit": True,
                "timeout": self._timeout_ms,
                "options": dict(self._options),
            }
        )
        try:
            if self.mode == ExchangeMode.SANDBOX:
                # Must come right after construction: it swaps urls['api'] for urls['test'].
                client.set_sandbox_mode(True)
            if self._api_urls:
                client.urls["api"] = {**client.urls["api"], **self._api_urls}
            await self._call("load_markets", lambda: client.load_markets())
        except BaseException:
            with contextlib.suppress(Exception):
                await client.close()
            raise
        self.client = client

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            await client.close()

    async def _call(self, method: str, fn: Any) -> Any:
        return await call_with_retry(method, fn, self._sink, self._retry)

    def amount_to_precision(self, symbol: str, amount: float) -> float:
        return float(self.client.amount_to_precision(symbol, amount))

    async def fetch_price(self, symbol: str) -> float:
        ticker = await self._call("fetch_ticker", lambda: self.client.fetch_ticker(symbol))
        return float(ticker.get("last") or ticker.get("close"))

    async def market_order(
        self, symbol: str, side: str, amount: float, client_order_id: str, *, may_send: Gate = None
    ) -> OrderResult:
        async for attempt in self._retry.retrying("create_order"):
            with attempt:
                if attempt.retry_state.attempt_number > 1:
                    # The failed request may have reached the exchange: look before sending
                    # again.
                    existing = await self.fetch_order(symbol, client_order_id=client_order_id)
                    if existing is not None:
                        return existing
                    if may_send is not None and not may_send():
                        # A retry is a new order as far as the kill switch and the Lease go.
                        # The intent stays recorded: reconciling by clientOrderId settles it.
                        raise ExchangeCallError(
                            "create_order", "OrderHeldBack", "not sent again: no longer allowed"
                        )
                return await self._send_market_order(symbol, side, amount, client_order_id)
        raise AssertionError("unreachable")  # the policy returns, raises or retries

    async def _send_market_order(
        self, symbol: str, side: str, amount: float, client_order_id: str
    ) -> OrderResult:
        """One attempt: a refusal is a REJECTED result; a RETRY-class error propagates as it
        is (the policy retries it), any other as ExchangeCallError."""
        started = time.monotonic()
        try:
            order = await self.client.create_order(
                symbol, "market", side, amount, None, {"clientOrderId": client_order_id}
            )
        except Exception as exc:
            self._sink.exchange_request("create_order", time.monotonic() - started)
            kind = classify(exc)
            if kind == RECORD:
                return OrderResult(
                    status=REJECTED,
                    client_order_id=client_order_id,
                    error_type=type(exc).__name__,
                    message=str(exc),
                )
            self._sink.exchange_error(type(exc).__name__)
            if kind == RAISE:
                raise ExchangeCallError("create_order", type(exc).__name__, str(exc)) from exc
            raise
        self._sink.exchange_request("create_order", time.monotonic() - started)
        return parse_ccxt_order(order, client_order_id)

    async def fetch_order(
        self, symbol: str, order_id: str = "", client_order_id: str = ""
    ) -> OrderResult | None:
        import ccxt.async_support as ccxt

        params = {} if order_id else {"clientOrderId": client_order_id}
        try:
            order = await self._call(
                "fetch_order", lambda: self.client.fetch_order(order_id or None, symbol, params)
            )
        except ccxt.OrderNotFound:
            return None
        return parse_ccxt_order(order, client_order_id)

    async def cancel_order(self, symbol: str, order_id: str) -> OrderResult:
        try:
            order = await self._call(
                "cancel_order", lambda: self.client.cancel_order(order_id, symbol)
            )
        except Exception as exc:
            if classify(exc) != RECORD:
                raise
            return OrderResult(
                status=REJECTED,
                client_order_id="",
                order_id=order_id,
                error_type=type(exc).__name__,
                message=str(exc),
            )
        result = parse_ccxt_order(order, "")
        if result.status == OPEN:
            # Some exchanges answer a cancel with the order as it was before; it is going.
            return OrderResult(
                status=CANCELED, client_order_id=result.client_order_id, order_id=result.order_id
            )
        return result

    async def fetch_balances(self) -> dict[str, float]:
        balance = await self._call("fetch_balance", lambda: self.client.fetch_balance())
        totals = balance.get("total") or {}
        return {str(k): float(v) for k, v in totals.items() if v}
