"""Restart rate limiting and failure back-off: plain functions of history and the clock."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

WINDOW = dt.timedelta(hours=1)
BACKOFF_BASE_SECONDS = 5.0
BACKOFF_MAX_SECONDS = 300.0


@dataclass(frozen=True)
class RateLimitVerdict:
    allowed: bool
    not_before: dt.datetime | None = None
    recent: int = 0


def recent_restarts(history: Iterable[dt.datetime], now: dt.datetime) -> list[dt.datetime]:
    """Restart start times still inside the one-hour window, oldest first."""
    return sorted(t for t in history if now - t < WINDOW)


def check_rate_limit(
    history: Iterable[dt.datetime], now: dt.datetime, max_per_hour: int
) -> RateLimitVerdict:
    """Whether one more restart may start now; if not, the earliest time it may.

    A deferred restart is never dropped: the caller keeps it pending until `not_before`.
    """
    recent = recent_restarts(history, now)
    if len(recent) < max_per_hour:
        return RateLimitVerdict(allowed=True, recent=len(recent))
    # The window frees a slot when the (len - max + 1)-th oldest restart ages out.
    freeing = recent[len(recent) - max_per_hour]
    return RateLimitVerdict(allowed=False, not_before=freeing + WINDOW, recent=len(recent))


def failure_backoff(attempts: int) -> dt.timedelta:
    """Delay before attempt `attempts + 1` after `attempts` failures (exponential, capped)."""
    seconds = BACKOFF_BASE_SECONDS * (2 ** max(attempts - 1, 0))
    return dt.timedelta(seconds=min(seconds, BACKOFF_MAX_SECONDS))


@dataclass(frozen=True)
class CoalescingWindow:
    """A quiet period after the latest change; the action runs when it closes."""

    first_requested_at: dt.datetime
    last_requested_at: dt.datetime
    quiet_seconds: float

    @property
    def closes_at(self) -> dt.datetime:
        return self.last_requested_at + dt.timedelta(seconds=self.quiet_seconds)

    def is_closed(self, now: dt.datetime) -> bool:
        return now >= self.closes_at
