"""The single audit writer: durable, hash-chained, rotated, deduplicated appends.

Guarantees, in the order an operator relies on them:

* `append` returns only after the line is on disk (fdatasync; the directory is fsynced when a
  file is created or removed). `append_many` pays one fsync for the whole batch.
* Exactly one writer per log directory: an flock on `.writer.lock`; a second writer gets
  WriterLockedError naming the holder's pid.
* Crash recovery on open: a torn final line (a write the crash cut short, never acknowledged)
  is truncated and the chain continues from the last complete line.
* At-least-once delivery without duplicates: an event with a `dedup_key` already among the
  last `dedup_window` records is not written again, across restarts too (the window is
  rebuilt from the tail of the log on open).
* Rotation by size and by UTC day; retention by age removes whole files oldest first and
  records where the chain resumes in `chain-anchor.json`, so `verify` still passes.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from .chain import GENESIS, ChainState, encode_line, line_hash_ok, parse_line
from .files import (
    LOCK_NAME,
    Anchor,
    LogFile,
    complete_size,
    file_name,
    fsync_dir,
    iter_lines,
    iter_lines_reverse,
    list_log_files,
    read_anchor,
    read_line_at,
    remove_quietly,
    write_all,
    write_anchor,
    write_json_atomic,
)
from .index import FileStats
from .metrics import AuditHooks, WriterCounters
from .schema import AuditSchemaError, Record, normalize_event

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

DEFAULT_MAX_FILE_BYTES: Final = 64 * 1024 * 1024
# Dedup window, in records. Redeliveries come from an operator that crashed and retried, i.e.
# seconds to minutes after the original; 100,000 records is hours of audit traffic at
# realistic rates (minutes only at a sustained few hundred events/s). Rebuilding it on open
# reads the last 100,000 lines (~40 MB, well under a second) and holds only the keyed ones
# in memory. A line count, not a time span, keeps that cost bounded whatever the clock says.
DEFAULT_DEDUP_WINDOW: Final = 100_000
# One event may carry an old and a new config; anything past this is a bug upstream, and a
# huge line would defeat size rotation.
MAX_LINE_BYTES: Final = 1024 * 1024


def utc_now() -> datetime:
    return datetime.now(UTC)


class AuditLogError(Exception):
    """Base class of writer errors that are not input validation errors."""


class WriterLockedError(AuditLogError):
    """Another writer holds the log directory."""


class AuditLogCorruptError(AuditLogError):
    """The log's tail cannot be continued safely; run `verify` to see why."""


class AuditWriteError(AuditLogError):
    """A write or fsync failed; the events of the failed chunk were not acknowledged."""


@dataclass(frozen=True)
class AppendResult:
    """What `append` stored: the full record, or the earlier one when this was a duplicate."""

    record: Record
    duplicate: bool = False

    @property
    def seq(self) -> int:
        return int(self.record["seq"])

    @property
    def hash(self) -> str:
        return str(self.record["hash"])


@dataclass(frozen=True)
class _DedupEntry:
    seq: int
    hash: str
    path: Path
    offset: int


class DedupWindow:
    """dedup_key → where the keyed record sits, for the last `size` records of the log."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._by_key: dict[str, _DedupEntry] = {}
        self._order: deque[tuple[int, str]] = deque()

    def __len__(self) -> int:
        return len(self._by_key)

    def get(self, key: str) -> _DedupEntry | None:
        return self._by_key.get(key)

    def add(self, key: str, entry: _DedupEntry) -> None:
        if self.size <= 0:
            return
        self._by_key[key] = entry
        self._order.append((entry.seq, key))

    def evict(self, last_seq: int) -> None:
        """Forget keys of records older than the last `size` records."""
        floor = last_seq - self.size
        order = self._order
        while order and order[0][0] <= floor:
            seq, key = order.popleft()
            entry = self._by_key.get(key)
            if entry is not None and entry.seq == seq:
                del self._by_key[key]


def _has_dedup_key(line: bytes) -> bool:
    # Canonical lines start `{"action":…,"dedup_key":`; `action` is a plain string, so the
    # first `,"dedup_key":` is the top-level one. Skipping json.loads for unkeyed lines makes
    # the rebuild on open cheap.
    marker = line.find(b',"dedup_key":')
    return marker >= 0 and line[marker + 13 : marker + 17] != b"null"


class AuditWriter:
    """Appends audit events to a log directory. Create it with `open_writer`.

    Thread-safe: appends are serialised by a lock. Calls block on fsync; from asyncio code
    call them through `asyncio.to_thread`.
    """

    def __init__(
        self,
        log_dir: Path,
        *,
        max_file_bytes: int,
        retention_days: int | None,
        dedup_window: int,
        clock: Clock,
        hooks: AuditHooks | None,
        fsync: bool,
    ) -> None:
        if max_file_bytes < 1024:
            raise ValueError(f"max_file_bytes must be at least 1024, got {max_file_bytes}")
        if retention_days is not None and retention_days < 1:
            raise ValueError(f"retention_days must be at least 1 (or None), got {retention_days}")
        if dedup_window < 0:
            raise ValueError(f"dedup_window must be >= 0, got {dedup_window}")
        self.log_dir = log_dir
        self.max_file_bytes = max_file_bytes
        self.retention_days = retention_days
        self.counters = WriterCounters()
        self._clock = clock
        self._hooks = hooks
        self._fsync = fsync
        self._mutex = threading.Lock()
        self._dedup = DedupWindow(dedup_window)
        self._state: ChainState = GENESIS
        self._active: LogFile | None = None
        self._fd: int | None = None
        self._size = 0
        self._stats = FileStats()
        self._newest_day: date | None = None
        self._broken: BaseException | None = None
        self._closed = False

        log_dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = self._acquire_lock()
        try:
            self._recover()
        except BaseException:
            self._release()
            raise

    # -- public API --------------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        return self._state.seq

    @property
    def last_hash(self) -> str:
        return self._state.hash

    @property
    def current_file(self) -> Path | None:
        return None if self._active is None else self._active.path

    def append(self, event: Mapping[str, Any]) -> AppendResult:
        """Validate, chain and durably write one event; return the stored record.

        Fills `timestamp` (when absent), `seq`, `prev_hash` and `hash`. An event whose
        `dedup_key` is already in the window is not written: the earlier record comes back
        with `duplicate=True`. Raises AuditSchemaError (ValueError) for invalid input and
        AuditWriteError when the disk refuses the write.
        """
        return self.append_many([event])[0]

    def append_many(self, events: Iterable[Mapping[str, Any]]) -> list[AppendResult]:
        """Append a batch with one fsync per file touched; results in input order.

        Every event is validated before anything is written, so one bad event rejects the
        whole batch. If the disk fails mid-batch, the records before the failed chunk are
        durable and the error is raised: retry the batch with dedup keys to finish it.
        """
        with self._mutex:
            self._check_usable()
            now = self._clock()
            if now.tzinfo is None or now.utcoffset() is None:
                raise ValueError("the audit writer's clock must return timezone-aware datetimes")
            bodies = [normalize_event(event, now) for event in events]
            return self._append_bodies(bodies, now.astimezone(UTC).date())

    def apply_retention(self) -> list[Path]:
        """Delete files older than `retention_days` now; returns the removed paths.

        Runs on open and on each day rotation; call it from a timer if the log can stay
        idle for days.
        """
        with self._mutex:
            self._check_usable()
            return self._apply_retention(self._clock().astimezone(UTC).date())

    def close(self) -> None:
        """Close the active file and release the directory lock. Idempotent."""
        with self._mutex:
            if self._closed:
                return
            self._closed = True
            self._release()

    def __enter__(self) -> AuditWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- locking -----------------------------------------------------------------------

    def _acquire_lock(self) -> int:
        path = self.log_dir / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise WriterLockedError(
                f"another audit writer (pid {holder}) holds {path}; only one process may "
                f"write to {self.log_dir}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        return fd

    def _release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        with contextlib.suppress(OSError):
            os.close(self._lock_fd)

    def _check_usable(self) -> None:
        if self._closed:
            raise AuditLogError("the audit writer is closed")
        if self._broken is not None:
            raise AuditWriteError(
                f"the audit writer stopped after a failed write ({self._broken}); reopen it: "
                "recovery truncates any partial line"
            )

    # -- recovery ----------------------------------------------------------------------

    def _recover(self) -> None:
        # Files a crash left behind after retention wrote the anchor are still expired: the
        # retention pass at the end of this method removes them again. They are never removed
        # on the anchor's word alone, so a damaged anchor cannot delete audit data.
        anchor = read_anchor(self.log_dir)
        files = list_log_files(self.log_dir)
        if files:
            self._newest_day = max(f.day for f in files)
            self._truncate_torn_tail(files[-1])

        state = self._tail_state(files, anchor)
        self._state = state

        if files:
            newest = files[-1]
            empty = complete_size(newest.path) == 0
            if empty and newest.first_seq != state.seq + 1:
                # An empty file whose name disagrees with the chain (e.g. created just before
                # a crash, then the chain moved on): it holds nothing, so it can go.
                remove_quietly(newest.path)
            else:
                self._open_active(newest)
                self._stats = self._scan_stats(newest.path)
                self._size = newest.path.stat().st_size
            for closed in files[:-1]:
                self._ensure_index(closed)

        self._rebuild_dedup(list_log_files(self.log_dir))
        if self.retention_days is not None:
            self._apply_retention(self._clock().astimezone(UTC).date())

    def _truncate_torn_tail(self, newest: LogFile) -> None:
        size = newest.path.stat().st_size
        complete = complete_size(newest.path, size)
        if complete == size:
            return
        log.warning(
            "audit log %s ends with %d bytes of an unfinished line (a write cut short by a "
            "crash, never acknowledged); truncating to %d bytes",
            newest.path,
            size - complete,
            complete,
        )
        fd = os.open(newest.path, os.O_WRONLY)
        try:
            os.ftruncate(fd, complete)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _tail_state(self, files: list[LogFile], anchor: Anchor | None) -> ChainState:
        for log_file in reversed(files):
            for _offset, line in iter_lines_reverse(log_file.path):
                return self._state_from_line(log_file, line)
        if anchor is not None:
            return ChainState(seq=anchor.seq, hash=anchor.hash)
        return GENESIS

    @staticmethod
    def _state_from_line(log_file: LogFile, line: bytes) -> ChainState:
        try:
            record = parse_line(line)
            seq, digest = int(record["seq"]), str(record["hash"])
        except (ValueError, KeyError, TypeError) as exc:
            raise AuditLogCorruptError(
                f"the last line of {log_file.path} is not an audit record ({exc}); refusing to "
                "continue the chain from it (run verify)"
            ) from exc
        if not line_hash_ok(line):
            raise AuditLogCorruptError(
                f"the last line of {log_file.path} (seq {seq}) fails its hash check; refusing "
                "to continue the chain from it (run verify)"
            )
        return ChainState(seq=seq, hash=digest)

    @staticmethod
    def _scan_stats(path: Path) -> FileStats:
        stats = FileStats()
        for offset, line in iter_lines(path):
            try:
                stats.add(parse_line(line), len(line))
            except (ValueError, KeyError, TypeError):
                # A damaged line must not stop the audit from being written (that would let
                # whoever damaged it silence the log); verify reports it. The stats then
                # disagree with the file size, so readers ignore the resulting index.
                log.warning("audit file %s has an unreadable line at byte %d", path, offset)
        return stats

    def _ensure_index(self, log_file: LogFile) -> None:
        """Write the sidecar index of a closed file if a crash kept it from being written.

        Only a missing index is written. One that disagrees with its file is evidence (of a
        truncated or edited file) that verify must see, so it is left alone.
        """
        if log_file.index_path.exists():
            return
        try:
            stats = self._scan_stats(log_file.path)
            write_json_atomic(
                log_file.index_path, stats.to_json(log_file.name), durable=self._fsync
            )
        except (OSError, ValueError, KeyError) as exc:
            # The index only speeds up reads; verify reports a broken file properly.
            log.warning("could not index audit file %s: %s", log_file.path, exc)

    def _rebuild_dedup(self, files: list[LogFile]) -> None:
        window = self._dedup.size
        if window <= 0:
            return
        found: list[tuple[str, _DedupEntry]] = []
        remaining = window
        for log_file in reversed(files):
            for offset, line in iter_lines_reverse(log_file.path):
                if remaining == 0:
                    break
                remaining -= 1
                if not _has_dedup_key(line):
                    continue
                try:
                    record = parse_line(line)
                except ValueError:
                    continue
                key = record.get("dedup_key")
                if isinstance(key, str):
                    found.append(
                        (key, _DedupEntry(record["seq"], record["hash"], log_file.path, offset))
                    )
            if remaining == 0:
                break
        for key, entry in reversed(found):
            self._dedup.add(key, entry)
        self._dedup.evict(self._state.seq)

    # -- appending ---------------------------------------------------------------------

    def _append_bodies(self, bodies: list[Record], today: date) -> list[AppendResult]:
        results: list[AppendResult | None] = [None] * len(bodies)
        in_batch: dict[str, int] = {}  # dedup_key -> index of its first event in this batch
        repeats: list[tuple[int, int]] = []  # (index, index of the original)
        pending: list[tuple[int, Record, bytes]] = []
        seq, prev_hash = self._state.seq, self._state.hash

        for index, body in enumerate(bodies):
            key = body["dedup_key"]
            if key is not None:
                entry = self._dedup.get(key)
                if entry is not None:
                    existing = self._load_existing(key, entry)
                    results[index] = AppendResult(existing, duplicate=True)
                    self._note_duplicate(existing)
                    continue
                if key in in_batch:
                    repeats.append((index, in_batch[key]))
                    continue
                in_batch[key] = index
            seq += 1
            body["seq"] = seq
            body["prev_hash"] = prev_hash
            try:
                line, digest = encode_line(body)
            except (TypeError, ValueError) as exc:
                raise AuditSchemaError(f"event cannot be encoded as JSON: {exc}") from exc
            if len(line) > MAX_LINE_BYTES:
                raise AuditSchemaError(
                    f"event is {len(line)} bytes encoded; the limit is {MAX_LINE_BYTES} "
                    "(trim details)"
                )
            body["hash"] = digest
            prev_hash = digest
            pending.append((index, body, line))

        for index, record in self._write(pending, today):
            results[index] = AppendResult(record)
        for index, original in repeats:
            first = results[original]
            assert first is not None
            results[index] = AppendResult(first.record, duplicate=True)
            self._note_duplicate(first.record)
        return [result for result in results if result is not None]

    def _write(
        self, pending: list[tuple[int, Record, bytes]], today: date
    ) -> list[tuple[int, Record]]:
        written: list[tuple[int, Record]] = []
        chunk: list[tuple[int, Record, bytes]] = []
        chunk_bytes = 0
        for item in pending:
            line_size = len(item[2])
            if self._needs_new_file(today, chunk_bytes + line_size, chunk_bytes):
                written += self._flush(chunk)
                chunk, chunk_bytes = [], 0
                self._rotate(today, item[1]["seq"])
            chunk.append(item)
            chunk_bytes += line_size
        written += self._flush(chunk)
        return written

    def _needs_new_file(self, today: date, size_with_line: int, chunk_bytes: int) -> bool:
        if self._active is None:
            return True
        if today > self._active.day:
            return True
        current = self._size + chunk_bytes
        # A file always takes at least one line, so an oversized event still gets written.
        return current > 0 and self._size + size_with_line > self.max_file_bytes

    def _flush(self, chunk: list[tuple[int, Record, bytes]]) -> list[tuple[int, Record]]:
        if not chunk:
            return []
        assert self._fd is not None and self._active is not None
        data = b"".join(line for _index, _record, line in chunk)
        start = self._size
        try:
            write_all(self._fd, data)
        except OSError as exc:
            self._write_failed(exc, truncate_to=start)
            raise AuditWriteError(f"writing to {self._active.path} failed: {exc}") from exc
        try:
            if self._fsync:
                os.fdatasync(self._fd)
        except OSError as exc:
            # After a failed fsync the kernel may have dropped the dirty pages: nothing about
            # the file can be trusted until a reopen re-reads it.
            self._broken = exc
            self._write_failed(exc, truncate_to=None)
            raise AuditWriteError(f"fsync of {self._active.path} failed: {exc}") from exc

        path = self._active.path
        offset = start
        committed: list[tuple[int, Record]] = []
        for index, record, line in chunk:
            self._stats.add(record, len(line))
            key = record["dedup_key"]
            if key is not None:
                self._dedup.add(key, _DedupEntry(record["seq"], record["hash"], path, offset))
            offset += len(line)
            committed.append((index, record))
        self._size = offset
        last = chunk[-1][1]
        self._state = ChainState(seq=last["seq"], hash=last["hash"])
        self._dedup.evict(self._state.seq)
        for _index, record in committed:
            self.counters.event_written(record)
            self._call_hook("event_written", record)
        return committed

    def _write_failed(self, exc: OSError, truncate_to: int | None) -> None:
        self.counters.write_failed(exc)
        self._call_hook("write_failed", exc)
        if truncate_to is None or self._fd is None:
            return
        try:
            # Drop whatever part of the chunk reached the file so the next line starts clean.
            os.ftruncate(self._fd, truncate_to)
        except OSError as truncate_exc:
            self._broken = truncate_exc

    def _rotate(self, today: date, first_seq: int) -> None:
        previous = self._active
        if previous is not None:
            assert self._fd is not None
            os.close(self._fd)
            self._fd = None
            self._active = None
            try:
                write_json_atomic(
                    previous.index_path, self._stats.to_json(previous.name), durable=self._fsync
                )
            except OSError as exc:
                log.warning("could not write audit index %s: %s", previous.index_path, exc)
        # Never let a clock that stepped back produce a name sorting before existing files.
        day = today if self._newest_day is None else max(today, self._newest_day)
        path = self.log_dir / file_name(day, first_seq)
        try:
            self._open_active(LogFile(first_seq=first_seq, day=day, path=path))
            if self._fsync:
                fsync_dir(self.log_dir)
        except OSError as exc:
            self._write_failed(exc, truncate_to=None)
            raise AuditWriteError(f"creating {path} failed: {exc}") from exc
        self._stats = FileStats()
        self._size = 0
        new_day = previous is not None and day > previous.day
        self._newest_day = day
        if new_day and self.retention_days is not None:
            try:
                self._apply_retention(day)
            except OSError as exc:
                log.warning("audit retention in %s failed: %s", self.log_dir, exc)

    def _open_active(self, log_file: LogFile) -> None:
        self._fd = os.open(log_file.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._active = log_file

    def _load_existing(self, key: str, entry: _DedupEntry) -> Record:
        line = read_line_at(entry.path, entry.offset)
        if line is not None:
            try:
                record: Record = parse_line(line)
                if record.get("seq") == entry.seq:
                    return record
            except ValueError:
                pass
        # The file went away (retention) or moved; the seq and hash still identify it.
        return {"seq": entry.seq, "hash": entry.hash, "dedup_key": key}

    def _note_duplicate(self, record: Record) -> None:
        self.counters.duplicate_skipped(record)
        self._call_hook("duplicate_skipped", record)

    def _call_hook(self, name: str, arg: Any) -> None:
        if self._hooks is None:
            return
        try:
            getattr(self._hooks, name)(arg)
        except Exception:
            # A metrics problem must never turn a durable append into a reported failure.
            log.exception("audit hook %s failed", name)

    # -- retention ---------------------------------------------------------------------

    def _apply_retention(self, today: date) -> list[Path]:
        if self.retention_days is None:
            return []
        cutoff = today - timedelta(days=self.retention_days)
        files = list_log_files(self.log_dir)
        expired: list[LogFile] = []
        for log_file in files[:-1]:
            if log_file.day >= cutoff or (self._active and log_file.path == self._active.path):
                break
            expired.append(log_file)
        if not expired:
            return []
        try:
            anchor = self._anchor_after(expired)
        except (ValueError, KeyError, TypeError) as exc:
            # Without a trustworthy anchor, verify could no longer pass after the deletion;
            # keeping the data is the safe side.
            log.warning(
                "audit retention skipped: the last line of the expired files is "
                "unreadable (%s); run verify",
                exc,
            )
            return []
        if anchor is not None:
            # Anchor first: a crash between the two steps leaves files the anchor already
            # covers, which the next open removes (_finish_pending_retention).
            write_anchor(self.log_dir, anchor, durable=self._fsync)
        for log_file in expired:
            self._remove_file(log_file)
        if self._fsync:
            fsync_dir(self.log_dir)
        log.info(
            "audit retention removed %d file(s) older than %s from %s",
            len(expired),
            cutoff,
            self.log_dir,
        )
        return [log_file.path for log_file in expired]

    @staticmethod
    def _anchor_after(expired: list[LogFile]) -> Anchor | None:
        for log_file in reversed(expired):
            for _offset, line in iter_lines_reverse(log_file.path):
                record = parse_line(line)
                return Anchor(seq=int(record["seq"]), hash=str(record["hash"]), file=log_file.name)
        return None

    @staticmethod
    def _remove_file(log_file: LogFile) -> None:
        remove_quietly(log_file.index_path)
        remove_quietly(log_file.path)


def open_writer(
    log_dir: str | os.PathLike[str],
    *,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    retention_days: int | None = None,
    dedup_window: int = DEFAULT_DEDUP_WINDOW,
    clock: Clock = utc_now,
    hooks: AuditHooks | None = None,
    fsync: bool = True,
) -> AuditWriter:
    """Open (creating if needed) the audit log in `log_dir` for appending.

    `max_file_bytes` bounds each file (a single larger event still gets a file of its own);
    files also rotate at each UTC day. `retention_days=N` removes whole files opened more
    than N days before today (UTC), never the newest; `None` keeps everything. Duplicates
    are detected among the last `dedup_window` records (0 disables dedup). `clock` must
    return aware datetimes; it stamps events without a timestamp and decides day rotation.
    `hooks` receives metrics callbacks. `fsync=False` skips the disk flush and is meant for
    tests and benchmarks only.

    Raises WriterLockedError if another writer holds the directory, AuditLogCorruptError if
    the chain cannot be continued from the log's last line.
    """
    return AuditWriter(
        Path(log_dir),
        max_file_bytes=max_file_bytes,
        retention_days=retention_days,
        dedup_window=dedup_window,
        clock=clock,
        hooks=hooks,
        fsync=fsync,
    )
