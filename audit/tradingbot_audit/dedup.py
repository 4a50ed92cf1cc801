"""The dedup window: which of the last N records carried which `dedup_key`, and where.

An event whose key is in the window is not written again; the writer answers with the record
already stored. The window is rebuilt from the tail of the log on open, so a redelivery after
a restart is recognised too.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from .chain import parse_line
from .files import LogFile, iter_lines_reverse, read_line_at
from .schema import Record

# Dedup window, in records. Redeliveries come from an operator that crashed and retried, i.e.
# seconds to minutes after the original; 100,000 records is hours of audit traffic at
# realistic rates (minutes only at a sustained few hundred events/s). Rebuilding it on open
# reads the last 100,000 lines (~40 MB, well under a second) and holds only the keyed ones
# in memory. A line count, not a time span, keeps that cost bounded whatever the clock says.
DEFAULT_DEDUP_WINDOW: Final = 100_000


@dataclass(frozen=True)
class DedupEntry:
    """Where a keyed record sits: its seq and hash, its file and its byte offset there."""

    seq: int
    hash: str
    path: Path
    offset: int


class DedupWindow:
    """dedup_key → where the keyed record sits, for the last `size` records of the log."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._by_key: dict[str, DedupEntry] = {}
        self._order: deque[tuple[int, str]] = deque()

    def __len__(self) -> int:
        return len(self._by_key)

    def get(self, key: str) -> DedupEntry | None:
        return self._by_key.get(key)

    def add(self, key: str, entry: DedupEntry) -> None:
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

    def rebuild(self, files: list[LogFile], last_seq: int) -> None:
        """Refill the window from the last `size` lines of `files` (oldest file first)."""
        window = self.size
        if window <= 0:
            return
        found: list[tuple[str, DedupEntry]] = []
        remaining = window
        for log_file in reversed(files):
            for offset, line in iter_lines_reverse(log_file.path):
                if remaining == 0:
                    break
                remaining -= 1
                if not has_dedup_key(line):
                    continue
                try:
                    record = parse_line(line)
                except ValueError:
                    continue
                key = record.get("dedup_key")
                if isinstance(key, str):
                    found.append(
                        (key, DedupEntry(record["seq"], record["hash"], log_file.path, offset))
                    )
            if remaining == 0:
                break
        for key, entry in reversed(found):
            self.add(key, entry)
        self.evict(last_seq)


def has_dedup_key(line: bytes) -> bool:
    # Canonical lines start `{"action":…,"dedup_key":`; `action` is a plain string, so the
    # first `,"dedup_key":` is the top-level one. Skipping json.loads for unkeyed lines makes
    # the rebuild on open cheap.
    marker = line.find(b',"dedup_key":')
    return marker >= 0 and line[marker + 13 : marker + 17] != b"null"


def load_record(key: str, entry: DedupEntry) -> Record:
    """The stored record `entry` points at, or as much of it as the entry itself holds."""
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
