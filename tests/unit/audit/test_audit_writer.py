"""The writer: chaining, durability, rotation, recovery, locking, dedup, retention, metrics."""

from __future__ import annotations

import errno
import itertools
import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from tradingbot_audit import (
    AuditLogCorruptError,
    AuditLogError,
    AuditSchemaError,
    AuditWriteError,
    AuditWriter,
    PrometheusHooks,
    WriterLockedError,
    compute_hash,
    open_writer,
    query,
    verify_log,
)
from tradingbot_audit import writer as writer_module
from tradingbot_audit.chain import GENESIS_HASH
from tradingbot_audit.files import ANCHOR_NAME, list_log_files, read_anchor

Filler = Callable[..., None]
WriterFactory = Callable[..., AuditWriter]
EventFactory = Callable[..., dict[str, Any]]


def records_in(log_dir: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for log_file in list_log_files(log_dir)
        for line in log_file.path.read_bytes().splitlines()
    ]


# -- appending and chaining ---------------------------------------------------------------


def test_append_returns_the_stored_record_with_seq_and_hashes(
    writer_factory: WriterFactory, event: EventFactory, clock: Any
) -> None:
    writer = writer_factory()
    result = writer.append(event())
    assert not result.duplicate
    assert result.seq == 1
    assert result.record["prev_hash"] == GENESIS_HASH
    assert result.record["hash"] == compute_hash(result.record)
    assert result.record["timestamp"] == "2025-01-01T12:00:00.000000Z"


def test_each_line_carries_the_hash_of_the_line_before(
    log_dir: Path, writer_factory: WriterFactory, event: EventFactory
) -> None:
    writer = writer_factory()
    first = writer.append(event())
    second = writer.append(event(action="second"))
    assert second.seq == first.seq + 1
    assert second.record["prev_hash"] == first.hash
    assert records_in(log_dir) == [first.record, second.record]


def test_append_many_keeps_input_order_and_one_chain(
    writer_factory: WriterFactory, event: EventFactory
) -> None:
    writer = writer_factory()
    results = writer.append_many([event(action=f"a{i}") for i in range(5)])
    assert [r.record["action"] for r in results] == [f"a{i}" for i in range(5)]
    assert [r.seq for r in results] == [1, 2, 3, 4, 5]
    assert writer.last_seq == 5 and writer.last_hash == results[-1].hash


def test_one_invalid_event_rejects_the_whole_batch_before_anything_is_written(
    log_dir: Path, writer_factory: WriterFactory, event: EventFactory
) -> None:
    writer = writer_factory()
    with pytest.raises(AuditSchemaError, match="severity"):
        writer.append_many([event(), event(severity="urgent"), event()])
    assert records_in(log_dir) == []
    assert writer.append(event()).seq == 1


def test_an_event_too_large_for_one_line_is_rejected(
    writer_factory: WriterFactory, event: EventFactory
) -> None:
    writer = writer_factory()
    with pytest.raises(AuditSchemaError, match="bytes encoded"):
        writer.append(event(details={"blob": "x" * (2 * 1024 * 1024)}))


def test_a_closed_writer_refuses_to_append(
    writer_factory: WriterFactory, event: EventFactory
) -> None:
    writer = writer_factory()
    writer.close()
    writer.close()  # idempotent
    with pytest.raises(AuditLogError, match="closed"):
        writer.append(event())


# -- durability ----------------------------------------------------------------------------


def test_append_fsyncs_once_per_event_and_append_many_once_per_batch(
    monkeypatch: pytest.MonkeyPatch, writer_factory: WriterFactory, event: EventFactory
) -> None:
    writer = writer_factory()
    writer.append(event())  # creates the file
    calls: list[int] = []
    real = os.fdatasync

    def counting_fdatasync(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counting_fdatasync)
    writer.append(event())
    writer.append(event())
    assert len(calls) == 2
    writer.append_many([event() for _ in range(100)])
    assert len(calls) == 3


def test_the_directory_is_fsynced_when_a_file_is_created(
    monkeypatch: pytest.MonkeyPatch, writer_factory: WriterFactory, event: EventFactory
) -> None:
    synced: list[Path] = []
    monkeypatch.setattr(writer_module, "fsync_dir", lambda path: synced.append(path))
    writer = writer_factory(max_file_bytes=2048)
    writer.append_many([event() for _ in range(20)])
    assert len(synced) == len(list_log_files(writer.log_dir))


# -- rotation ------------------------------------------------------------------------------


def test_files_rotate_by_size_and_the_chain_continues_into_the_next_file(
    log_dir: Path, writer_factory: WriterFactory, fill: Filler
) -> None:
    writer = writer_factory(max_file_bytes=4096)
    fill(writer, 100)
    files = list_log_files(log_dir)
    assert len(files) > 3
    for older, newer in itertools.pairwise(files):
        assert older.path.stat().st_size <= 4096
        last = json.loads(older.path.read_bytes().splitlines()[-1])
        first = json.loads(newer.path.read_bytes().splitlines()[0])
        assert first["prev_hash"] == last["hash"]
        assert first["seq"] == last["seq"] + 1 == newer.first_seq
        assert older.index_path.exists(), "a closed file gets its sidecar index"
    assert verify_log(log_dir).ok


def test_files_rotate_at_the_utc_day_boundary(
    log_dir: Path, writer_factory: WriterFactory, event: EventFactory, clock: Any
) -> None:
    writer = writer_factory()
    writer.append(event())
    clock.advance(hours=11, minutes=59)  # 23:59 on the same day
    writer.append(event())
    clock.advance(minutes=2)
    writer.append(event())
    names = [log_file.name for log_file in list_log_files(log_dir)]
    assert names == ["audit-20250101-000000000001.jsonl", "audit-20250102-000000000003.jsonl"]
    assert verify_log(log_dir).ok


def test_a_clock_that_steps_back_never_creates_a_file_that_sorts_first(
    log_dir: Path, writer_factory: WriterFactory, event: EventFactory, clock: Any
) -> None:
    writer = writer_factory(max_file_bytes=1024)
    writer.append(event())
    clock.advance(days=-3)
    writer.append_many([event() for _ in range(5)])
    files = list_log_files(log_dir)
    assert len(files) > 1
    assert all(log_file.name.startswith("audit-20250101-") for log_file in files)
    assert verify_log(log_dir).ok


def test_an_oversized_event_gets_a_file_of_its_own(
    log_dir: Path, writer_factory: WriterFactory, event: EventFactory
) -> None:
    writer = writer_factory(max_file_bytes=1024)
    writer.append(event(details={"blob": "x" * 5000}))
    writer.append(event())
    assert len(list_log_files(log_dir)) == 2
    assert verify_log(log_dir).ok


# -- reopening and crash recovery ----------------------------------------------------------


def test_a_reopened_writer_continues_the_chain(
    log_dir: Path, writer_factory: WriterFactory, event: EventFactory
) -> None:
    first = writer_factory()
    last = first.append_many([event() for _ in range(3)])[-1]
    first.close()
    second = writer_factory()
    result = second.append(event())
    assert (result.seq, result.record["prev_hash"]) == (4, last.hash)
    assert verify_log(log_dir).ok


@pytest.mark.parametrize(
    "torn",
    [
        pytest.param(b'{"action":"restart_completed","dedup_key":nu', id="half a line"),
        pytest.param(b"\x00" * 300, id="zeros left by a crash before the data reached disk"),
    ],
)
def test_a_torn_final_line_is_truncated_on_open_and_the_chain_continues(
    log_dir: Path,
    writer_factory: WriterFactory,
    event: EventFactory,
    torn: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = writer_factory()
    last = first.append_many([event() for _ in range(3)])[-1]
    path = first.current_file
    first.close()
    assert path is not None
    with path.open("ab") as handle:
        handle.write(torn)
    assert not verify_log(log_dir).ok

    with caplog.at_level(logging.WARNING):
        second = writer_factory()
    assert "truncating" in caplog.text
    result = second.append(event())
    assert (result.seq, result.record["prev_hash"]) == (4, last.hash)
    assert verify_log(log_dir).ok


def test_a_corrupt_last_line_stops_the_writer_from_continuing_the_chain(
    log_dir: Path, writer_factory: WriterFactory, event: EventFactory
) -> None:
    first = writer_factory()
    first.append_many([event() for _ in range(3)])
    path = first.current_file
    first.close()
    assert path is not None
    path.write_bytes(path.read_bytes().replace(b"restart_completed", b"restart_complete!"))
    with pytest.raises(AuditLogCorruptError, match="fails its hash check"):
        writer_factory()


def test_an_empty_file_left_by_a_crash_after_rotation_is_reused(
    log_dir: Path, writer_factory: WriterFactory, event: EventFactory
) -> None:
    first = writer_factory()
    first.append_many([event() for _ in range(3)])
    first.close()
    (log_dir / "audit-20250101-000000000004.jsonl").touch()
    second = writer_factory()
    assert second.append(event()).seq == 4
    assert len(list_log_files(log_dir)) == 2
    assert verify_log(log_dir).ok


def test_a_missing_index_of_a_closed_file_is_rebuilt_on_open(
    log_dir: Path, writer_factory: WriterFactory, fill: Filler
) -> None:
    writer = writer_factory(max_file_bytes=4096)
    fill(writer, 50)
    writer.close()
    index = list_log_files(log_dir)[0].index_path
    expected = index.read_text()
    index.unlink()
    writer_factory(max_file_bytes=4096)
    assert index.read_text() == expected


def test_reopening_leaves_an_index_that_disagrees_with_its_file_for_verify_to_report(
    log_dir: Path, writer_factory: WriterFactory, fill: Filler
) -> None:
    writer = writer_factory(max_file_bytes=4096)
    fill(writer, 50)
    writer.close()
    closed = list_log_files(log_dir)[0].path
    closed.write_bytes(b"".join(closed.read_bytes().splitlines(keepends=True)[:-2]))
    writer_factory(max_file_bytes=4096).close()
    error = verify_log(log_dir).error
    assert error is not None and "sidecar index" in error.reason


def test_a_damaged_anchor_never_makes_the_writer_delete_files(
    log_dir: Path, writer_factory: WriterFactory, fill: Filler
) -> None:
    writer = writer_factory(max_file_bytes=4096)
    fill(writer, 50)
    writer.close()
    before = list_log_files(log_dir)
    (log_dir / ANCHOR_NAME).write_text('{"version": 1, "seq": 999999, "hash": "00"}')
    writer_factory(max_file_bytes=4096)
    assert list_log_files(log_dir) == before


# -- single writer -------------------------------------------------------------------------


def test_a_second_writer_on_the_same_directory_is_refused_with_a_clear_error(
    writer_factory: WriterFactory,
) -> None:
    writer_factory()
    with pytest.raises(WriterLockedError, match=rf"another audit writer \(pid {os.getpid()}\)"):
        writer_factory()


def test_the_directory_can_be_reopened_once_the_writer_is_closed(
    writer_factory: WriterFactory, event: EventFactory
) -> None:
    writer_factory().close()
    assert writer_factory().append(event()).seq == 1


# -- dedup ---------------------------------------------------------------------------------


def test_an_event_with_a_known_dedup_key_is_not_written_twice(
    log_dir: Path, writer_factory: WriterFactory, event: EventFactory
) -> None:
    writer = writer_factory()
    original = writer.append(event(dedup_key="restart:stable:42"))
    writer.append(event())
    again = writer.append(event(dedup_key="restart:stable:42", action="retried"))
    assert again.duplicate
    assert again.record == original.record
    assert len(records_in(log_dir)) == 2
    assert writer.counters.duplicates_total == 1


def test_duplicates_inside_one_batch_are_written_once(
    log_dir: Path, writer_factory: WriterFactory, event: EventFactory
) -> None:
    writer = writer_factory()
    results = writer.append_many([event(dedup_key="k"), event(), event(dedup_key="k")])
    assert [r.duplicate for r in results] == [False, False, True]
    assert results[2].record == results[0].record
    assert len(records_in(log_dir)) == 2


def test_dedup_survives_a_writer_restart(
    log_dir: Path, writer_factory: WriterFactory, event: EventFactory
) -> None:
    first = writer_factory()
    original = first.append(event(dedup_key="halt:meme:7"))
    first.append_many([event() for _ in range(10)])
    first.close()
    again = writer_factory().append(event(dedup_key="halt:meme:7"))
    assert again.duplicate and again.record == original.record
    assert len(records_in(log_dir)) == 11


@pytest.mark.parametrize("restart", [False, True], ids=["while running", "after a restart"])
def test_dedup_covers_exactly_the_last_window_of_records(
    writer_factory: WriterFactory, event: EventFactory, restart: bool
) -> None:
    writer = writer_factory(dedup_window=10)
    writer.append(event(dedup_key="old"))  # seq 1
    writer.append_many([event() for _ in range(9)])  # seq 2..10: "old" is still in the window
    if restart:
        writer.close()
        writer = writer_factory(dedup_window=10)
    assert writer.append(event(dedup_key="old")).duplicate
    writer.append(event())  # seq 11: seq 1 leaves the window
    if restart:
        writer.close()
        writer = writer_factory(dedup_window=10)
    assert not writer.append(event(dedup_key="old")).duplicate


def test_a_duplicate_of_a_record_whose_file_was_removed_still_reports_seq_and_hash(
    writer_factory: WriterFactory, event: EventFactory, clock: Any
) -> None:
    writer = writer_factory(retention_days=1)
    original = writer.append(event(dedup_key="k"))
    clock.advance(days=3)
    writer.append(event())  # rotates, retention removes day one
    again = writer.append(event(dedup_key="k"))
    assert again.duplicate
    assert (again.seq, again.hash) == (original.seq, original.hash)


# -- retention -----------------------------------------------------------------------------


def test_retention_removes_old_files_and_verify_still_passes(
    log_dir: Path, writer_factory: WriterFactory, fill: Filler, clock: Any
) -> None:
    writer = writer_factory(retention_days=2, max_file_bytes=8192)
    for _day in range(5):
        fill(writer, 40)
        clock.advance(days=1)
    writer.append_many([{"event_type": "halt", "source": "plugin", "action": "halt"}])
    days = sorted({log_file.day.isoformat() for log_file in list_log_files(log_dir)})
    assert days == ["2025-01-04", "2025-01-05", "2025-01-06"]
    anchor = read_anchor(log_dir)
    assert anchor is not None and anchor.seq == 120
    result = verify_log(log_dir)
    assert result.ok, result.summary()
    assert (result.events, result.last_seq) == (81, 201)
    assert query(log_dir, limit=None)[-1]["seq"] == 121


def test_retention_runs_when_the_writer_opens(
    log_dir: Path, writer_factory: WriterFactory, fill: Filler, clock: Any
) -> None:
    writer = writer_factory()
    fill(writer, 10)
    clock.advance(days=1)
    fill(writer, 10)
    writer.close()
    clock.advance(days=10)
    reopened = writer_factory(retention_days=5)
    # The newest file is the one the writer continues: never removed, even when old.
    assert [f.first_seq for f in list_log_files(log_dir)] == [11]
    assert reopened.append({"event_type": "stop", "source": "kubectl", "action": "stop"}).seq == 21
    assert verify_log(log_dir).ok


def test_a_crash_between_writing_the_anchor_and_removing_files_is_harmless(
    log_dir: Path, writer_factory: WriterFactory, fill: Filler, clock: Any, monkeypatch: Any
) -> None:
    writer = writer_factory(retention_days=1)
    fill(writer, 10)
    clock.advance(days=3)
    monkeypatch.setattr(AuditWriter, "_remove_file", staticmethod(lambda log_file: None))
    fill(writer, 10)  # rotation writes the anchor, the "crash" keeps the old file
    writer.close()
    assert (log_dir / ANCHOR_NAME).exists() and len(list_log_files(log_dir)) == 2
    assert verify_log(log_dir).ok
    monkeypatch.undo()
    writer_factory(retention_days=1)
    assert len(list_log_files(log_dir)) == 1
    assert verify_log(log_dir).ok


# -- failures and metrics ------------------------------------------------------------------


class RecordingHooks:
    def __init__(self) -> None:
        self.written: list[Mapping[str, Any]] = []
        self.duplicates: list[Mapping[str, Any]] = []
        self.errors: list[BaseException] = []

    def event_written(self, record: Mapping[str, Any]) -> None:
        self.written.append(record)

    def duplicate_skipped(self, record: Mapping[str, Any]) -> None:
        self.duplicates.append(record)

    def write_failed(self, error: BaseException) -> None:
        self.errors.append(error)


def test_a_failed_write_is_rolled_back_counted_and_the_next_append_works(
    log_dir: Path, writer_factory: WriterFactory, event: EventFactory, monkeypatch: Any
) -> None:
    hooks = RecordingHooks()
    writer = writer_factory(hooks=hooks)
    writer.append(event())
    real = writer_module.write_all

    def disk_full(fd: int, data: bytes) -> None:
        real(fd, data[: len(data) // 2])  # part of the line reaches the file
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer_module, "write_all", disk_full)
    with pytest.raises(AuditWriteError, match="No space left"):
        writer.append(event(action="lost"))
    assert writer.counters.write_errors_total == 1
    assert len(hooks.errors) == 1
    assert writer.last_seq == 1
    assert verify_log(log_dir).ok, "the partial line was truncated away"

    monkeypatch.undo()
    assert writer.append(event()).seq == 2
    assert verify_log(log_dir).ok


def test_a_failed_fsync_stops_the_writer_until_it_is_reopened(
    log_dir: Path, writer_factory: WriterFactory, event: EventFactory, monkeypatch: Any
) -> None:
    writer = writer_factory()
    writer.append(event())

    def failing_fdatasync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing_fdatasync)
    with pytest.raises(AuditWriteError, match="fsync"):
        writer.append(event())
    monkeypatch.undo()
    with pytest.raises(AuditWriteError, match="reopen"):
        writer.append(event())
    writer.close()
    reopened = writer_factory()
    reopened.append(event())
    assert verify_log(log_dir).ok


def test_counters_count_events_by_type_and_severity(
    writer_factory: WriterFactory, event: EventFactory
) -> None:
    writer = writer_factory()
    writer.append_many([event(), event(), event(event_type="halt", severity="critical")])
    assert writer.counters.events_total == {("restart", "info"): 2, ("halt", "critical"): 1}


def test_hooks_see_every_durable_event_and_duplicate(
    writer_factory: WriterFactory, event: EventFactory
) -> None:
    hooks = RecordingHooks()
    writer = writer_factory(hooks=hooks)
    writer.append_many([event(dedup_key="a"), event(dedup_key="a"), event()])
    assert [r["seq"] for r in hooks.written] == [1, 2]
    assert [r["seq"] for r in hooks.duplicates] == [1]


def test_a_hook_that_raises_does_not_fail_a_durable_append(
    writer_factory: WriterFactory, event: EventFactory
) -> None:
    class Broken(RecordingHooks):
        def event_written(self, record: Mapping[str, Any]) -> None:
            raise RuntimeError("metrics backend down")

    writer = writer_factory(hooks=Broken())
    assert writer.append(event()).seq == 1


def test_the_prometheus_adapter_exports_the_spec_metric_names(
    writer_factory: WriterFactory, event: EventFactory
) -> None:
    registry = CollectorRegistry()
    writer = writer_factory(hooks=PrometheusHooks.create(registry))
    writer.append_many([event(), event(event_type="halt", severity="critical")])
    value = registry.get_sample_value(
        "tradingbot_operator_audit_events_total", {"event_type": "halt", "severity": "critical"}
    )
    assert value == 1.0
    assert registry.get_sample_value("tradingbot_operator_audit_write_errors_total") == 0.0


def test_open_writer_rejects_nonsense_settings(log_dir: Path) -> None:
    with pytest.raises(ValueError, match="max_file_bytes"):
        open_writer(log_dir, max_file_bytes=10)
    with pytest.raises(ValueError, match="retention_days"):
        open_writer(log_dir, retention_days=0)
