"""Where audit events go: the durable audit log (sidecar) and Kubernetes Events."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from pathlib import Path

from tradingbot_api.audit_http import EVENTS_PATH, AuditClient, TokenSource
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


def token_file_reader(path: str) -> TokenSource:
    """The token in `path`, read anew for every request: the kubelet rotates a projected
    token in place (a few hundred bytes; the read does not block the loop for long)."""

    def read() -> str | None:
        return Path(path).read_text(encoding="utf-8").strip() or None

    return read


def audit_log_sink(base_url: str, token_file: str | None = None) -> Sink:
    """Batches to the audit sidecar, which answers only after the lines are on disk; one
    client (and connection pool) for the operator's lifetime. With `token_file`, each request
    carries that token (the sidecar's main listener); without, none (a loopback ingest)."""
    audit = AuditClient(
        base_url.rstrip("/") + EVENTS_PATH,
        token=None if token_file is None else token_file_reader(token_file),
        timeout=AUDIT_TIMEOUT_SECONDS,
    )

    async def append_to_audit_log(
        events: Sequence[AuditEvent],
        involved: InvolvedObject,
    ) -> None:
        await audit.send([e.audit_record() for e in events])

    return append_to_audit_log
