"""Rate limits of what the bot reports: status writes (tradingbot.throttle.plan_status_write,
and the StatusReporter built on it) and error events per type."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tradingbot.status import StatusReporter
from tradingbot.throttle import (
    MAX_ERROR_TYPE_LENGTH,
    MAX_ERROR_TYPES,
    ErrorBudget,
    ErrorThrottle,
    StatusWrite,
    admit_error,
    error_type_key,
    plan_status_write,
    summary_due,
)

NOW, LATER, NONE = StatusWrite.NOW, StatusWrite.LATER, StatusWrite.NONE


@pytest.mark.parametrize(
    ("now", "last", "in_flight", "changed", "urgent", "expected"),
    [
        (100.0, None, False, False, False, NOW),  # never written: write the first
        (100.0, None, True, True, False, LATER),  # ... unless one is in flight
        (100.0, 95.0, False, False, False, NONE),  # nothing new
        (100.0, 95.0, False, True, False, LATER),  # a change inside 10 s waits (coalesced)
        (100.0, 90.0, False, True, False, NOW),  # ... and goes once 10 s have passed
        (100.0, 89.0, True, True, False, LATER),  # never two in flight
        (100.0, 40.0, False, False, False, NOW),  # PnL refresh after 60 s
        (100.0, 41.0, False, False, False, NONE),
        (100.0, 99.5, False, False, True, LATER),  # urgent, but keeps 1 s apart
        (100.0, 99.0, False, False, True, NOW),  # urgent: past the 10 s limit
        (100.0, 99.0, True, False, True, LATER),  # urgent waits for the write in flight
        (100.0, None, False, True, True, NOW),
    ],
    ids=[
        "first",
        "first, one in flight",
        "unchanged",
        "changed within the interval",
        "changed after the interval",
        "changed, one in flight",
        "refresh due",
        "refresh not due",
        "urgent right after a write",
        "urgent a second after a write",
        "urgent, one in flight",
        "urgent first",
    ],
)
def test_status_writes_are_rate_limited(
    now: float,
    last: float | None,
    in_flight: bool,
    changed: bool,
    urgent: bool,
    expected: StatusWrite,
) -> None:
    plan = plan_status_write(
        now, last_write=last, in_flight=in_flight, changed=changed, urgent=urgent
    )
    assert plan == expected


def status(trades: int, mode: str = "", flat: bool = True, pnl: float = 0.0) -> dict[str, Any]:
    return {
        "status": {
            "positions": {"open": 0, "symbols": [], "notional": 0.0},
            "pnl": {"realized": pnl, "unrealized": 0.0},
            "trades": {"total": trades, "wins": 0},
            "state": {"checkpointSeq": trades},
            "killSwitch": {"mode": mode, "observedAt": "t" if mode else None, "flat": flat},
        }
    }


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_the_reporter_coalesces_changes_and_sends_kill_switch_reports_at_once() -> None:
    clock = Clock()
    written: list[dict[str, Any]] = []
    release = asyncio.Event()
    release.set()

    async def patch(body: dict[str, Any]) -> None:
        await release.wait()
        written.append(body)

    reporter = StatusReporter(patch, clock=clock)

    async def settle() -> None:
        for _ in range(5):
            await asyncio.sleep(0)

    assert reporter.offer(status(1)) == NOW
    await settle()
    for trades in range(2, 20):  # a fill every half second for 9 s
        clock.now += 0.5
        reporter.offer(status(trades))
        await settle()
    assert [b["status"]["trades"]["total"] for b in written] == [1]
    clock.now += 1.0  # 10 s after the first write: the newest state, once
    reporter.offer(status(19, pnl=5.0))
    await settle()
    assert [b["status"]["trades"]["total"] for b in written] == [1, 19]

    clock.now += 2.0
    reporter.offer(status(19, mode="drain", flat=False))  # the kill switch: at once
    await settle()
    assert written[-1]["status"]["killSwitch"]["mode"] == "drain"

    clock.now += 2.0
    assert reporter.offer(status(20, mode="drain", flat=False)) == LATER  # not urgent
    # Flat arrives while a write is in flight: it goes right after, not 10 s later.
    release.clear()
    clock.now += 8.0
    assert reporter.offer(status(21, mode="drain", flat=False)) == NOW  # hangs in flight
    await settle()
    clock.now += 0.1
    assert reporter.offer(status(22, mode="drain", flat=True)) == LATER
    await settle()
    assert len(written) == 3
    release.set()
    await settle()
    assert [b["status"]["trades"]["total"] for b in written[-2:]] == [21, 22]
    assert written[-1]["status"]["killSwitch"]["flat"] is True


async def test_a_process_without_the_lease_writes_no_status() -> None:
    written: list[dict[str, Any]] = []

    async def patch(body: dict[str, Any]) -> None:
        written.append(body)

    reporter = StatusReporter(patch, may_write=lambda: False)
    reporter.offer(status(1, mode="true"))
    await reporter.push(status(2, mode="true"))
    assert written == []


async def test_a_failed_write_is_sent_again_with_the_next_chance() -> None:
    clock = Clock()
    calls: list[int] = []

    async def patch(body: dict[str, Any]) -> None:
        calls.append(body["status"]["trades"]["total"])
        if len(calls) == 1:
            raise OSError("API down")

    reporter = StatusReporter(patch, clock=clock)
    reporter.offer(status(1))
    await asyncio.sleep(0.01)
    clock.now += 10
    reporter.offer(status(1))  # unchanged, but the first never arrived
    await asyncio.sleep(0.01)
    assert calls == [1, 1]


@pytest.mark.parametrize(
    ("budget", "now", "send", "after", "accounted"),
    [
        (None, 100.0, True, ErrorBudget(100.0), 0),
        (ErrorBudget(90.0), 100.0, False, ErrorBudget(90.0, 1), 0),
        (ErrorBudget(90.0, 4), 100.0, False, ErrorBudget(90.0, 5), 0),
        (ErrorBudget(40.0, 4), 100.0, True, ErrorBudget(100.0), 4),  # carries the count
        (ErrorBudget(40.0), 100.0, True, ErrorBudget(100.0), 0),
    ],
)
def test_one_error_report_per_type_and_minute(
    budget: ErrorBudget | None, now: float, send: bool, after: ErrorBudget, accounted: int
) -> None:
    assert admit_error(budget, now, 60.0) == (send, after, accounted)


@pytest.mark.parametrize(
    ("budget", "now", "due"),
    [
        (ErrorBudget(40.0, 3), 100.0, True),
        (ErrorBudget(41.0, 3), 100.0, False),
        (ErrorBudget(0.0, 0), 100.0, False),
    ],
)
def test_held_back_errors_are_summarised_after_a_quiet_minute(
    budget: ErrorBudget, now: float, due: bool
) -> None:
    assert summary_due(budget, now, 60.0) == due


def test_the_throttle_counts_per_type_and_stays_bounded() -> None:
    throttle = ErrorThrottle(interval=60.0)
    assert throttle.admit("exchange.NetworkError", 0.0) == (True, 0)
    assert throttle.admit("exchange.NetworkError", 1.0) == (False, 0)
    assert throttle.admit("exchange.NetworkError", 2.0) == (False, 0)
    assert throttle.admit("state_write.StateWriteError", 2.0) == (True, 0)  # another type
    assert list(throttle.summaries(30.0)) == []
    assert list(throttle.summaries(61.0)) == [("exchange.NetworkError", 2)]
    assert list(throttle.summaries(200.0)) == []  # accounted for
    for i in range(MAX_ERROR_TYPES * 3):
        throttle.admit(f"exchange.Error{i}", 300.0 + i)
    assert len(throttle._budgets) == MAX_ERROR_TYPES


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ("exchange.NetworkError", "exchange.NetworkError"),
        ("exchange.Bad Thing<script>", "exchange.BadThingscript"),
        ("", "Error"),
        ("x" * 500, "x" * MAX_ERROR_TYPE_LENGTH),
    ],
)
def test_error_types_are_bounded_names(raw: str, key: str) -> None:
    assert error_type_key(raw) == key
