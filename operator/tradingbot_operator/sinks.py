"""Where audit events go: the durable audit log (sidecar) and Kubernetes Events."""

from __future__ import annotations

import json
import socket
from collections.abc import Sequence

import aiohttp

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
    """POST batches to the audit sidecar; it answers only after the lines are on disk."""
    url = base_url.rstrip("/") + "/v1/events"
    timeout = aiohttp.ClientTimeout(total=AUDIT_TIMEOUT_SECONDS)

    async def append_to_audit_log(
        events: Sequence[AuditEvent],
        involved: InvolvedObject,
    ) -> None:
        payload = {"events": [e.audit_record() for e in events]}
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(
                url, data=json.dumps(payload), headers={"Content-Type": "application/json"}
            ) as response,
        ):
            if response.status != 200:
                text = await response.text()
                raise RuntimeError(f"audit log answered {response.status}: {text[:300]}")

    return append_to_audit_log
