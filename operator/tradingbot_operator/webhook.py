"""The one admission webhook left: deletions of TradingBots in the audit.

Everything else runs inside the API server (the CRD schema and the chart's admission
policies): a change stamp, spec rules, "reference only what you may read" and the kill
switch's permission never wait on the operator. A deletion has no object to stamp, so the
webhook records who asked for it. It runs for DELETE only (a halt is an update and never
calls it), with `failurePolicy: Ignore` and a 5 s timeout: a down operator never blocks a
deletion; the finalizer still stops the bot gracefully, and the operator's own `Stopping`
and `Stopped` records stay in the audit (without the user).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import kopf

from tradingbot_api.constants import (
    API_GROUP,
    PLURAL,
    VERSION,
    EventReason,
    EventType,
    Severity,
)
from tradingbot_api.times import utc_now
from tradingbot_operator.identity import change_source, manager_of_change
from tradingbot_operator.recorder import AuditEvent, InvolvedObject

log = logging.getLogger(__name__)

WEBHOOK_TIMEOUT_SECONDS = 5
WEBHOOK_CONFIGURATION = f"tradingbot.{API_GROUP}"
# kopf routes an admission request by the handler id in the URL path.
DELETE_HANDLER = "record-deletion"


def register(operator_user: str | None) -> None:
    """Register the webhook handler with kopf (only when a webhook server is configured)."""

    @kopf.on.validate(
        API_GROUP, VERSION, PLURAL, id=DELETE_HANDLER, operations=["DELETE"], ignore_failures=True
    )
    async def record_deletion(userinfo: Any, dryrun: bool, memo: Any, **kwargs: Any) -> None:
        old = kwargs.get("body")  # on DELETE, the stored object in full
        if dryrun or not old:
            return
        meta = old.get("metadata") or {}
        username = str(userinfo.get("username", ""))
        source = change_source(
            username, manager_of_change(meta.get("managedFields"), ["metadata"]), operator_user
        )
        event = AuditEvent(
            event_type=EventType.CONFIG_CHANGE,
            severity=Severity.WARNING,
            source=source,
            namespace=str(meta.get("namespace")),
            target=str(meta.get("name")),
            action="Deleted",
            reason=EventReason.DELETION_REQUESTED,
            message="TradingBot deletion requested: the bot stops gracefully, its state is kept",
            details={"old": {"spec": old.get("spec") or {}}},
            user_id=username,
        ).stamped(utc_now(), f"{meta.get('uid')}/delete")
        involved = InvolvedObject(
            f"{API_GROUP}/{VERSION}",
            "TradingBot",
            str(meta.get("namespace")),
            str(meta.get("name")),
            str(meta.get("uid")),
        )
        recorder = memo.get("recorder")
        if recorder is not None:
            recorder.decided([event])
            await recorder.deliver([event], involved)


def webhook_configurations(
    client_config: Mapping[str, Any],
    namespace_selector: Mapping[str, Any] | None = None,
    name: str = WEBHOOK_CONFIGURATION,
) -> list[dict[str, Any]]:
    """The ValidatingWebhookConfiguration for a webhook reachable at client_config
    (`{"url": ..., "caBundle": ...}` or `{"service": {...}, "caBundle": ...}`)."""

    def config_for(handler: str) -> dict[str, Any]:
        cfg = dict(client_config)
        if "url" in cfg:
            cfg["url"] = f"{str(cfg['url']).rstrip('/')}/{handler}"
        else:
            cfg["service"] = {**cfg["service"], "path": f"/{handler}"}
        return cfg

    def webhook(handler: str, operations: list[str]) -> dict[str, Any]:
        return {
            "name": f"{handler}.{API_GROUP}",
            "clientConfig": config_for(handler),
            "rules": [
                {
                    "apiGroups": [API_GROUP],
                    "apiVersions": [VERSION],
                    "resources": [PLURAL],
                    "operations": operations,
                    "scope": "Namespaced",
                }
            ],
            "failurePolicy": "Ignore",
            "timeoutSeconds": WEBHOOK_TIMEOUT_SECONDS,
            "sideEffects": "NoneOnDryRun",
            "matchPolicy": "Equivalent",
            "admissionReviewVersions": ["v1"],
            **({"namespaceSelector": dict(namespace_selector)} if namespace_selector else {}),
        }

    validating = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [webhook(DELETE_HANDLER, ["DELETE"])],
    }
    return [validating]
