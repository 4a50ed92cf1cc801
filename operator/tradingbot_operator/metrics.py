"""Operator metrics (SPEC §7), all prefixed `tradingbot_operator_`.

Counters move from the audit events the recorder sees, so a metric and its audit line can
never disagree; gauges are recomputed from each bot's latest phase.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from tradingbot_api.constants import EventReason, Phase, RestartResult, RestartTrigger, Severity
from tradingbot_operator.recorder import AuditEvent

PREFIX = "tradingbot_operator"
DURATION_BUCKETS = (0.25, 0.5, 1, 1.5, 2, 3, 5, 10, 20, 30, 60, 120, 300)


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._serving = False
        r = self.registry
        self.restarts = Counter(
            f"{PREFIX}_restarts_total",
            "Bot restarts executed",
            ["namespace", "bot", "reason", "result"],
            registry=r,
        )
        self.restart_duration = Histogram(
            f"{PREFIX}_restart_duration_seconds",
            "From the old pod's deletion to the new pod ready",
            ["namespace", "bot"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.stops = Counter(
            f"{PREFIX}_stops_total",
            "Graceful bot stops",
            ["namespace", "bot", "trigger"],
            registry=r,
        )
        self.coalesced = Counter(
            f"{PREFIX}_coalesced_changes_total",
            "Changes merged into an already pending action",
            ["namespace", "bot"],
            registry=r,
        )
        self.pending = Gauge(f"{PREFIX}_pending_actions", "Bots with a pending action", registry=r)
        self.rate_limited = Counter(
            f"{PREFIX}_rate_limited_total",
            "Restarts deferred by the hourly limit",
            ["namespace", "bot"],
            registry=r,
        )
        self.reconcile_errors = Counter(
            f"{PREFIX}_reconcile_errors_total",
            "Reconcile passes that failed",
            ["error_type"],
            registry=r,
        )
        self.reconcile_duration = Histogram(
            f"{PREFIX}_reconcile_duration_seconds",
            "One reconcile pass of one bot",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.bots = Gauge(f"{PREFIX}_bots", "TradingBots by phase", ["phase"], registry=r)
        self.audit_events = Counter(
            f"{PREFIX}_audit_events_total",
            "Audit events recorded",
            ["event_type", "severity"],
            registry=r,
        )
        self.audit_write_errors = Counter(
            f"{PREFIX}_audit_write_errors_total", "Audit events a sink failed to write", registry=r
        )
        for phase in Phase:
            self.bots.labels(phase=str(phase)).set(0)
        self._phases: dict[tuple[str, str], tuple[str, bool]] = {}

    def serve(self, port: int, host: str) -> None:
        """Serve /metrics once; a retried start-up finds it serving."""
        if port and not self._serving:
            start_http_server(port, addr=host, registry=self.registry)
            self._serving = True

    def observe_event(self, event: AuditEvent) -> None:
        self.audit_events.labels(event_type=event.event_type, severity=event.severity).inc()
        labels = {"namespace": event.namespace, "bot": event.target}
        details: Mapping[str, object] = event.details
        match event.reason:
            case EventReason.RESTART_COMPLETED:
                self.restarts.labels(
                    **labels, reason=restart_trigger(details), result=RestartResult.SUCCEEDED
                ).inc()
                duration = details.get("durationSeconds")
                if isinstance(duration, int | float):
                    self.restart_duration.labels(**labels).observe(float(duration))
            case EventReason.RESTART_FAILED if event.severity == Severity.CRITICAL:
                self.restarts.labels(
                    **labels, reason=restart_trigger(details), result=RestartResult.FAILED
                ).inc()
            case EventReason.RESTART_COALESCED:
                self.coalesced.labels(**labels).inc()
            case EventReason.RATE_LIMITED:
                self.rate_limited.labels(**labels).inc()
            case EventReason.STOPPED | EventReason.HALTED:
                trigger = str(details.get("trigger") or event.event_type)
                self.stops.labels(**labels, trigger=trigger).inc()

    def observe_audit_error(self, event: AuditEvent, error_type: str) -> None:
        self.audit_write_errors.inc()

    def set_bot_state(self, namespace: str, name: str, phase: str | None, pending: bool) -> None:
        """Record a bot's latest phase (None when it is gone); gauges update incrementally."""
        key = (namespace, name)
        before = self._phases.pop(key, None)
        if before is not None:
            self.bots.labels(phase=before[0]).dec()
            if before[1]:
                self.pending.dec()
        if phase is not None:
            self._phases[key] = (phase, pending)
            self.bots.labels(phase=phase).inc()
            if pending:
                self.pending.inc()


def restart_trigger(details: Mapping[str, object]) -> RestartTrigger:
    fields = details.get("changedFields")
    if isinstance(fields, list) and fields:
        return RestartTrigger.CONFIG_CHANGE
    return RestartTrigger.RESTART_REQUEST
