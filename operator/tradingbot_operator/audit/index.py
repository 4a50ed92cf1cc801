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
    counts: dict[str, dict[str, int]] = field(
        default_factory=lambda: {name: {} for name in INDEXED_FIELDS}
    )

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
        counts = self.counts
        for name in INDEXED_FIELDS:
            bucket = counts[name]
            key = count_key(record.get(name))
            bucket[key] = bucket.get(key, 0) + 1

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
                lines=int(raw["lines"]),
                size=int(raw["size"]),
                first_seq=raw["first_seq"],
                first_prev_hash=raw["first_prev_hash"],
                last_seq=raw["last_seq"],
                last_hash=raw["last_hash"],
                min_timestamp=raw["min_timestamp"],
                max_timestamp=raw["max_timestamp"],
                counts=counts,
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
