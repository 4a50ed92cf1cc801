"""Fixtures for the audit log tests: a controllable clock, an event builder, a writer factory."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tradingbot_audit import AuditWriter, open_writer


class FakeClock:
    """An injectable clock: tests move time forward explicitly (day rotation, retention)."""

    def __init__(self, start: datetime = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


EventFactory = Callable[..., dict[str, Any]]
WriterFactory = Callable[..., AuditWriter]


def build_event(**overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_type": "restart",
        "severity": "info",
        "source": "operator",
        "target": "stable",
        "action": "restart_completed",
        "details": {"durationSeconds": 4.2},
        "user_id": "system:serviceaccount:trading:operator",
        "namespace": "trading",
    }
    event.update(overrides)
    return event


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def event() -> EventFactory:
    return build_event


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    return tmp_path / "audit"


@pytest.fixture
def writer_factory(log_dir: Path, clock: FakeClock) -> Iterator[WriterFactory]:
    """Opens writers on the test's log_dir with its clock; closes whatever is left open."""
    opened: list[AuditWriter] = []

    def make(**kwargs: Any) -> AuditWriter:
        kwargs.setdefault("clock", clock)
        writer = open_writer(kwargs.pop("log_dir", log_dir), **kwargs)
        opened.append(writer)
        return writer

    yield make
    for writer in opened:
        writer.close()


FILL_TYPES = ("trade", "trade", "position_change", "config_change", "restart", "halt")
Filler = Callable[..., None]


def _fill(writer: AuditWriter, count: int, **overrides: Any) -> None:
    """Append `count` varied events in one batch (one fsync), fast enough for 20k events."""
    writer.append_many(
        build_event(
            **{
                "event_type": FILL_TYPES[i % len(FILL_TYPES)],
                "target": f"bot-{i % 4}",
                "details": {"i": i},
                **overrides,
            }
        )
        for i in range(count)
    )


@pytest.fixture
def fill() -> Filler:
    return _fill
