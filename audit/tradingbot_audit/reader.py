"""Reading the audit log: filtered queries, summary counts and JSON export.

Readers take no lock and never write: they run beside the writer. Each file is read up to the
size it had when the query started, and an unfinished last line is ignored.

"Most recent" means latest in the chain (highest seq). Queries walk files newest first and
blocks from the end of each file, and stop as soon as `limit` records matched, so the cost
depends on how far back the matches are, not on the size of the log. Rare matches stay cheap
because a line is only parsed once its bytes can match: the sidecar index of a closed file
rules out whole files, a C-level search of each block for the wanted value picks candidate
lines, and a byte-level pre-check of every filter drops the rest before parsing.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, Final

from .chain import parse_line
from .files import (
    LogFile,
    iter_blocks,
    iter_blocks_reverse,
    iter_lines,
    list_log_files,
    read_json,
)
from .index import INDEXED_FIELDS, FileStats, count_key
from .schema import Record, format_timestamp, normalize_timestamp

log = logging.getLogger(__name__)

# Filterable fields, in the order the CLI lists them.
FILTER_FIELDS: Final = ("event_type", "severity", "source", "target", "user_id", "namespace")

_DURATION: Final = re.compile(r"^(\d+)([smhdw])$")
_DURATION_UNITS: Final = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_TIMESTAMP_KEY: Final = b',"timestamp":"'
_TIMESTAMP_LENGTH: Final = len("2025-01-02T03:04:05.000000Z")


def parse_time_arg(value: str, now: datetime) -> str:
    """A CLI time bound: ISO 8601 (no offset means UTC) or a duration ago (`90m`, `24h`, `7d`)."""
    match = _DURATION.match(value.strip())
    if match:
        amount, unit = int(match.group(1)), _DURATION_UNITS[match.group(2)]
        return format_timestamp(now - timedelta(**{unit: amount}))
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ValueError(
            f"{value!r} is neither an ISO 8601 time nor a duration like 30m, 24h or 7d"
        ) from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return format_timestamp(parsed)


def _values(value: str | Iterable[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(value)


@dataclass(frozen=True)
class AuditFilter:
    """Which records a query returns. Empty tuples match anything; several values are OR-ed.

    `since` is inclusive and `until` exclusive, both in the stored UTC form (see
    `AuditFilter.build` to pass datetimes or ISO strings).
    """

    event_type: tuple[str, ...] = ()
    severity: tuple[str, ...] = ()
    source: tuple[str, ...] = ()
    target: tuple[str, ...] = ()
    user_id: tuple[str, ...] = ()
    namespace: tuple[str, ...] = ()
    since: str | None = None
    until: str | None = None
    _needles: tuple[tuple[bytes, ...], ...] = field(
        default=(), init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        for name in FILTER_FIELDS:
            if isinstance(getattr(self, name), str):  # AuditFilter(event_type="halt")
                object.__setattr__(self, name, (getattr(self, name),))
        # Canonical lines spell a top-level field as `"name":<json value>`; a record can only
        # match if that byte string is in the line. (It may also appear inside details, which
        # is why a hit is confirmed on the parsed record.)
        needles = tuple(
            tuple(
                f'"{name}":{json.dumps(value, ensure_ascii=False)}'.encode()
                for value in getattr(self, name)
            )
            for name in FILTER_FIELDS
            if getattr(self, name)
        )
        object.__setattr__(self, "_needles", needles)

    @classmethod
    def build(
        cls,
        *,
        event_type: str | Iterable[str] | None = None,
        severity: str | Iterable[str] | None = None,
        source: str | Iterable[str] | None = None,
        target: str | Iterable[str] | None = None,
        user_id: str | Iterable[str] | None = None,
        namespace: str | Iterable[str] | None = None,
        since: str | datetime | None = None,
        until: str | datetime | None = None,
    ) -> AuditFilter:
        return cls(
            event_type=_values(event_type),
            severity=_values(severity),
            source=_values(source),
            target=_values(target),
            user_id=_values(user_id),
            namespace=_values(namespace),
            since=None if since is None else normalize_timestamp(since),
            until=None if until is None else normalize_timestamp(until),
        )

    @property
    def scan_needles(self) -> tuple[bytes, ...]:
        """Byte strings of which every matching line contains one (empty: no such hint)."""
        return self._needles[0] if self._needles else ()

    def is_empty(self) -> bool:
        return not self._needles and self.since is None and self.until is None

    def matches(self, record: Record) -> bool:
        """The exact test on a parsed record."""
        for name in FILTER_FIELDS:
            allowed = getattr(self, name)
            if allowed and record.get(name) not in allowed:
                return False
        timestamp = record.get("timestamp")
        if not isinstance(timestamp, str):
            return self.since is None and self.until is None
        if self.since is not None and timestamp < self.since:
            return False
        return self.until is None or timestamp < self.until

    def may_match_line(self, line: bytes) -> bool:
        """Cheap pre-check on the raw line; False only when the record cannot match."""
        for needles in self._needles:
            if not any(needle in line for needle in needles):
                return False
        if self.since is None and self.until is None:
            return True
        # `timestamp` sorts after `details`, and the fields after it are plain strings, so
        # its last occurrence in a canonical line is the top-level one.
        at = line.rfind(_TIMESTAMP_KEY)
        if at < 0:
            return True
        start = at + len(_TIMESTAMP_KEY)
        stamp = line[start : start + _TIMESTAMP_LENGTH].decode("ascii", "replace")
        if self.since is not None and stamp < self.since:
            return False
        return self.until is None or stamp < self.until

    def may_match_file(self, stats: FileStats) -> bool:
        """False when a closed file's index proves none of its records can match."""
        for name in FILTER_FIELDS:
            allowed = getattr(self, name)
            if allowed and name in INDEXED_FIELDS:
                counts = stats.counts.get(name, {})
                if not any(counts.get(count_key(value), 0) for value in allowed):
                    return False
        newest, oldest = stats.max_timestamp, stats.min_timestamp
        if self.since is not None and newest is not None and newest < self.since:
            return False
        return not (self.until is not None and oldest is not None and oldest >= self.until)


MATCH_ALL: Final = AuditFilter()


def _snapshot(log_dir: Path) -> list[tuple[LogFile, int]]:
    snapshot = []
    for log_file in list_log_files(log_dir):
        try:
            snapshot.append((log_file, log_file.path.stat().st_size))
        except FileNotFoundError:
            continue  # removed by retention since the listing
    return snapshot


def usable_index(log_file: LogFile, size: int) -> FileStats | None:
    """The file's sidecar index, if there is one and it still describes the file."""
    stats = FileStats.from_json(read_json(log_file.index_path))
    if stats is None or stats.size != size:
        return None
    return stats


def iter_records(
    log_dir: str | os.PathLike[str],
    flt: AuditFilter = MATCH_ALL,
    *,
    newest_first: bool = True,
) -> Iterator[Record]:
    """Yield matching records, newest first (default) or in chain order."""
    files = _snapshot(Path(log_dir))
    if newest_first:
        files.reverse()
    for log_file, size in files:
        stats = usable_index(log_file, size)
        if stats is not None and not flt.may_match_file(stats):
            continue
        try:
            yield from _matching(_file_lines(log_file, size, flt, newest_first), flt, log_file)
        except FileNotFoundError:
            continue  # removed by retention while we were reading


def _file_lines(
    log_file: LogFile, size: int, flt: AuditFilter, newest_first: bool
) -> Iterator[bytes]:
    """Lines of one file (without newlines) that may match, in the requested order."""
    needles = flt.scan_needles
    if newest_first:
        blocks = iter_blocks_reverse(log_file.path, end=size)
    else:
        blocks = iter_blocks(log_file.path, end=size)
    for block in blocks:
        if needles:
            lines = candidate_lines(block.data, needles, block.start, block.stop)
        else:
            lines = block.lines()
        if newest_first:
            lines.reverse()
        yield from lines


def candidate_lines(
    data: bytes, needles: tuple[bytes, ...], start: int = 0, stop: int | None = None
) -> list[bytes]:
    """Lines of data[start:stop] (whole lines) containing any of `needles`, in order.

    bytes.find runs in C over the whole block, so a rare event type costs a scan of the
    bytes, not a Python step per line: this is what keeps "the 100 most recent halts" fast
    on a large log.
    """
    stop = len(data) if stop is None else stop
    spans: dict[int, int] = {}
    for needle in needles:
        at = data.find(needle, start, stop)
        while at >= 0:
            # rfind gives -1 when the match is on the first line of the block: -1 + 1 is 0,
            # and `or start` turns that into the block's first line.
            line_start = data.rfind(b"\n", start, at) + 1 or start
            line_end = data.find(b"\n", at, stop)
            spans[line_start] = line_end
            at = data.find(needle, line_end, stop)
    return [data[begin : spans[begin]] for begin in sorted(spans)]


def _matching(lines: Iterable[bytes], flt: AuditFilter, log_file: LogFile) -> Iterator[Record]:
    for line in lines:
        if not line or not flt.may_match_line(line):
            continue
        try:
            record = parse_line(line)
        except ValueError:
            # A damaged line is verify's business; a query shows what can be read.
            log.debug("skipping an unreadable line in %s", log_file.path)
            continue
        if isinstance(record, dict) and flt.matches(record):
            yield record


def query(
    log_dir: str | os.PathLike[str],
    flt: AuditFilter = MATCH_ALL,
    *,
    limit: int | None = 100,
    oldest_first: bool = False,
) -> list[Record]:
    """Matching records, most recent first unless `oldest_first`; at most `limit` (None: all).

    With `oldest_first` and a limit, these are the oldest `limit` matches.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    records = iter_records(log_dir, flt, newest_first=not oldest_first)
    return list(records if limit is None else itertools.islice(records, limit))


@dataclass
class Summary:
    """Counts of matching records by type, severity, source and target."""

    total: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    first_timestamp: str | None = None
    last_timestamp: str | None = None
    counts: dict[str, dict[str, int]] = field(
        default_factory=lambda: {name: {} for name in INDEXED_FIELDS}
    )

    def add_stats(self, stats: FileStats) -> None:
        if stats.lines == 0:
            return
        self.total += stats.lines
        self.first_seq = _pick(min, self.first_seq, stats.first_seq)
        self.last_seq = _pick(max, self.last_seq, stats.last_seq)
        self.first_timestamp = _pick(min, self.first_timestamp, stats.min_timestamp)
        self.last_timestamp = _pick(max, self.last_timestamp, stats.max_timestamp)
        for name, bucket in stats.counts.items():
            mine = self.counts.setdefault(name, {})
            for key, count in bucket.items():
                mine[key] = mine.get(key, 0) + count

    def to_json(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "first_timestamp": self.first_timestamp,
            "last_timestamp": self.last_timestamp,
            "by_event_type": _sorted_counts(self.counts["event_type"]),
            "by_severity": _sorted_counts(self.counts["severity"]),
            "by_source": _sorted_counts(self.counts["source"]),
            "by_target": _sorted_counts(self.counts["target"]),
        }


def _pick(choose: Any, current: Any, new: Any) -> Any:
    if current is None:
        return new
    if new is None:
        return current
    return choose(current, new)


def _sorted_counts(counts: dict[str, int]) -> dict[str, int]:
    # Most frequent first; "" is an absent value (e.g. an event without a target).
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return {key or "-": count for key, count in ordered}


def summarize(records: Iterable[Record]) -> Summary:
    """Pure: count records by type, severity, source and target."""
    stats = FileStats()
    for record in records:
        stats.add(record, 0)
    result = Summary()
    result.add_stats(stats)
    return result


def summary(log_dir: str | os.PathLike[str], flt: AuditFilter = MATCH_ALL) -> Summary:
    """Counts over the whole log, or over the records matching `flt`.

    Without a filter, closed files contribute their index counts and only files without a
    usable index are read.
    """
    if not flt.is_empty():
        return summarize(iter_records(log_dir, flt, newest_first=False))
    result = Summary()
    for log_file, size in _snapshot(Path(log_dir)):
        stats = usable_index(log_file, size)
        if stats is None:
            stats = FileStats()
            try:
                for _offset, line in iter_lines(log_file.path, end=size):
                    if not line.endswith(b"\n"):
                        continue
                    try:
                        record = parse_line(line)
                    except ValueError:
                        continue
                    stats.add(record, 0)
            except FileNotFoundError:
                continue
        result.add_stats(stats)
    return result


def export_json(log_dir: str | os.PathLike[str], out: IO[str], flt: AuditFilter = MATCH_ALL) -> int:
    """Write matching records to `out` as one JSON array in chain order; returns the count.

    Streams record by record, so exporting a large log does not hold it in memory.
    """
    count = 0
    out.write("[")
    for record in iter_records(log_dir, flt, newest_first=False):
        out.write("\n" if count == 0 else ",\n")
        out.write(json.dumps(record, ensure_ascii=False, sort_keys=True))
        count += 1
    out.write("\n]\n" if count else "]\n")
    return count
