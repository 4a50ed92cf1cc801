"""Admission webhooks: identity stamps, per-profile spec checks, deletions in the audit.

All three are `failurePolicy: Ignore` with a 5 s timeout. A down operator must never block
`kubectl edit` — least of all the kill switch (`trading.r7.dev/halt`), which is itself an
edit. What Ignore costs is bounded: an edit that bypassed the webhook carries no valid
identity stamp and is audited as `unverified`; a spec that bypassed the profile checks is
still bounded by the CRD schema and CEL rules, and the bot re-checks its parameters and
refuses to trade on invalid ones (an `InvalidConfig` Warning Event).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import kopf

from tradingbot_api.constants import API_GROUP, PLURAL, VERSION
from tradingbot_operator.identity import change_source, manager_of_change, stamp_changes
from tradingbot_operator.recorder import AuditEvent, InvolvedObject
from tradingbot_operator.timeutil import utcnow

log = logging.getLogger(__name__)

WEBHOOK_TIMEOUT_SECONDS = 5
WEBHOOK_CONFIGURATION = f"tradingbot.{API_GROUP}"
# kopf routes an admission request by the handler id in the URL path.
IDENTITY_HANDLER = "identity"
VALIDATE_HANDLER = "validate-spec"
DELETE_HANDLER = "record-deletion"


def spec_problems(spec: Mapping[str, Any]) -> list[str]:
    """Rules that need code: strategy parameters per profile and risk bounds (the same
    functions the bot applies before it trades), each message naming the field."""
    from tradingbot.risk import validate_risk
    from tradingbot.strategy import validate_params

    params = (spec.get("strategy") or {}).get("params")
    return validate_params(str(spec.get("profile", "")), params) + validate_risk(spec.get("risk"))


def register(key: bytes, operator_user: str | None) -> None:
    """Register the webhook handlers with kopf (only when a webhook server is configured)."""

    @kopf.on.mutate(
        API_GROUP,
        VERSION,
        PLURAL,
        id=IDENTITY_HANDLER,
        operations=["CREATE", "UPDATE"],
        ignore_failures=True,
    )
    def stamp_identity(userinfo: Any, patch: kopf.Patch, **kwargs: Any) -> None:
        # `body` is the object as submitted (with name, namespace and managedFields); `old`
        # is kopf's essence of the stored object (spec and annotations are all we compare).
        old, new = kwargs.get("old"), kwargs.get("body") or {}
        changes = stamp_changes(old, new, str(userinfo.get("username", "")), key, operator_user)
        for annotation, value in changes.items():
            patch.metadata.annotations[annotation] = value

    @kopf.on.validate(
        API_GROUP,
        VERSION,
        PLURAL,
        id=VALIDATE_HANDLER,
        operations=["CREATE", "UPDATE"],
        ignore_failures=True,
    )
    def validate_spec(**kwargs: Any) -> None:
        old, new = kwargs.get("old"), kwargs.get("new")
        spec = (new or {}).get("spec") or {}
        if old is not None and (old.get("spec") or {}) == spec:
            return  # metadata-only writes (finalizers, annotations) are not re-judged
        problems = spec_problems(spec)
        if problems:
            raise kopf.AdmissionError("; ".join(problems), code=422)

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
            event_type="config_change",
            severity="warning",
            source=source,
            namespace=str(meta.get("namespace")),
            target=str(meta.get("name")),
            action="Deleted",
            reason="DeletionRequested",
            message="TradingBot deletion requested: the bot stops gracefully, its state is kept",
            details={"old": {"spec": old.get("spec") or {}}},
            user_id=username,
        ).stamped(utcnow(), f"{meta.get('uid')}/delete")
        involved = InvolvedObject(
            f"{API_GROUP}/{VERSION}",
            "TradingBot",
            str(meta.get("namespace")),
            str(meta.get("name")),
            str(meta.get("uid")),
        )
        fleet = memo.get("fleet")
        if fleet is not None:
            fleet.recorder.decided([event])
            await fleet.recorder.deliver([event], involved)


def webhook_configurations(
    client_config: Mapping[str, Any],
    namespace_selector: Mapping[str, Any] | None = None,
    name: str = WEBHOOK_CONFIGURATION,
) -> list[dict[str, Any]]:
    """The Mutating/ValidatingWebhookConfiguration for a webhook reachable at client_config
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

    mutating = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [
            {**webhook(IDENTITY_HANDLER, ["CREATE", "UPDATE"]), "reinvocationPolicy": "IfNeeded"}
        ],
    }
    validating = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [
            webhook(VALIDATE_HANDLER, ["CREATE", "UPDATE"]),
            webhook(DELETE_HANDLER, ["DELETE"]),
        ],
    }
    return [mutating, validating]
