"""Queries, summary and export."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tradingbot_audit import (
    AuditFilter,
    AuditWriter,
    export_json,
    query,
    summarize,
    summary,
)
from tradingbot_audit import reader as reader_module
from tradingbot_audit.files import iter_blocks_reverse, list_log_files
from tradingbot_audit.reader import parse_time_arg

Filler = Callable[..., None]
WriterFactory = Callable[..., AuditWriter]
EventFactory = Callable[..., dict[str, Any]]


@pytest.fixture
def mixed_log(
    log_dir: Path, writer_factory: WriterFactory, event: EventFactory, clock: Any
) -> Path:
    """Events from two users, two sources and two bots over three days, in several files."""
    writer = writer_factory(max_file_bytes=4096)
    for day in range(3):
        writer.append_many(
            event(
                event_type="config_change" if i % 3 == 0 else "trade",
                severity="warning" if i % 5 == 0 else "info",
                source="kubectl" if i % 2 else "bot",
                target="stable" if i % 4 < 2 else "meme",
                user_id="alice" if i % 2 else None,
                details={"day": day, "i": i},
            )
            for i in range(30)
        )
        clock.advance(days=1)
    writer.append(event(event_type="halt", severity="critical", source="plugin", user_id="bob"))
    writer.close()
    assert len(list_log_files(log_dir)) > 3
    return log_dir


def all_records(log_dir: Path) -> list[dict[str, Any]]:
    return query(log_dir, limit=None, oldest_first=True)


@pytest.mark.parametrize(
    "flt",
    [
        pytest.param(AuditFilter.build(event_type="trade"), id="by event type"),
        pytest.param(
            AuditFilter.build(event_type=["halt", "config_change"]), id="by any of two types"
        ),
        pytest.param(AuditFilter.build(severity="warning"), id="by severity"),
        pytest.param(AuditFilter.build(source="kubectl"), id="by source"),
        pytest.param(AuditFilter.build(target="meme"), id="by bot"),
        pytest.param(AuditFilter.build(user_id="alice"), id="by user"),
        pytest.param(AuditFilter.build(user_id="nobody"), id="by a user who never acted"),
        pytest.param(AuditFilter.build(namespace="trading"), id="by namespace"),
        pytest.param(
            AuditFilter.build(event_type="trade", target="stable", severity="warning"),
            id="by several fields at once",
        ),
        pytest.param(AuditFilter.build(since="2025-01-02T00:00:00Z"), id="since a time"),
        pytest.param(AuditFilter.build(until="2025-01-02T00:00:00Z"), id="until a time"),
        pytest.param(
            AuditFilter.build(since="2025-01-02T00:00:00Z", until="2025-01-03T00:00:00Z"),
            id="within a time range",
        ),
    ],
)
def test_a_query_returns_exactly_the_matching_records_newest_first(
    mixed_log: Path, flt: AuditFilter
) -> None:
    expected = [r for r in reversed(all_records(mixed_log)) if flt.matches(r)]
    assert query(mixed_log, flt, limit=None) == expected


def test_the_limit_keeps_the_most_recent_matches(mixed_log: Path) -> None:
    trades = [r for r in reversed(all_records(mixed_log)) if r["event_type"] == "trade"]
    assert query(mixed_log, AuditFilter.build(event_type="trade"), limit=7) == trades[:7]


def test_oldest_first_with_a_limit_returns_the_oldest_matches(mixed_log: Path) -> None:
    result = query(mixed_log, AuditFilter.build(event_type="trade"), limit=3, oldest_first=True)
    assert [r["seq"] for r in result] == [2, 3, 5]


def test_a_since_bound_is_inclusive_and_an_until_bound_exclusive(
    writer_factory: WriterFactory, event: EventFactory, log_dir: Path
) -> None:
    writer = writer_factory()
    writer.append_many(event(timestamp=f"2025-01-01T00:00:0{i}Z") for i in range(5))
    flt = AuditFilter.build(since="2025-01-01T00:00:01Z", until="2025-01-01T00:00:03Z")
    assert [r["seq"] for r in query(log_dir, flt, oldest_first=True)] == [2, 3]


def test_a_value_inside_details_does_not_make_a_record_match(
    writer_factory: WriterFactory, event: EventFactory, log_dir: Path
) -> None:
    writer = writer_factory()
    writer.append(event(event_type="trade", details={"event_type": "halt", "target": "meme"}))
    assert query(log_dir, AuditFilter.build(event_type="halt")) == []
    assert query(log_dir, AuditFilter.build(target="meme")) == []


def test_a_query_skips_closed_files_whose_index_rules_them_out(
    mixed_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    read: list[Path] = []

    def spy(path: Path, **kwargs: Any) -> Any:
        read.append(path)
        return iter_blocks_reverse(path, **kwargs)

    monkeypatch.setattr(reader_module, "iter_blocks_reverse", spy)
    assert [r["event_type"] for r in query(mixed_log, AuditFilter.build(event_type="halt"))] == [
        "halt"
    ]
    # Only the newest file (no index yet) is read: every closed file's index has no halt.
    assert read == [list_log_files(mixed_log)[-1].path]


def test_a_stale_index_is_ignored_rather_than_trusted(mixed_log: Path) -> None:
    closed = list_log_files(mixed_log)[0]
    raw = json.loads(closed.index_path.read_text())
    raw["counts"]["event_type"] = {}
    raw["size"] += 1  # no longer describes the file
    closed.index_path.write_text(json.dumps(raw))
    expected = [r for r in reversed(all_records(mixed_log)) if r["event_type"] == "trade"]
    assert query(mixed_log, AuditFilter.build(event_type="trade"), limit=None) == expected


def test_a_query_ignores_an_unfinished_last_line(
    writer_factory: WriterFactory, event: EventFactory, log_dir: Path
) -> None:
    writer = writer_factory()
    writer.append_many([event(), event()])
    path = writer.current_file
    assert path is not None
    with path.open("ab") as handle:
        handle.write(b'{"action":"half')
    assert [r["seq"] for r in query(log_dir)] == [2, 1]
    assert [r["seq"] for r in query(log_dir, oldest_first=True)] == [1, 2]


def test_a_query_on_an_empty_log_returns_nothing(tmp_path: Path) -> None:
    assert query(tmp_path) == []


def test_summary_counts_by_type_severity_source_and_bot(mixed_log: Path) -> None:
    result = summary(mixed_log).to_json()
    assert result["total"] == 91
    assert result["by_event_type"] == {"trade": 60, "config_change": 30, "halt": 1}
    assert result["by_severity"] == {"info": 72, "warning": 18, "critical": 1}
    assert result["by_source"] == {"bot": 45, "kubectl": 45, "plugin": 1}
    assert result["by_target"] == {"stable": 49, "meme": 42}
    assert (result["first_seq"], result["last_seq"]) == (1, 91)


def test_summary_from_indexes_equals_summary_from_reading_every_line(mixed_log: Path) -> None:
    assert summary(mixed_log).to_json() == summarize(all_records(mixed_log)).to_json()


def test_summary_with_a_filter_counts_only_matching_records(mixed_log: Path) -> None:
    result = summary(mixed_log, AuditFilter.build(user_id="alice")).to_json()
    assert result["total"] == 45
    assert result["by_source"] == {"kubectl": 45}


def test_export_writes_one_json_array_in_chain_order(mixed_log: Path) -> None:
    out = io.StringIO()
    count = export_json(mixed_log, out, AuditFilter.build(event_type="config_change"))
    exported = json.loads(out.getvalue())
    assert count == len(exported) == 30
    assert [r["seq"] for r in exported] == sorted(r["seq"] for r in exported)
    assert all(set(r) >= {"seq", "prev_hash", "hash"} for r in exported)


def test_export_of_nothing_is_an_empty_array(tmp_path: Path) -> None:
    out = io.StringIO()
    assert export_json(tmp_path, out) == 0
    assert json.loads(out.getvalue()) == []


NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "bound"),
    [
        pytest.param("30m", "2025-06-01T11:30:00.000000Z", id="minutes ago"),
        pytest.param("24h", "2025-05-31T12:00:00.000000Z", id="hours ago"),
        pytest.param("7d", "2025-05-25T12:00:00.000000Z", id="days ago"),
        pytest.param(
            "2025-05-01T10:00:00+02:00",
            "2025-05-01T08:00:00.000000Z",
            id="an ISO time with an offset",
        ),
        pytest.param("2025-05-01", "2025-05-01T00:00:00.000000Z", id="a date means UTC midnight"),
    ],
)
def test_time_bounds_accept_iso_times_and_durations(text: str, bound: str) -> None:
    assert parse_time_arg(text, NOW) == bound


def test_a_time_bound_that_is_neither_is_rejected() -> None:
    with pytest.raises(ValueError, match="neither an ISO 8601 time nor a duration"):
        parse_time_arg("last tuesday", NOW)
