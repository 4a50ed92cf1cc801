"""The single audit recorder: every control action passes through here.

An `AuditEvent` carries the SPEC §6 schema. Events are decided together with the status
change they describe and stored in the same status write (`status.auditOutbox`), so a crash
can never separate an action from its record. `AuditRecorder.deliver` then hands the outbox
to every sink: the durable hash-chained log (required: an event leaves the outbox only once
the log acknowledged it) and a Kubernetes Event on the TradingBot for humans (best effort).
Every event has a deterministic `dedup_key`, so redelivery after a crash writes nothing twice.
Secrets are redacted here, once, before anything leaves the process.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tradingbot_api.times import format_time, kube_time, parse_time, utc_now
from tradingbot_audit.schema import redact_secrets

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
    timestamp: str | None = None

    def stamped(self, timestamp: dt.datetime, dedup_key: str) -> AuditEvent:
        return dataclasses.replace(self, timestamp=format_time(timestamp), dedup_key=dedup_key)

    def audit_record(self) -> dict[str, Any]:
        """The line for the durable log (seq and hashes are the writer's)."""
        details = dict(redact_secrets(dict(self.details)))
        details.setdefault("message", self.message)
        details.setdefault("reason", self.reason)
        return {
            "timestamp": self.timestamp or format_time(utc_now()),
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

    def to_outbox(self) -> dict[str, Any]:
        """The event as stored in status.auditOutbox (secrets already redacted)."""
        record = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        record["details"] = dict(redact_secrets(dict(self.details)))
        return record

    @classmethod
    def from_outbox(cls, record: Mapping[str, Any]) -> AuditEvent:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in names})


@dataclass(frozen=True)
class InvolvedObject:
    api_version: str
    kind: str
    namespace: str
    name: str
    uid: str
    resource_version: str | None = None


def kube_event_name(involved: InvolvedObject, event: AuditEvent) -> str:
    """Deterministic per event, so a redelivered event is refused as AlreadyExists."""
    key = event.dedup_key or f"{event.reason}/{event.timestamp}/{event.message}"
    return event_name_for_key(involved.name, key)


def event_name_for_key(bot: str, dedup_key: str) -> str:
    return f"{bot}.{hashlib.sha256(dedup_key.encode()).hexdigest()[:16]}"


def kube_event_body(event: AuditEvent, involved: InvolvedObject, host: str) -> dict[str, Any]:
    """A core/v1 Event for the TradingBot; Warning for anything not `info`."""
    message = event.message
    if event.user_id:
        message = f"{message} (by {event.user_id} via {event.source})"
    moment = parse_time(event.timestamp) or utc_now()
    stamp = kube_time(moment)
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": kube_event_name(involved, event), "namespace": involved.namespace},
        "involvedObject": {
            "apiVersion": involved.api_version,
            "kind": involved.kind,
            "namespace": involved.namespace,
            "name": involved.name,
            "uid": involved.uid,
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


# A sink takes a batch and raises if it could not store all of it.
Sink = Callable[[Sequence[AuditEvent], InvolvedObject], Awaitable[None]]


class AuditRecorder:
    """Delivers events to the durable sinks (must succeed) and the best-effort sinks.

    A failing sink is logged and counted, never raised into the reconcile loop: the events
    stay in the outbox and the next pass delivers them again.
    """

    def __init__(
        self,
        durable: Sequence[Sink] = (),
        best_effort: Sequence[Sink] = (),
        on_event: Callable[[AuditEvent], None] | None = None,
        on_error: Callable[[AuditEvent, str], None] | None = None,
    ) -> None:
        self.durable = list(durable)
        self.best_effort = list(best_effort)
        self.on_event = on_event
        self.on_error = on_error

    def decided(self, events: Sequence[AuditEvent]) -> None:
        """Count and log events once, when the status write that carries them succeeded."""
        for event in events:
            log.info(
                "audit %s %s/%s: %s", event.reason, event.namespace, event.target, event.message
            )
            if self.on_event:
                self.on_event(event)

    async def deliver(self, events: Sequence[AuditEvent], involved: InvolvedObject) -> bool:
        """True when every durable sink stored every event (so the outbox may be emptied)."""
        if not events:
            return True
        stored = True
        for sink in self.durable:
            try:
                await sink(events, involved)
            except Exception as err:  # retried from the outbox on the next pass
                stored = False
                log.warning(
                    "audit log did not take %d event(s) for %s/%s: %s",
                    len(events),
                    involved.namespace,
                    involved.name,
                    err,
                )
                if self.on_error:
                    for event in events:
                        self.on_error(event, type(err).__name__)
        for sink in self.best_effort:
            try:
                await sink(events, involved)
            except Exception as err:
                log.warning(
                    "posting Events for %s/%s failed: %s", involved.namespace, involved.name, err
                )
        return stored
