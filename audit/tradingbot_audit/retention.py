"""Retention by age: whole log files older than N days are removed, oldest first.

Before removing anything, where the chain resumes (the seq and hash of the last removed line)
is recorded in `chain-anchor.json`, so `verify` of what remains still passes. The newest file
is never removed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path

from .chain import parse_line
from .files import (
    Anchor,
    LogFile,
    fsync_dir,
    iter_lines_reverse,
    list_log_files,
    remove_quietly,
    write_anchor,
)

log = logging.getLogger(__name__)


def remove_log_file(log_file: LogFile) -> None:
    """Remove an expired file and its index."""
    remove_quietly(log_file.index_path)
    remove_quietly(log_file.path)


def apply_retention(
    log_dir: Path,
    retention_days: int,
    today: date,
    *,
    active: Path | None,
    durable: bool,
    remove: Callable[[LogFile], None] = remove_log_file,
) -> list[Path]:
    """Remove the files of `log_dir` opened more than `retention_days` days before `today`;
    returns the removed paths. The newest file and the `active` one always stay."""
    cutoff = today - timedelta(days=retention_days)
    files = list_log_files(log_dir)
    expired: list[LogFile] = []
    for log_file in files[:-1]:
        if log_file.day >= cutoff or (active is not None and log_file.path == active):
            break
        expired.append(log_file)
    if not expired:
        return []
    try:
        anchor = anchor_after(expired)
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
        # covers, which the retention pass of the next open removes.
        write_anchor(log_dir, anchor, durable=durable)
    for log_file in expired:
        remove(log_file)
    if durable:
        fsync_dir(log_dir)
    log.info(
        "audit retention removed %d file(s) older than %s from %s",
        len(expired),
        cutoff,
        log_dir,
    )
    return [log_file.path for log_file in expired]


def anchor_after(expired: list[LogFile]) -> Anchor | None:
    """Where the chain resumes once `expired` is gone: the position after its last line."""
    for log_file in reversed(expired):
        for _offset, line in iter_lines_reverse(log_file.path):
            record = parse_line(line)
            return Anchor(seq=int(record["seq"]), hash=str(record["hash"]), file=log_file.name)
    return None
