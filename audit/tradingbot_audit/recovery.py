"""Reading a log back on open, before the writer continues it.

A torn final line (a write a crash cut short, never acknowledged) is truncated; the chain
state is taken from the last complete line or, when no file holds one, from the retention
anchor; a closed file whose index a crash kept from being written gets one.
A last line that is not an intact record stops the writer: the chain is never continued from
something `verify` would reject.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .chain import GENESIS, ChainState, line_hash_ok, parse_line
from .errors import AuditLogCorruptError
from .files import Anchor, LogFile, complete_size, iter_lines, iter_lines_reverse, write_json_atomic
from .index import FileStats

log = logging.getLogger(__name__)


def truncate_torn_tail(newest: LogFile) -> None:
    """Cut `newest` back to its last complete line."""
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


def tail_state(files: list[LogFile], anchor: Anchor | None) -> ChainState:
    """Where the chain continues: the newest line of `files`, else the anchor, else genesis."""
    for log_file in reversed(files):
        for _offset, line in iter_lines_reverse(log_file.path):
            return state_from_line(log_file, line)
    if anchor is not None:
        return ChainState(seq=anchor.seq, hash=anchor.hash)
    return GENESIS


def state_from_line(log_file: LogFile, line: bytes) -> ChainState:
    """The chain state after `line`, the last line of `log_file`; AuditLogCorruptError if it
    is not an intact record."""
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


def scan_stats(path: Path) -> FileStats:
    """The index statistics of the file at `path`, read line by line."""
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


def ensure_index(log_file: LogFile, *, durable: bool) -> None:
    """Write the sidecar index of a closed file if a crash kept it from being written.

    Only a missing index is written. One that disagrees with its file is evidence (of a
    truncated or edited file) that verify must see, so it is left alone.
    """
    if log_file.index_path.exists():
        return
    try:
        stats = scan_stats(log_file.path)
        write_json_atomic(log_file.index_path, stats.to_json(log_file.name), durable=durable)
    except (OSError, ValueError, KeyError) as exc:
        # The index only speeds up reads; verify reports a broken file properly.
        log.warning("could not index audit file %s: %s", log_file.path, exc)
