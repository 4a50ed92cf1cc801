"""The single audit recorder: every control action passes through `AuditRecorder.record`.

An `AuditEvent` carries the SPEC §6 schema. The recorder turns it into a Kubernetes Event on
the TradingBot (for humans and `kubectl describe`) and hands it to every durable sink (the
hash-chained JSONL log), so no caller can post an Event and forget the audit line or the
reverse. Secrets are redacted here, once, before anything leaves the process.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tradingbot_operator.audit.schema import redact_secrets
from tradingbot_operator.timeutil import format_time, utcnow

log = logging.getLogger(__name__)

MAX_EVENT_MESSAGE = 1024
REPORTING_COMPONENT = "tradingbot-operator"


@dataclass(frozen=True)
class AuditEvent:
    """One control action in the SPEC §6 audit schema, plus the Kubernetes Event reason."""

    event_type: str
    severity: str
    source: str
    namespace: str
    target: str
    action: str
    reason: str
    message: str
    details: Mapping[str, Any] = field(default_factory=dict)
    user_id: str | None = None
    dedup_key: str | None = None

    def audit_record(self, timestamp: dt.datetime) -> dict[str, Any]:
        """The line for the durable log (timestamp, seq and hashes are the writer's)."""
        details = dict(redact_secrets(dict(self.details)))
        details.setdefault("message", self.message)
        return {
            "timestamp": format_time(timestamp),
            "event_type": self.event_type,
            "severity": self.severity,
            "source": self.source,
            "namespace": self.namespace,
            "target": self.target,
            "action": self.action,
            "details": details,
            "user_id": self.user_id,
            "dedup_key": self.dedup_key,
        }


@dataclass(frozen=True)
class InvolvedObject:
    api_version: str
    kind: str
    namespace: str
    name: str
    uid: str
    resource_version: str | None = None


def kube_event_body(
    event: AuditEvent, involved: InvolvedObject, now: dt.datetime, host: str
) -> dict[str, Any]:
    """A core/v1 Event for the TradingBot; Warning for anything not `info`."""
    message = event.message
    if event.user_id:
        message = f"{message} (by {event.user_id})"
    stamp = format_time(now)
    digest = hashlib.sha1(
        f"{involved.uid}/{event.reason}/{stamp}/{event.message}".encode(), usedforsecurity=False
    ).hexdigest()[:10]
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{involved.name}.{digest}", "namespace": involved.namespace},
        "involvedObject": {
            "apiVersion": involved.api_version,
            "kind": involved.kind,
            "namespace": involved.namespace,
            "name": involved.name,
            "uid": involved.uid,
            **({"resourceVersion": involved.resource_version} if involved.resource_version else {}),
        },
        "reason": event.reason,
        "message": message[:MAX_EVENT_MESSAGE],
        "type": "Normal" if event.severity == "info" else "Warning",
        "source": {"component": REPORTING_COMPONENT, "host": host},
        "reportingComponent": REPORTING_COMPONENT,
        "reportingInstance": host,
        "action": event.action,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


Sink = Callable[[AuditEvent, InvolvedObject, dt.datetime], Awaitable[None]]


class AuditRecorder:
    """Fans every event out to the Kubernetes Event sink and the durable sinks.

    A failing sink is logged and counted, never raised into the reconcile loop: the action
    already happened and must stay recorded wherever possible.
    """

    def __init__(
        self,
        sinks: list[Sink],
        on_event: Callable[[AuditEvent], None] | None = None,
        on_error: Callable[[AuditEvent, str], None] | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.sinks = sinks
        self.on_event = on_event
        self.on_error = on_error
        self.clock = clock

    async def record(self, event: AuditEvent, involved: InvolvedObject) -> None:
        now = self.clock()
        log.info(
            "audit %s %s/%s: %s",
            event.reason,
            event.namespace,
            event.target,
            event.message,
            extra={"event_type": event.event_type, "severity": event.severity},
        )
        if self.on_event:
            self.on_event(event)
        for sink in self.sinks:
            try:
                await sink(event, involved, now)
            except Exception as err:  # a sink failure must not stop the reconcile loop
                log.warning(
                    "audit sink %s failed for %s: %s",
                    getattr(sink, "__name__", sink),
                    event.reason,
                    err,
                )
                if self.on_error:
                    self.on_error(event, type(err).__name__)
