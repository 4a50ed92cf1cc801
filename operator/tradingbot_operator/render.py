"""Pure builders for every object the operator creates for a bot.

Each takes the TradingBot's identity and spec (as stored, camelCase, defaults applied) and
returns a plain manifest. Golden-file tests pin them, so any change to what runs in a
cluster shows up as a reviewed diff.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from tradingbot_api.constants import (
    ANNOTATION_APPLIED_RESTART,
    ANNOTATION_APPLIED_SPEC,
    ANNOTATION_CONFIG_HASH,
    API_GROUP,
    API_VERSION,
    CREDENTIALS_DIR,
    CREDENTIALS_KEYS,
    CREDENTIALS_VOLUME,
    DEFAULT_STATE_PVC_SIZE,
    FLEET_SWITCH_ENV,
    KIND,
    LABEL_BOT,
    PLURAL,
    StateBackend,
    lease_name,
    state_configmap_name,
    state_pvc_name,
)
from tradingbot_api.models import PvcSpec, TradingBotSpec
from tradingbot_operator.hashing import canonical_json, compact_spec
from tradingbot_operator.settings import OperatorSettings

MANAGED_BY = "tradingbot-operator"
BOT_UID = 10001
STATE_VOLUME = "state"
DEFAULT_RESOURCES = {
    "requests": {"cpu": "50m", "memory": "128Mi"},
    "limits": {"memory": "512Mi"},
}


@dataclass(frozen=True)
class BotRef:
    """Who the objects belong to: the TradingBot's name, namespace and uid."""

    namespace: str
    name: str
    uid: str


def bot_labels(bot: BotRef, component: str = "bot") -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "tradingbot",
        "app.kubernetes.io/instance": bot.name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        LABEL_BOT: bot.name,
    }


def owner_reference(bot: BotRef) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": bot.name,
        "uid": bot.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def service_account_name(bot: str) -> str:
    return f"tradingbot-{bot}"


def pod_name(bot: str, config_hash: str) -> str:
    return f"{bot}-{config_hash[:10]}"


def _meta(bot: BotRef, name: str, *, owned: bool = True, component: str = "bot") -> dict:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": bot.namespace,
        "labels": bot_labels(bot, component),
    }
    if owned:
        meta["ownerReferences"] = [owner_reference(bot)]
    return meta


def render_bot_pod(
    bot: BotRef,
    spec: TradingBotSpec,
    stored_spec: Mapping[str, Any],
    config_hash: str,
    settings: OperatorSettings,
    restart_request: str = "",
) -> dict[str, Any]:
    """The one pod that runs a bot: least privilege, restricted security, probes.

    `spec` is the parsed spec (the only one a pod is made from); `stored_spec` is the same as
    the API server stored it, recorded on the pod so the next change can be diffed against
    exactly what was written."""
    grace = spec.restart_policy.grace_period_seconds
    port = settings.bot_metrics_port
    env: list[dict[str, Any]] = [
        {"name": "BOT_NAME", "value": bot.name},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "METRICS_PORT", "value": str(port)},
        {"name": "GRACE_PERIOD_SECONDS", "value": str(grace)},
        {"name": "CONFIG_HASH", "value": config_hash},
    ]
    if settings.fleet_switch:
        env.append({"name": FLEET_SWITCH_ENV, "value": settings.fleet_switch})
    env += [{"name": k, "value": v} for k, _, v in (e.partition("=") for e in settings.bot_env)]
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}]
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]
    secret = credentials_secret(spec)
    if secret:
        # Mounted by the kubelet: neither the operator nor the bot's ServiceAccount can read
        # Secrets through the API, and the bot sees exactly the two keys it needs.
        env.append({"name": "CREDENTIALS_DIR", "value": CREDENTIALS_DIR})
        volumes.append(
            {
                "name": CREDENTIALS_VOLUME,
                "secret": {
                    "secretName": secret,
                    "defaultMode": 0o440,
                    "items": [{"key": k, "path": k} for k in CREDENTIALS_KEYS],
                },
            }
        )
        mounts.append({"name": CREDENTIALS_VOLUME, "mountPath": CREDENTIALS_DIR, "readOnly": True})
    if spec.state.backend == StateBackend.PVC:
        env.append({"name": "STATE_DIR", "value": settings.state_mount_path})
        volumes.append(
            {"name": STATE_VOLUME, "persistentVolumeClaim": {"claimName": state_pvc_name(bot.name)}}
        )
        mounts.append({"name": STATE_VOLUME, "mountPath": settings.state_mount_path})
    probe_common = {"httpGet": {"port": "metrics"}, "timeoutSeconds": 2}
    container = {
        "name": "bot",
        "image": spec.image or settings.bot_image,
        "imagePullPolicy": "IfNotPresent",
        "command": list(settings.bot_command),
        "env": env,
        "ports": [{"name": "metrics", "containerPort": port, "protocol": "TCP"}],
        "readinessProbe": {
            **probe_common,
            "httpGet": {"path": "/readyz", "port": "metrics"},
            "periodSeconds": 1,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            **probe_common,
            "httpGet": {"path": "/healthz", "port": "metrics"},
            "initialDelaySeconds": 10,
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
        "resources": _dump(spec.resources) if spec.resources else dict(DEFAULT_RESOURCES),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": mounts,
    }
    pod_spec: dict[str, Any] = {
        "serviceAccountName": service_account_name(bot.name),
        "automountServiceAccountToken": True,
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": grace,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": BOT_UID,
            "runAsGroup": BOT_UID,
            "fsGroup": BOT_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    }
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_spec["tolerations"] = [_dump(t) for t in spec.tolerations]
    metadata = _meta(bot, pod_name(bot.name, config_hash))
    metadata["labels"]["trading.r7.dev/profile"] = str(spec.profile)
    metadata["annotations"] = {
        ANNOTATION_CONFIG_HASH: config_hash,
        # What this pod was started with: the next change is diffed against it, so Events and
        # the audit can say which fields changed, from what to what.
        ANNOTATION_APPLIED_SPEC: canonical_json(compact_spec(stored_spec)),
        # The restart request this pod already answers, so a restart reason left on the bot
        # is not reused for a later, unrelated change.
        ANNOTATION_APPLIED_RESTART: restart_request,
    }
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec}


def render_bot_service_account(bot: BotRef) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta(bot, service_account_name(bot.name)),
        "automountServiceAccountToken": True,
    }


def credentials_secret(spec: TradingBotSpec) -> str | None:
    """The Secret holding the bot's exchange keys, if its spec names one."""
    ref = spec.exchange.credentials_secret_ref
    return str(ref.name) if ref is not None else None


def _dump(model: BaseModel) -> dict[str, Any]:
    """A spec part as the API server stored it: CRD names, only the fields that were set."""
    return model.model_dump(mode="json", by_alias=True, exclude_unset=True)


def render_bot_role(bot: BotRef) -> dict[str, Any]:
    """Exactly what one bot needs, each rule pinned to its own objects by name; no Secret
    (credentials arrive as a volume)."""
    rules: list[dict[str, Any]] = [
        {
            "apiGroups": [API_GROUP],
            "resources": [PLURAL],
            "resourceNames": [bot.name],
            "verbs": ["get", "list", "watch"],
        },
        {
            "apiGroups": [API_GROUP],
            "resources": [f"{PLURAL}/status"],
            "resourceNames": [bot.name],
            "verbs": ["get", "patch"],
        },
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": [state_configmap_name(bot.name)],
            "verbs": ["get", "update", "patch"],
        },
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": [lease_name(bot.name)],
            "verbs": ["get", "update", "patch"],
        },
        # Events cannot be restricted by name: creating one is the whole permission.
        {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
    ]
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _meta(bot, service_account_name(bot.name)),
        "rules": rules,
    }


def render_bot_role_binding(bot: BotRef) -> dict[str, Any]:
    name = service_account_name(bot.name)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(bot, name),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": bot.namespace}],
    }


def render_state_configmap(bot: BotRef) -> dict[str, Any]:
    """The (empty) state ConfigMap; the bot fills it. Not owned by the TradingBot, so
    deleting the bot keeps its positions (SPEC §4)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(bot, state_configmap_name(bot.name), owned=False, component="state"),
        "data": {},
    }


def render_state_pvc(bot: BotRef, pvc: PvcSpec | None) -> dict[str, Any]:
    claim: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": pvc.size if pvc else DEFAULT_STATE_PVC_SIZE}},
    }
    if pvc is not None and pvc.storage_class_name:
        claim["storageClassName"] = pvc.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _meta(bot, state_pvc_name(bot.name), owned=False, component="state"),
        "spec": claim,
    }


def render_lease(bot: BotRef) -> dict[str, Any]:
    """The fencing Lease, created unheld; only the trading process ever holds it."""
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": _meta(bot, lease_name(bot.name), owned=False, component="fencing"),
        "spec": {},
    }


def render_bot_objects(bot: BotRef, spec: TradingBotSpec) -> list[dict[str, Any]]:
    """Everything a bot needs before its pod can start, in creation order."""
    objects = [
        render_bot_service_account(bot),
        render_bot_role(bot),
        render_bot_role_binding(bot),
        render_lease(bot),
    ]
    if spec.state.backend == StateBackend.PVC:
        objects.append(render_state_pvc(bot, spec.state.pvc))
    else:
        objects.append(render_state_configmap(bot))
    return objects
