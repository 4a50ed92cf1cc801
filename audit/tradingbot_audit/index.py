"""Per-file sidecar index: counts and time bounds of a closed chain file.

The writer writes `<file>.idx.json` when it rotates away from a file. Queries use it to skip
whole files that cannot match (no event of the requested type, outside the time range), and
`summary` without filters adds the counts instead of reading every line.

The index is a hint, never a source of truth: a reader ignores it unless the file still has
the size the index recorded, and `verify` recomputes it and fails on any difference, so an
edited index cannot hide events from queries unnoticed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from .schema import Record

INDEX_VERSION: Final = 1
INDEXED_FIELDS: Final = ("event_type", "severity", "source", "target", "namespace", "user_id")


def count_key(value: Any) -> str:
    # Absent optional fields (null) count under "": the schema forbids empty strings, so the
    # two cannot be confused.
    return "" if value is None else str(value)


@dataclass
class FileStats:
    """Running statistics of one chain file, kept by the writer and rebuilt by verify."""

    lines: int = 0
    size: int = 0
    first_seq: int | None = None
    first_prev_hash: str | None = None
    last_seq: int | None = None
    last_hash: str | None = None
    min_timestamp: str | None = None
    max_timestamp: str | None = None
    _counts: dict[str, dict[str, int]] = field(
        default_factory=lambda: {name: {} for name in INDEXED_FIELDS}
    )
    # Records counted by their combination of indexed values: one dict update per record
    # instead of six keeps `add` cheap in verify's hot loop. Folded into `counts` on read.
    _pending: dict[tuple[Any, ...], int] = field(default_factory=dict, repr=False)

    @property
    def counts(self) -> dict[str, dict[str, int]]:
        """Per field, how many records carry each value ("" for null)."""
        if self._pending:
            for combination, number in self._pending.items():
                for name, value in zip(INDEXED_FIELDS, combination, strict=True):
                    bucket = self._counts[name]
                    key = count_key(value)
                    bucket[key] = bucket.get(key, 0) + number
            self._pending.clear()
        return self._counts

    def add(self, record: Record, line_size: int) -> None:
        if self.first_seq is None:
            self.first_seq = record["seq"]
            self.first_prev_hash = record["prev_hash"]
        self.last_seq = record["seq"]
        self.last_hash = record["hash"]
        self.lines += 1
        self.size += line_size
        timestamp = record["timestamp"]
        # Timestamps come from callers and need not be monotonic, hence min/max, not first/last.
        if self.min_timestamp is None or timestamp < self.min_timestamp:
            self.min_timestamp = timestamp
        if self.max_timestamp is None or timestamp > self.max_timestamp:
            self.max_timestamp = timestamp
        combination = (
            record["event_type"],
            record["severity"],
            record["source"],
            record.get("target"),
            record.get("namespace"),
            record.get("user_id"),
        )
        pending = self._pending
        pending[combination] = pending.get(combination, 0) + 1

    def to_json(self, file_name: str) -> dict[str, Any]:
        return {
            "version": INDEX_VERSION,
            "file": file_name,
            "lines": self.lines,
            "size": self.size,
            "first_seq": self.first_seq,
            "first_prev_hash": self.first_prev_hash,
            "last_seq": self.last_seq,
            "last_hash": self.last_hash,
            "min_timestamp": self.min_timestamp,
            "max_timestamp": self.max_timestamp,
            "counts": self.counts,
        }

    @classmethod
    def from_json(cls, raw: Any) -> FileStats | None:
        """Parse an index; None when it is not one this version understands."""
        try:
            if raw.get("version") != INDEX_VERSION:
                return None
            counts = {
                name: {str(k): int(v) for k, v in raw["counts"][name].items()}
                for name in INDEXED_FIELDS
            }
            return cls(
                _counts=counts,
                lines=int(raw["lines"]),
                size=int(raw["size"]),
                first_seq=raw["first_seq"],
                first_prev_hash=raw["first_prev_hash"],
                last_seq=raw["last_seq"],
                last_hash=raw["last_hash"],
                min_timestamp=raw["min_timestamp"],
                max_timestamp=raw["max_timestamp"],
            )
        except (AttributeError, KeyError, TypeError, ValueError):
            return None

    def differences(self, other: FileStats) -> list[str]:
        """Names of the fields on which two stats disagree (empty when they match)."""
        names = (
            "lines",
            "size",
            "first_seq",
            "first_prev_hash",
            "last_seq",
            "last_hash",
            "min_timestamp",
            "max_timestamp",
            "counts",
        )
        return [name for name in names if getattr(self, name) != getattr(other, name)]
