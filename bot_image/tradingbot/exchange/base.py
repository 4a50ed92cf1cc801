"""What the runtime needs from an exchange and a price feed, independent of ccxt."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from tradingbot.ledger import Execution

FILLED = "filled"
OPEN = "open"
REJECTED = "rejected"
CANCELED = "canceled"


@dataclass(frozen=True)
class OrderResult:
    """The outcome of placing or looking up an order.

    `rejected` carries the ccxt error class name in `error_type` (InsufficientFunds,
    InvalidOrder, ...): a refused order is an event to record, not a reason to crash.
    """

    status: str  # filled | open | rejected | canceled
    client_order_id: str
    order_id: str = ""
    execution: Execution | None = None
    error_type: str = ""
    message: str = ""


# Asked before an order is sent again: the kill switch or the Lease may have changed meanwhile.
Gate = Callable[[], bool] | None


class Exchange(Protocol):
    mode: str

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def market_order(
        self, symbol: str, side: str, amount: float, client_order_id: str, *, may_send: Gate = None
    ) -> OrderResult:
        """A market order. An exchange that retries asks `may_send` before sending again
        (the kill switch or the Lease may have changed meanwhile)."""
        ...

    async def fetch_order(
        self, symbol: str, order_id: str = "", client_order_id: str = ""
    ) -> OrderResult | None: ...

    async def cancel_order(self, symbol: str, order_id: str) -> OrderResult: ...

    async def fetch_balances(self) -> dict[str, float]: ...

    def amount_to_precision(self, symbol: str, amount: float) -> float: ...


class PriceFeed(Protocol):
    name: str

    async def warmup(self, symbols: Sequence[str], length: int) -> dict[str, list[float]]:
        """`length` past closes per symbol, oldest first, ending with the current price."""
        ...

    async def next_prices(self, symbols: Sequence[str]) -> Mapping[str, float]:
        """The price of each symbol one step later."""
        ...

    async def close(self) -> None: ...


class FeedUnavailableError(Exception):
    """The feed cannot deliver prices (network, unknown symbol)."""
