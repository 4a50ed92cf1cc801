"""Where audit events go: Kubernetes Events now; the durable log plugs in beside it."""

from __future__ import annotations

import datetime as dt
import socket

from tradingbot_operator.kubeapi import KubeApi
from tradingbot_operator.recorder import AuditEvent, InvolvedObject, Sink, kube_event_body


def kube_event_sink(api: KubeApi, host: str | None = None) -> Sink:
    reporter = host or socket.gethostname()

    async def post_kube_event(
        event: AuditEvent, involved: InvolvedObject, now: dt.datetime
    ) -> None:
        await api.create(kube_event_body(event, involved, now, reporter))

    return post_kube_event
