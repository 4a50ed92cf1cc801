"""Where audit events go: the durable audit log (sidecar) and Kubernetes Events."""

from __future__ import annotations

import socket
from collections.abc import Sequence

from tradingbot_api.audit_http import EVENTS_PATH, AuditClient
from tradingbot_operator.kubeapi import ApiError, KubeApi
from tradingbot_operator.recorder import AuditEvent, InvolvedObject, Sink, kube_event_body

AUDIT_TIMEOUT_SECONDS = 10


def kube_event_sink(api: KubeApi, host: str | None = None) -> Sink:
    reporter = host or socket.gethostname()

    async def post_kube_events(events: Sequence[AuditEvent], involved: InvolvedObject) -> None:
        for event in events:
            try:
                await api.create(kube_event_body(event, involved, reporter))
            except ApiError as err:
                if not err.conflict:  # AlreadyExists: posted before a crash, keep one
                    raise

    return post_kube_events


def audit_log_sink(base_url: str) -> Sink:
    """Batches to the audit sidecar, which answers only after the lines are on disk; one
    client (and connection pool) for the operator's lifetime."""
    audit = AuditClient(base_url.rstrip("/") + EVENTS_PATH, timeout=AUDIT_TIMEOUT_SECONDS)

    async def append_to_audit_log(
        events: Sequence[AuditEvent],
        involved: InvolvedObject,
    ) -> None:
        await audit.send([e.audit_record() for e in events])

    return append_to_audit_log
