"""Exchange access: a paper simulator, real exchanges through ccxt, and price feeds.

Nothing here imports ccxt at module import time; the classes that need it import it when
they first talk to an exchange.
"""

from tradingbot.exchange.base import (
    CANCELED,
    FILLED,
    OPEN,
    REJECTED,
    Exchange,
    FeedUnavailableError,
    OrderResult,
    PriceFeed,
)
from tradingbot.exchange.errors import ExchangeCallError, RetryPolicy, call_with_retry, classify
from tradingbot.exchange.feeds import PROFILE_VOLATILITY, CcxtTickerFeed, SeededPriceFeed
from tradingbot.exchange.live import LiveExchange, parse_ccxt_order
from tradingbot.exchange.paper import PaperExchange

__all__ = [
    "CANCELED",
    "FILLED",
    "OPEN",
    "PROFILE_VOLATILITY",
    "REJECTED",
    "CcxtTickerFeed",
    "Exchange",
    "ExchangeCallError",
    "FeedUnavailableError",
    "LiveExchange",
    "OrderResult",
    "PaperExchange",
    "PriceFeed",
    "RetryPolicy",
    "SeededPriceFeed",
    "call_with_retry",
    "classify",
    "parse_ccxt_order",
]
