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

This module appends and rotates; reading the log back on open is in recovery.py, the dedup
window in dedup.py, retention in retention.py.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Final

from tradingbot_api.times import utc_now

from .chain import GENESIS, ChainState, encode_line
from .dedup import DEFAULT_DEDUP_WINDOW, DedupEntry, DedupWindow, load_record
from .errors import AuditLogError, AuditWriteError, WriterLockedError
from .files import (
    LOCK_NAME,
    LogFile,
    complete_size,
    file_name,
    fsync_dir,
    list_log_files,
    read_anchor,
    remove_quietly,
    write_all,
    write_json_atomic,
)
from .index import FileStats
from .metrics import AuditHooks, WriterCounters
from .recovery import ensure_index, scan_stats, tail_state, truncate_torn_tail
from .retention import apply_retention, remove_log_file
from .schema import AuditSchemaError, Record, normalize_event

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

DEFAULT_MAX_FILE_BYTES: Final = 64 * 1024 * 1024
# One event may carry an old and a new config; anything past this is a bug upstream, and a
# huge line would defeat size rotation.
MAX_LINE_BYTES: Final = 1024 * 1024


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

    def __exit__(self, *exc_info: object) -> None:
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
            truncate_torn_tail(files[-1])

        state = tail_state(files, anchor)
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
                self._stats = scan_stats(newest.path)
                self._size = newest.path.stat().st_size
            for closed in files[:-1]:
                ensure_index(closed, durable=self._fsync)

        self._dedup.rebuild(list_log_files(self.log_dir), self._state.seq)
        if self.retention_days is not None:
            self._apply_retention(self._clock().astimezone(UTC).date())

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
                    existing = load_record(key, entry)
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
                self._dedup.add(key, DedupEntry(record["seq"], record["hash"], path, offset))
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
        return apply_retention(
            self.log_dir,
            self.retention_days,
            today,
            active=self.current_file,
            durable=self._fsync,
            remove=self._remove_file,
        )

    # Looked up on the class at each pass, so that a crash between writing the anchor and
    # removing the files can be reproduced.
    _remove_file = staticmethod(remove_log_file)


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
