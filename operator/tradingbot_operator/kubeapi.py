"""The few API calls the operator makes, as plain JSON over the shared async client
(`tradingbot_api.kubeclient`: one aiohttp session, no thread per call).

Raw JSON (no generated models) keeps memory and CPU low at a thousand bots and lets every
call say exactly what it means: uid preconditions on delete, resourceVersion on status
patches, server-side apply for the objects the operator owns.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from tradingbot_api.constants import API_GROUP, LABEL_BOT, PLURAL, VERSION
from tradingbot_api.kubeclient import KubeClient, KubeError
from tradingbot_operator.guards import AccessQuery

FIELD_MANAGER = "tradingbot-operator"
REQUEST_TIMEOUT = 30

_PLURALS = {
    "Pod": ("", "v1", "pods"),
    "ServiceAccount": ("", "v1", "serviceaccounts"),
    "ConfigMap": ("", "v1", "configmaps"),
    "PersistentVolumeClaim": ("", "v1", "persistentvolumeclaims"),
    "Event": ("", "v1", "events"),
    "Role": ("rbac.authorization.k8s.io", "v1", "roles"),
    "RoleBinding": ("rbac.authorization.k8s.io", "v1", "rolebindings"),
    "Lease": ("coordination.k8s.io", "v1", "leases"),
}


ApiError = KubeError  # one error type for every program


def api_message(err: KubeError) -> str:
    """The `message` of the Status the API server answered with, else the raw body."""
    return err.message


def _path(
    group: str,
    version: str,
    namespace: str | None,
    plural: str,
    name: str | None = None,
    sub: str | None = None,
) -> str:
    base = f"/api/{version}" if not group else f"/apis/{group}/{version}"
    if namespace:
        base += f"/namespaces/{quote(namespace)}"
    base += f"/{plural}"
    if name:
        base += f"/{quote(name)}"
    if sub:
        base += f"/{sub}"
    return base


class KubeApi:
    def __init__(self, client: KubeClient) -> None:
        self.client = client

    @classmethod
    def from_environment(cls) -> KubeApi:
        """In-cluster credentials when running in a pod, else the current kubeconfig."""
        return cls(KubeClient.from_environment(user_agent=FIELD_MANAGER))

    async def close(self) -> None:
        await self.client.close()

    # -- TradingBots --------------------------------------------------------------------

    async def get_bot(self, namespace: str, name: str) -> dict[str, Any]:
        return dict(
            await self.client.request("GET", _path(API_GROUP, VERSION, namespace, PLURAL, name))
        )

    async def patch_bot_status(
        self, namespace: str, name: str, patch: Mapping[str, Any], resource_version: str | None
    ) -> dict[str, Any]:
        """Merge-patch the status; with resource_version, fail on a concurrent change."""
        body: dict[str, Any] = {"status": dict(patch)}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        return dict(
            await self.client.request(
                "PATCH",
                _path(API_GROUP, VERSION, namespace, PLURAL, name, "status"),
                body=body,
                content_type="application/merge-patch+json",
            )
        )

    async def patch_bot(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        await self.client.request(
            "PATCH",
            _path(API_GROUP, VERSION, namespace, PLURAL, name),
            body=dict(patch),
            content_type="application/merge-patch+json",
        )

    # -- pods ---------------------------------------------------------------------------

    async def list_bot_pods(self, namespace: str, bot: str) -> list[dict[str, Any]]:
        result = await self.client.request(
            "GET", _path("", "v1", namespace, "pods"), query={"labelSelector": f"{LABEL_BOT}={bot}"}
        )
        return list(result.get("items") or [])

    async def create(self, obj: Mapping[str, Any], *, dry_run: bool = False) -> dict[str, Any]:
        """Create an object; with dry_run, only ask the API server (schema, admission,
        Pod Security) whether it would accept it."""
        group, version, plural = _PLURALS[str(obj["kind"])]
        namespace = obj["metadata"].get("namespace")
        return dict(
            await self.client.request(
                "POST",
                _path(group, version, namespace, plural),
                body=dict(obj),
                query={"dryRun": "All"} if dry_run else None,
            )
        )

    async def delete_pod(self, namespace: str, name: str, uid: str, grace: int) -> dict[str, Any]:
        """Delete exactly this pod (uid precondition), with its grace period; the pod as the
        API server answered (being deleted), or {} when it was gone already."""
        body = {
            "kind": "DeleteOptions",
            "apiVersion": "v1",
            "gracePeriodSeconds": grace,
            "preconditions": {"uid": uid},
        }
        try:
            answer = await self.client.request(
                "DELETE", _path("", "v1", namespace, "pods", name), body=body
            )
        except ApiError as err:
            if err.not_found or err.conflict:  # already gone, or a different pod by now
                return {}
            raise
        return dict(answer or {})

    async def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply of an object the operator owns."""
        group, version, plural = _PLURALS[str(obj["kind"])]
        meta = obj["metadata"]
        return dict(
            await self.client.request(
                "PATCH",
                _path(group, version, meta.get("namespace"), plural, meta["name"]),
                body=json.dumps(obj),
                query={"fieldManager": FIELD_MANAGER, "force": "true"},
                content_type="application/apply-patch+yaml",
            )
        )

    async def create_if_absent(self, obj: Mapping[str, Any]) -> None:
        try:
            await self.create(obj)
        except ApiError as err:
            if err.status != 409:
                raise

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        group, version, plural = _PLURALS[kind]
        return dict(
            await self.client.request("GET", _path(group, version, namespace, plural, name))
        )

    async def merge_patch(
        self, kind: str, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> dict[str, Any]:
        group, version, plural = _PLURALS[kind]
        return dict(
            await self.client.request(
                "PATCH",
                _path(group, version, namespace, plural, name),
                body=dict(patch),
                query={"fieldManager": FIELD_MANAGER},
                content_type="application/merge-patch+json",
            )
        )

    async def get_cluster_object(
        self, group: str, version: str, plural: str, name: str
    ) -> dict[str, Any] | None:
        """A cluster-scoped object, or None when it does not exist."""
        try:
            return dict(await self.client.request("GET", _path(group, version, None, plural, name)))
        except ApiError as err:
            if err.not_found:
                return None
            raise

    async def may(self, query: AccessQuery) -> tuple[bool, str]:
        """Whether the user (with its groups) may do this, by SubjectAccessReview; and why not."""
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": query.user,
                "groups": list(query.groups),
                "resourceAttributes": {
                    "namespace": query.namespace,
                    "verb": query.verb,
                    "group": query.group,
                    "resource": query.resource,
                    "name": query.name,
                },
            },
        }
        result = await self.client.request(
            "POST", _path("authorization.k8s.io", "v1", None, "subjectaccessreviews"), body=review
        )
        status = (result or {}).get("status") or {}
        return bool(status.get("allowed")), str(status.get("reason") or "")

    async def delete(self, kind: str, namespace: str, name: str) -> None:
        group, version, plural = _PLURALS[kind]
        try:
            await self.client.request("DELETE", _path(group, version, namespace, plural, name))
        except ApiError as err:
            if not err.not_found:
                raise
