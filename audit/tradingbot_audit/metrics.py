"""Metrics hooks for the writer.

The writer core stays free of prometheus_client: it calls an `AuditHooks` object and keeps
plain counters of its own. `PrometheusHooks` is the thin adapter the operator wires in to
export `tradingbot_operator_audit_events_total{event_type,severity}` and
`tradingbot_operator_audit_write_errors_total` (SPEC §7). `HeadMetrics` does the same for
the chain head the sidecar keeps outside the log volume (head.py).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any, Protocol


class AuditHooks(Protocol):
    """Called by the writer after the fact; a hook that raises never fails an append."""

    def event_written(self, record: Mapping[str, Any]) -> None:
        """A record is durable (fsync returned)."""

    def duplicate_skipped(self, record: Mapping[str, Any]) -> None:
        """An event repeated a dedup_key already in the log; nothing was written."""

    def write_failed(self, error: BaseException) -> None:
        """A write or fsync failed; the events were not acknowledged."""


class WriterCounters:
    """In-process counters, always kept by the writer (tests and the CLI read them)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.events_total: dict[tuple[str, str], int] = {}
        self.duplicates_total = 0
        self.write_errors_total = 0

    def event_written(self, record: Mapping[str, Any]) -> None:
        key = (str(record["event_type"]), str(record["severity"]))
        with self._lock:
            self.events_total[key] = self.events_total.get(key, 0) + 1

    def duplicate_skipped(self, record: Mapping[str, Any]) -> None:
        with self._lock:
            self.duplicates_total += 1

    def write_failed(self, error: BaseException) -> None:
        with self._lock:
            self.write_errors_total += 1


class _LabelledCounter(Protocol):
    def labels(self, *values: str) -> Any: ...


class _Counter(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class PrometheusHooks:
    """Adapter onto prometheus_client counters.

    Pass counters the operator already registered, or call `create()` to register the two
    SPEC §7 metrics on a registry. prometheus_client is imported only there.
    """

    def __init__(self, events_total: _LabelledCounter, write_errors_total: _Counter) -> None:
        self._events_total = events_total
        self._write_errors_total = write_errors_total

    @classmethod
    def create(cls, registry: Any = None, prefix: str = "tradingbot_operator_") -> PrometheusHooks:
        from prometheus_client import REGISTRY, Counter

        target = REGISTRY if registry is None else registry
        events = Counter(
            f"{prefix}audit_events_total",
            "Audit events durably written, by type and severity.",
            ["event_type", "severity"],
            registry=target,
        )
        errors = Counter(
            f"{prefix}audit_write_errors_total",
            "Audit writes that failed (events not acknowledged).",
            registry=target,
        )
        return cls(events, errors)

    def event_written(self, record: Mapping[str, Any]) -> None:
        self._events_total.labels(str(record["event_type"]), str(record["severity"])).inc()

    def duplicate_skipped(self, record: Mapping[str, Any]) -> None:
        return None

    def write_failed(self, error: BaseException) -> None:
        self._write_errors_total.inc()


class _Gauge(Protocol):
    def set(self, value: float) -> None: ...


class HeadMetrics:
    """The sidecar's chain-head metrics.

    `tradingbot_audit_head_write_errors_total`: head writes the API server refused or never
    answered (each is retried; a rising count means the recorded head is going stale).
    `tradingbot_audit_head_mismatch`: 1 while the log failed its start-up check against the
    recorded head (a truncated or rewritten tail). `tradingbot_audit_head_seq`: the seq last
    recorded, to compare with the log's own progress.
    """

    def __init__(self, write_errors_total: _Counter, mismatch: _Gauge, seq: _Gauge) -> None:
        self._write_errors_total = write_errors_total
        self._mismatch = mismatch
        self._seq = seq

    @classmethod
    def create(cls, registry: Any = None) -> HeadMetrics:
        from prometheus_client import REGISTRY, Counter, Gauge

        target = REGISTRY if registry is None else registry
        return cls(
            Counter(
                "tradingbot_audit_head_write_errors_total",
                "Writes of the audit chain head to its ConfigMap that failed (retried).",
                registry=target,
            ),
            Gauge(
                "tradingbot_audit_head_mismatch",
                "1 when the audit log ends before, or differs from, the chain head recorded "
                "outside the log volume (checked on start).",
                registry=target,
            ),
            Gauge(
                "tradingbot_audit_head_seq",
                "Seq of the audit chain head last recorded outside the log volume.",
                registry=target,
            ),
        )

    def write_failed(self, error: BaseException) -> None:
        self._write_errors_total.inc()

    def written(self, seq: int) -> None:
        self._seq.set(seq)

    def mismatch(self, found: bool) -> None:
        self._mismatch.set(1 if found else 0)
