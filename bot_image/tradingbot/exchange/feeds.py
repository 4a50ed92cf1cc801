"""Price feeds: a deterministic seeded random walk per profile, and live ccxt tickers."""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

from tradingbot.exchange.base import FeedUnavailableError

# Standard deviation of the log return per step. The ordering stable < medium < volatile <
# meme is part of the contract (tested); meme also jumps now and then.
PROFILE_VOLATILITY: dict[str, float] = {
    "stable": 0.0015,
    "medium": 0.004,
    "volatile": 0.01,
    "meme": 0.025,
}
MEME_JUMP_PROBABILITY = 0.02
MEME_JUMP_SIZE = 0.08
# Pull towards the anchor price per step, so a long walk neither explodes nor dies out.
MEAN_REVERSION = 0.002

START_PRICES: dict[str, float] = {
    "BTC": 60_000.0,
    "ETH": 3_000.0,
    "SOL": 150.0,
    "BNB": 550.0,
    "XRP": 0.6,
    "ADA": 0.45,
    "DOGE": 0.15,
    "SHIB": 0.000025,
    "PEPE": 0.00001,
    "USDC": 1.0,
    "DAI": 1.0,
    "LTC": 80.0,
    "DOT": 7.0,
    "AVAX": 35.0,
    "LINK": 15.0,
}
DEFAULT_START_PRICE = 100.0


def _rng(seed: int, profile: str, symbol: str) -> random.Random:
    # sha256, not hash(): Python salts str hashes per process, which would break determinism.
    digest = hashlib.sha256(f"{seed}:{profile}:{symbol}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def start_price(symbol: str) -> float:
    return START_PRICES.get(symbol.split("/", 1)[0].upper(), DEFAULT_START_PRICE)


class SeededPriceFeed:
    """A reproducible random walk per symbol: same (profile, seed, symbol) → same prices.

    `anchors` (e.g. the mark prices of restored positions) make the walk continue from where
    a previous process left off instead of jumping back to the table's start price.
    """

    name = "seeded"

    def __init__(
        self, profile: str, seed: int = 0, anchors: Mapping[str, float] | None = None
    ) -> None:
        if profile not in PROFILE_VOLATILITY:
            raise ValueError(f"unknown profile {profile!r}")
        self.profile = profile
        self.seed = seed
        self.volatility = PROFILE_VOLATILITY[profile]
        self._anchors = dict(anchors or {})
        self._rngs: dict[str, random.Random] = {}
        self._log_price: dict[str, float] = {}
        self._log_anchor: dict[str, float] = {}

    def _ensure(self, symbol: str) -> None:
        if symbol not in self._rngs:
            anchor = self._anchors.get(symbol) or start_price(symbol)
            self._rngs[symbol] = _rng(self.seed, self.profile, symbol)
            self._log_anchor[symbol] = math.log(anchor)
            self._log_price[symbol] = math.log(anchor)

    def step(self, symbol: str) -> float:
        """Advance `symbol` one step and return its new price."""
        self._ensure(symbol)
        rng = self._rngs[symbol]
        x = self._log_price[symbol]
        drift = MEAN_REVERSION * (self._log_anchor[symbol] - x)
        x += drift + rng.gauss(0.0, self.volatility)
        if self.profile == "meme" and rng.random() < MEME_JUMP_PROBABILITY:
            x += MEME_JUMP_SIZE if rng.random() < 0.5 else -MEME_JUMP_SIZE
        self._log_price[symbol] = x
        return math.exp(x)

    async def warmup(self, symbols: Sequence[str], length: int) -> dict[str, list[float]]:
        """`length` closes per symbol; the walk continues from the last one."""
        history: dict[str, list[float]] = {}
        for symbol in symbols:
            self._ensure(symbol)
            closes = [math.exp(self._log_price[symbol])]
            closes.extend(self.step(symbol) for _ in range(max(0, length - 1)))
            history[symbol] = closes
        return history

    async def next_prices(self, symbols: Sequence[str]) -> dict[str, float]:
        return {symbol: self.step(symbol) for symbol in symbols}

    async def close(self) -> None:
        return None


class CcxtTickerFeed:
    """Last prices from a real exchange's public API (no credentials needed)."""

    name = "live"

    def __init__(
        self,
        exchange_id: str,
        timeframe: str = "1m",
        *,
        timeout_ms: int = 10_000,
        exchange: Any = None,
    ) -> None:
        self.exchange_id = exchange_id
        self.timeframe = timeframe
        self._timeout_ms = timeout_ms
        self._exchange = exchange
        self._owns_exchange = exchange is None  # a shared client is closed by its owner

    def _client(self) -> Any:
        if self._exchange is None:
            import ccxt.async_support as ccxt  # lazy: only live feeds pay for the import

            cls = getattr(ccxt, self.exchange_id, None)
            if cls is None:
                raise FeedUnavailableError(f"ccxt has no exchange {self.exchange_id!r}")
            self._exchange = cls(
                {
                    "enableRateLimit": True,
                    "timeout": self._timeout_ms,
                    "options": {"defaultType": "spot"},
                }
            )
        return self._exchange

    async def warmup(self, symbols: Sequence[str], length: int) -> dict[str, list[float]]:
        exchange = self._client()
        history: dict[str, list[float]] = {}
        try:
            for symbol in symbols:
                candles = await exchange.fetch_ohlcv(symbol, self.timeframe, limit=length)
                history[symbol] = [float(c[4]) for c in candles if c and c[4] is not None]
                if not history[symbol]:
                    raise FeedUnavailableError(f"no candles for {symbol}")
        except FeedUnavailableError:
            raise
        except Exception as exc:
            raise FeedUnavailableError(f"{self.exchange_id}: {type(exc).__name__}: {exc}") from exc
        return history

    async def next_prices(self, symbols: Sequence[str]) -> dict[str, float]:
        exchange = self._client()
        try:
            tickers = await asyncio.gather(*(exchange.fetch_ticker(s) for s in symbols))
        except Exception as exc:
            raise FeedUnavailableError(f"{self.exchange_id}: {type(exc).__name__}: {exc}") from exc
        prices: dict[str, float] = {}
        for symbol, ticker in zip(symbols, tickers, strict=True):
            price = ticker.get("last") or ticker.get("close")
            if price:
                prices[symbol] = float(price)
        return prices

    async def close(self) -> None:
        if self._exchange is not None and self._owns_exchange:
            await self._exchange.close()
