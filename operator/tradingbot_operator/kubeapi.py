"""The few API calls the operator makes, as plain JSON over the official client's transport.

Raw JSON (no generated models) keeps memory and CPU low at a thousand bots and lets every
call say exactly what it means: uid preconditions on delete, resourceVersion on status
patches, server-side apply for the objects the operator owns.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from kubernetes import client, config

from tradingbot_api.constants import API_GROUP, LABEL_BOT, PLURAL, VERSION

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


class ApiError(Exception):
    def __init__(self, status: int, reason: str, body: str) -> None:
        super().__init__(f"{status} {reason}: {body[:500]}")
        self.status = status
        self.reason = reason
        self.body = body

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409


def api_message(err: ApiError) -> str:
    """The `message` of the Status the API server answered with, else the raw body."""
    try:
        return str(json.loads(err.body).get("message") or err.body)
    except (ValueError, AttributeError):
        return err.body


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
    def __init__(self, api_client: client.ApiClient) -> None:
        self.api_client = api_client

    @classmethod
    def from_environment(cls) -> KubeApi:
        """In-cluster credentials when running in a pod, else the current kubeconfig."""
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        return cls(client.ApiClient())

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: Mapping[str, Any] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        return await asyncio.to_thread(self._request, method, path, body, query, content_type)

    def _request(
        self, method: str, path: str, body: Any, query: Mapping[str, Any] | None, content_type: str
    ) -> Any:
        params = [(k, v) for k, v in (query or {}).items() if v is not None]
        method, url, headers, payload, _ = self.api_client.param_serialize(
            method=method,
            resource_path=path,
            query_params=params,
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self.api_client.call_api(
            method, url, header_params=headers, body=payload, _request_timeout=REQUEST_TIMEOUT
        )
        data = response.read()
        if not 200 <= response.status < 300:
            raise ApiError(
                int(response.status),
                str(response.reason),
                data.decode(errors="replace") if data else "",
            )
        return json.loads(data) if data else None

    # -- TradingBots --------------------------------------------------------------------

    async def get_bot(self, namespace: str, name: str) -> dict[str, Any]:
        return dict(await self.request("GET", _path(API_GROUP, VERSION, namespace, PLURAL, name)))

    async def list_bots(self, namespace: str | None = None) -> list[dict[str, Any]]:
        result = await self.request("GET", _path(API_GROUP, VERSION, namespace, PLURAL))
        return list(result.get("items") or [])

    async def patch_bot_status(
        self, namespace: str, name: str, patch: Mapping[str, Any], resource_version: str | None
    ) -> dict[str, Any]:
        """Merge-patch the status; with resource_version, fail on a concurrent change."""
        body: dict[str, Any] = {"status": dict(patch)}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        return dict(
            await self.request(
                "PATCH",
                _path(API_GROUP, VERSION, namespace, PLURAL, name, "status"),
                body=body,
                content_type="application/merge-patch+json",
            )
        )

    async def patch_bot(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        await self.request(
            "PATCH",
            _path(API_GROUP, VERSION, namespace, PLURAL, name),
            body=dict(patch),
            content_type="application/merge-patch+json",
        )

    # -- pods ---------------------------------------------------------------------------

    async def list_bot_pods(self, namespace: str, bot: str) -> list[dict[str, Any]]:
        result = await self.request(
            "GET", _path("", "v1", namespace, "pods"), query={"labelSelector": f"{LABEL_BOT}={bot}"}
        )
        return list(result.get("items") or [])

    async def create(self, obj: Mapping[str, Any], *, dry_run: bool = False) -> dict[str, Any]:
        """Create an object; with dry_run, only ask the API server (schema, admission,
        Pod Security) whether it would accept it."""
        group, version, plural = _PLURALS[str(obj["kind"])]
        namespace = obj["metadata"].get("namespace")
        return dict(
            await self.request(
                "POST",
                _path(group, version, namespace, plural),
                body=dict(obj),
                query={"dryRun": "All"} if dry_run else None,
            )
        )

    async def delete_pod(self, namespace: str, name: str, uid: str, grace: int) -> None:
        """Delete exactly this pod (uid precondition), with its grace period."""
        body = {
            "kind": "DeleteOptions",
            "apiVersion": "v1",
            "gracePeriodSeconds": grace,
            "preconditions": {"uid": uid},
        }
        try:
            await self.request("DELETE", _path("", "v1", namespace, "pods", name), body=body)
        except ApiError as err:
            if err.not_found or err.conflict:  # already gone, or a different pod by now
                return
            raise

    async def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply of an object the operator owns."""
        group, version, plural = _PLURALS[str(obj["kind"])]
        meta = obj["metadata"]
        return dict(
            await self.request(
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
        return dict(await self.request("GET", _path(group, version, namespace, plural, name)))

    async def merge_patch(
        self, kind: str, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> dict[str, Any]:
        group, version, plural = _PLURALS[kind]
        return dict(
            await self.request(
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
            return dict(await self.request("GET", _path(group, version, None, plural, name)))
        except ApiError as err:
            if err.not_found:
                return None
            raise

    async def may(
        self,
        user: str,
        groups: tuple[str, ...],
        *,
        verb: str,
        resource: str,
        namespace: str,
        name: str = "",
        group: str = "",
    ) -> tuple[bool, str]:
        """Whether `user` (with `groups`) may do this, by SubjectAccessReview; and why not."""
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": user,
                "groups": list(groups),
                "resourceAttributes": {
                    "namespace": namespace,
                    "verb": verb,
                    "group": group,
                    "resource": resource,
                    "name": name,
                },
            },
        }
        result = await self.request(
            "POST", _path("authorization.k8s.io", "v1", None, "subjectaccessreviews"), body=review
        )
        status = (result or {}).get("status") or {}
        return bool(status.get("allowed")), str(status.get("reason") or "")

    async def delete(self, kind: str, namespace: str, name: str) -> None:
        group, version, plural = _PLURALS[kind]
        try:
            await self.request("DELETE", _path(group, version, namespace, plural, name))
        except ApiError as err:
            if not err.not_found:
                raise
