"""The bot's Kubernetes API calls: plain JSON over the shared async client
(`tradingbot_api.kubeclient.KubeClient`: one aiohttp session, no thread per call).

`KubeApi` works on any transport with the client's `request` and `stream` methods, so tests
hand it an in-memory API. Requests and responses stay dicts: the bot controls every byte it
sends (timestamps, the resourceVersion preconditions that fence the Lease and the state
ConfigMap). Every failure is a `KubeError` (status 0 when no answer came).
"""

from __future__ import annotations

import inspect
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Final
from urllib.parse import quote

from tradingbot_api.constants import API_GROUP, API_VERSION, KIND, PLURAL
from tradingbot_api.kubeclient import MERGE_PATCH, KubeClient, KubeError
from tradingbot_api.times import kube_time, utc_now

__all__ = [
    "EVENT_COMPONENT",
    "REQUEST_TIMEOUT_SECONDS",
    "EventRecorder",
    "KubeApi",
    "KubeClient",
    "KubeError",
    "default_namespace",
    "namespaced_path",
    "tradingbot_path",
    "watch_query",
]

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_SECONDS: Final = 10.0
TIMEOUT: Final = REQUEST_TIMEOUT_SECONDS
# `source.component` of the bot's Events (`kubectl describe tb` shows it).
EVENT_COMPONENT: Final = "tradingbot"
IN_CLUSTER_NAMESPACE_FILE: Final = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

TokenSource = Callable[[], Awaitable[str | None]]
Body = Mapping[str, Any]
Object = dict[str, Any]


def namespaced_path(
    group_version: str, namespace: str, plural: str, name: str = "", sub: str = ""
) -> str:
    """`/api/v1/...` for the core group, `/apis/<group>/<version>/...` otherwise."""
    prefix = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
    path = f"{prefix}/namespaces/{quote(namespace)}/{plural}"
    if name:
        path += f"/{quote(name)}"
    return f"{path}/{sub}" if sub else path


def tradingbot_path(namespace: str, name: str = "", sub: str = "") -> str:
    return namespaced_path(API_VERSION, namespace, PLURAL, name, sub)


def watch_query(
    name: str, *, resource_version: str = "", timeout_seconds: int = 0
) -> dict[str, str]:
    """The query of a list (no timeout) or watch of one object by name: the fieldSelector
    lets RBAC that names the object (resourceNames) authorize it."""
    query = {"fieldSelector": f"metadata.name={name}"}
    if timeout_seconds:
        query.update(
            watch="true",
            allowWatchBookmarks="true",
            timeoutSeconds=str(timeout_seconds),
            resourceVersion=resource_version,
        )
    return query


def _object(answer: Any) -> Object:
    return dict(answer or {})  # an empty answer body decodes to None


class KubeApi:
    """Typed on the shared client; tests hand it an in-memory API with the same `request`
    and `stream`."""

    def __init__(self, transport: KubeClient) -> None:
        self.transport = transport

    @classmethod
    def from_environment(cls, kubeconfig: str | None = None) -> KubeApi:
        """The given kubeconfig, else KUBECONFIG, else the in-cluster ServiceAccount."""
        return cls(KubeClient.from_environment(kubeconfig))

    async def get(
        self, path: str, *, query: Body | None = None, timeout: float = TIMEOUT
    ) -> Object:
        return _object(await self.transport.request("GET", path, query=query, timeout=timeout))

    async def get_or_none(self, path: str, *, timeout: float = TIMEOUT) -> Object | None:
        try:
            return await self.get(path, timeout=timeout)
        except KubeError as err:
            if err.not_found:
                return None
            raise

    async def create(self, collection: str, body: Body, *, timeout: float = TIMEOUT) -> Object:
        """POST into `collection`; 409 when the object exists."""
        return _object(
            await self.transport.request("POST", collection, body=dict(body), timeout=timeout)
        )

    async def replace(self, path: str, body: Body, *, timeout: float = TIMEOUT) -> Object:
        """PUT; the body's `metadata.resourceVersion` makes it fail with 409 when anyone
        wrote the object since it was read."""
        return _object(await self.transport.request("PUT", path, body=dict(body), timeout=timeout))

    async def merge_patch(self, path: str, patch: Body, *, timeout: float = TIMEOUT) -> Object:
        answer = await self.transport.request(
            "PATCH", path, body=dict(patch), content_type=MERGE_PATCH, timeout=timeout
        )
        return _object(answer)

    def watch(
        self,
        collection: str,
        name: str,
        *,
        resource_version: str,
        timeout_seconds: int,
        read_timeout: float,
    ) -> AsyncIterator[dict[str, Any]]:
        """The events of a watch on one object of `collection`, until the server ends the
        stream after `timeout_seconds`; TimeoutError when nothing arrived for
        `read_timeout` seconds, KubeError when refused or cut."""
        query = watch_query(
            name, resource_version=resource_version, timeout_seconds=timeout_seconds
        )
        return self.transport.stream(collection, query=query, read_timeout=read_timeout)

    def token_source(self) -> TokenSource | None:
        """The transport's bearer token (what other services authenticate the bot by with a
        TokenReview), None when the transport has no such thing."""
        token: TokenSource | None = getattr(self.transport, "bearer_token", None)
        return token

    async def close(self) -> None:
        close = getattr(self.transport, "close", None)
        if close is not None:
            result = close()
            if inspect.isawaitable(result):
                await result


def default_namespace() -> str | None:
    try:
        with open(IN_CLUSTER_NAMESPACE_FILE, encoding="utf-8") as handle:
            return handle.read().strip() or None
    except OSError:
        return None


class EventRecorder:
    """core/v1 Events about this bot's TradingBot (shown by `kubectl describe tb`).

    Failures are logged, never raised: an Event is for humans, trading must not stop for it.
    """

    def __init__(
        self, api: KubeApi, namespace: str, bot: str, *, bot_uid: str = "", pod_name: str = ""
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.bot = bot
        self.bot_uid = bot_uid
        self.pod_name = pod_name

    def body(self, event_type: str, reason: str, message: str) -> dict[str, Any]:
        now = kube_time(utc_now())  # core/v1 Event times are whole seconds
        involved: dict[str, Any] = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": self.bot,
            "namespace": self.namespace,
        }
        if self.bot_uid:
            involved["uid"] = self.bot_uid
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{self.bot}.{uuid.uuid4().hex[:16]}",
                "namespace": self.namespace,
            },
            "involvedObject": involved,
            "type": event_type,
            "reason": reason,
            "message": message[:1024],
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "source": {
                "component": EVENT_COMPONENT,
                **({"host": self.pod_name} if self.pod_name else {}),
            },
            "reportingComponent": f"{API_GROUP}/{EVENT_COMPONENT}",
            "reportingInstance": self.pod_name or EVENT_COMPONENT,
        }

    async def emit(self, event_type: str, reason: str, message: str) -> None:
        body = self.body(event_type, reason, message)
        try:
            await self.api.create(namespaced_path("v1", self.namespace, "events"), body)
        except Exception as exc:
            log.warning("could not post Event", extra={"reason": reason, "error": str(exc)})

    async def normal(self, reason: str, message: str) -> None:
        await self.emit("Normal", reason, message)

    async def warning(self, reason: str, message: str) -> None:
        await self.emit("Warning", reason, message)
