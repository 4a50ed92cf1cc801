"""Error policy by ccxt's exception hierarchy.

NetworkError family (RequestTimeout, ExchangeNotAvailable, DDoSProtection/RateLimitExceeded,
InvalidNonce): transient, retried with bounded exponential backoff.
InsufficientFunds and InvalidOrder (OrderNotFound excepted where a lookup expects it): the
exchange refused this order; recorded as an event and counted, never a crash.
Every other ExchangeError (AuthenticationError, BadSymbol, NotSupported, ...): not retried;
raised to the caller, which skips the tick and keeps running.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

RETRY = "retry"
RECORD = "record"
RAISE = "raise"

T = TypeVar("T")


class ErrorSink(Protocol):
    def exchange_error(self, error_type: str) -> None: ...

    def exchange_request(self, method: str, seconds: float) -> None: ...


class ExchangeCallError(Exception):
    """A non-retryable exchange failure, or retries exhausted; `error_type` names the class."""

    def __init__(self, method: str, error_type: str, message: str) -> None:
        super().__init__(f"{method}: {error_type}: {message}")
        self.method = method
        self.error_type = error_type


def classify(exc: BaseException) -> str:
    """RETRY, RECORD or RAISE for an exception raised by a ccxt call."""
    import ccxt.async_support as ccxt  # lazy: ccxt costs ~0.8 s to import

    if isinstance(exc, ccxt.InsufficientFunds | ccxt.InvalidOrder):
        return RECORD
    if isinstance(exc, ccxt.NetworkError):
        return RETRY
    if isinstance(exc, asyncio.TimeoutError | ConnectionError):
        return RETRY
    return RAISE


def backoff_delays(
    attempts: int,
    *,
    base: float = 0.5,
    cap: float = 8.0,
    jitter: float = 0.1,
    rng: random.Random | None = None,
) -> list[float]:
    """Sleep before each retry: base * 2**i capped at `cap`, with a little jitter so that
    many bots do not retry in lockstep. `attempts` counts calls, so there are attempts-1
    delays."""
    rng = rng or random.Random()
    return [
        min(cap, base * 2**i) * (1 + rng.uniform(-jitter, jitter))
        for i in range(max(0, attempts - 1))
    ]


async def call_with_retry(
    method: str,
    fn: Callable[[], Awaitable[T]],
    sink: ErrorSink,
    *,
    attempts: int = 4,
    base_delay: float = 0.5,
    max_delay: float = 8.0,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> T:
    """Call `fn`, timing it and retrying the network family; RECORD-class errors propagate
    unchanged (the caller turns them into an event), others become ExchangeCallError."""
    delays = backoff_delays(attempts, base=base_delay, cap=max_delay)
    for attempt in range(attempts):
        started = time.monotonic()
        try:
            result = await fn()
        except Exception as exc:
            sink.exchange_request(method, time.monotonic() - started)
            kind = classify(exc)
            if kind == RECORD:
                # The caller turns a refusal into an event and counts it once, there.
                raise
            sink.exchange_error(type(exc).__name__)
            if kind == RETRY and attempt < attempts - 1:
                await sleep(delays[attempt])
                continue
            raise ExchangeCallError(method, type(exc).__name__, str(exc)) from exc
        sink.exchange_request(method, time.monotonic() - started)
        return result
    raise AssertionError("unreachable")  # the loop either returns or raises
