"""Rate limits of what the bot reports, as pure functions: status writes and error events.

Status: the operator writes the same object with resourceVersion preconditions, and a
thousand bots share one API server, so a bot writes its status when something a user would
see changed, at most once per STATUS_MIN_INTERVAL_SECONDS (later changes are coalesced into
the next write), refreshes drifting numbers (PnL) every STATUS_REFRESH_SECONDS, and never has
two writes in flight. Only an urgent report (the kill switch) skips the interval; it still
waits for a write in flight (then goes at once) and URGENT_SPACING_SECONDS after the last.

Errors: at most one audit event per error type per ERROR_REPORT_INTERVAL_SECONDS; the ones
held back are counted and the count travels with the next report of that type, or with a
summary once the interval has passed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Final

STATUS_MIN_INTERVAL_SECONDS: Final = 10.0
STATUS_REFRESH_SECONDS: Final = 60.0
# Even urgent writes keep this far apart, so a failing API is not retried on every tick.
URGENT_SPACING_SECONDS: Final = 1.0
ERROR_REPORT_INTERVAL_SECONDS: Final = 60.0
# Error types come from exception class names; the table stays bounded whatever arrives.
MAX_ERROR_TYPES: Final = 64
MAX_ERROR_TYPE_LENGTH: Final = 64


class StatusWrite(StrEnum):
    NOW = "now"  # write the current status now
    LATER = "later"  # a change waits: the interval or the write in flight does not allow it
    NONE = "none"  # nothing worth writing


def plan_status_write(
    now: float,
    *,
    last_write: float | None,
    in_flight: bool,
    changed: bool,
    urgent: bool = False,
    min_interval: float = STATUS_MIN_INTERVAL_SECONDS,
    refresh: float = STATUS_REFRESH_SECONDS,
    urgent_spacing: float = URGENT_SPACING_SECONDS,
) -> StatusWrite:
    """Whether to write the status now. `changed`: differs from the last written in what a
    user watches; `urgent`: the kill switch report changed."""
    refresh_due = last_write is None or now - last_write >= refresh
    if not (changed or urgent or refresh_due):
        return StatusWrite.NONE
    if in_flight:
        return StatusWrite.LATER
    elapsed = None if last_write is None else now - last_write
    if elapsed is None or elapsed >= min_interval:
        return StatusWrite.NOW
    if urgent and elapsed >= urgent_spacing:
        return StatusWrite.NOW
    return StatusWrite.LATER


@dataclass(frozen=True)
class ErrorBudget:
    """When an error type was last reported, and how many were held back since."""

    last_sent: float
    suppressed: int = 0


def admit_error(
    budget: ErrorBudget | None, now: float, interval: float = ERROR_REPORT_INTERVAL_SECONDS
) -> tuple[bool, ErrorBudget, int]:
    """(report this one?, the new budget, how many held-back errors this report accounts
    for)."""
    if budget is None or now - budget.last_sent >= interval:
        return True, ErrorBudget(now), budget.suppressed if budget else 0
    return False, replace(budget, suppressed=budget.suppressed + 1), 0


def summary_due(
    budget: ErrorBudget, now: float, interval: float = ERROR_REPORT_INTERVAL_SECONDS
) -> bool:
    """Held-back errors whose type saw no report for a whole interval are reported alone."""
    return budget.suppressed > 0 and now - budget.last_sent >= interval


def error_type_key(error_type: str) -> str:
    text = "".join(c for c in error_type if c.isalnum() or c in "._-")[:MAX_ERROR_TYPE_LENGTH]
    return text or "Error"


class ErrorThrottle:
    """Budgets per error type (a bounded table: the oldest type makes room for a new one)."""

    def __init__(self, interval: float = ERROR_REPORT_INTERVAL_SECONDS) -> None:
        self.interval = interval
        self._budgets: dict[str, ErrorBudget] = {}

    def admit(self, error_type: str, now: float) -> tuple[bool, int]:
        key = error_type_key(error_type)
        send, budget, suppressed = admit_error(self._budgets.get(key), now, self.interval)
        if key not in self._budgets and len(self._budgets) >= MAX_ERROR_TYPES:
            oldest = min(self._budgets, key=lambda k: self._budgets[k].last_sent)
            del self._budgets[oldest]
        self._budgets[key] = budget
        return send, suppressed

    def summaries(self, now: float) -> Iterator[tuple[str, int]]:
        """(error type, held-back count) for each type whose summary is due; each is then
        accounted for, as if reported now."""
        for key, budget in list(self._budgets.items()):
            if summary_due(budget, now, self.interval):
                self._budgets[key] = ErrorBudget(now)
                yield key, budget.suppressed
