"""Error policy by ccxt's exception hierarchy.

NetworkError family (RequestTimeout, ExchangeNotAvailable, DDoSProtection/RateLimitExceeded,
InvalidNonce): transient, retried with bounded exponential backoff (tenacity).
InsufficientFunds and InvalidOrder (OrderNotFound excepted where a lookup expects it): the
exchange refused this order; recorded as an event and counted, never a crash.
Every other ExchangeError (AuthenticationError, BadSymbol, NotSupported, ...): not retried;
raised to the caller, which skips the tick and keeps running.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

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


@dataclass(frozen=True)
class RetryPolicy:
    """The retry policy of exchange calls: RETRY-class errors are tried again, `attempts`
    calls in all, after exponential pauses (base_delay * 2**n, capped at max_delay, plus up to
    half a base_delay of jitter so that many bots do not retry in lockstep). Every other error
    propagates as it is; when the attempts are used up, the last error becomes an
    ExchangeCallError."""

    attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 8.0
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep

    def retrying(self, method: str) -> AsyncRetrying:
        def exhausted(state: RetryCallState) -> NoReturn:
            assert state.outcome is not None
            exc = state.outcome.exception()
            assert exc is not None
            raise ExchangeCallError(method, type(exc).__name__, str(exc)) from exc

        return AsyncRetrying(
            retry=retry_if_exception(lambda exc: classify(exc) == RETRY),
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential_jitter(
                multiplier=self.base_delay, max=self.max_delay, jitter=self.base_delay / 2
            ),
            sleep=self.sleep,
            retry_error_callback=exhausted,
        )


async def call_with_retry(
    method: str, fn: Callable[[], Awaitable[T]], sink: ErrorSink, policy: RetryPolicy
) -> T:
    """Call `fn`, timing every attempt and retrying the network family (`policy`);
    RECORD-class errors propagate unchanged (the caller turns them into an event), others
    become ExchangeCallError."""

    async def attempt() -> T:
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
            if kind == RAISE:
                raise ExchangeCallError(method, type(exc).__name__, str(exc)) from exc
            raise
        sink.exchange_request(method, time.monotonic() - started)
        return result

    result: T = await policy.retrying(method)(attempt)
    return result
