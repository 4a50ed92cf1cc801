"""A small JSON client for the Kubernetes API and the bot's reads and Events.

The official client's transport does authentication (kubeconfig, in-cluster token refresh);
requests and responses stay plain dicts so the bot controls every byte it sends (timestamps,
resourceVersion preconditions) and tests can substitute an in-memory API with the same
`request` method.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import uuid
from typing import Any, Protocol
from urllib.parse import quote

from tradingbot.clock import utc_now_iso
from tradingbot.constants import (
    API_GROUP,
    API_VERSION,
    EVENT_COMPONENT,
    TRADINGBOT_KIND,
    TRADINGBOT_PLURAL,
)

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_SECONDS = 10.0
IN_CLUSTER_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


class KubeApiError(Exception):
    def __init__(self, status: int, reason: str, body: str = "") -> None:
        super().__init__(f"HTTP {status} {reason}: {body[:300]}")
        self.status = status
        self.reason = reason
        self.body = body


class KubeApi(Protocol):
    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        timeout: float = REQUEST_TIMEOUT_SECONDS,
    ) -> dict[str, Any]: ...


class KubeClient:
    """Raw JSON requests through the official client's authenticated transport.

    `token_file` is the projected ServiceAccount token when running in-cluster; the kubelet
    rotates it, so `bearer_token` reads it again on every call.
    """

    def __init__(self, api_client: Any, token_file: str | None = None) -> None:
        self.api_client = api_client
        self.token_file = token_file

    @classmethod
    def from_environment(cls, kubeconfig: str | None = None) -> KubeClient:
        """KUBECONFIG (or the given path) when set, else the in-cluster service account."""
        from kubernetes import client, config  # lazy: ~1 s of imports

        path = kubeconfig or os.environ.get("KUBECONFIG")
        if path:
            return cls(config.new_client_from_config(config_file=path))
        from kubernetes.config.incluster_config import SERVICE_TOKEN_FILENAME

        configuration = client.Configuration()
        config.load_incluster_config(client_configuration=configuration)
        return cls(client.ApiClient(configuration), token_file=SERVICE_TOKEN_FILENAME)

    def bearer_token(self) -> str | None:
        """The bearer token this client authenticates with (None for client certificates).

        Other services that authenticate the bot by TokenReview (the audit sidecar) get the
        same identity as the API server. Blocking: a file read, or a kubeconfig auth hook.
        """
        if self.token_file:
            with open(self.token_file, encoding="utf-8") as handle:
                return handle.read().strip() or None
        configuration = self.api_client.configuration
        header = configuration.get_api_key_with_prefix("BearerToken", alias="authorization") or ""
        scheme, _, token = header.partition(" ")
        if not token:  # a token without the `Bearer` prefix
            scheme, token = "bearer", scheme
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return token.strip()

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        timeout: float = REQUEST_TIMEOUT_SECONDS,
    ) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        headers = {"Accept": "application/json", "Content-Type": content_type}
        serialized = self.api_client.param_serialize(
            method, path, header_params=headers, body=body, auth_settings=["BearerToken"]
        )
        try:
            response = self.api_client.call_api(*serialized, _request_timeout=timeout)
        except ApiException as exc:
            raise KubeApiError(exc.status or 0, str(exc.reason), str(exc.body or "")) from exc
        raw = response.read()
        if not 200 <= response.status <= 299:
            text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
            raise KubeApiError(response.status, str(response.reason), text)
        if not raw:
            return {}
        result: dict[str, Any] = json.loads(raw)
        return result

    def close(self) -> None:
        self.api_client.close()


def namespaced_path(group_version: str, namespace: str, plural: str, name: str = "") -> str:
    """`/api/v1/...` for the core group, `/apis/<group>/<version>/...` otherwise."""
    prefix = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
    path = f"{prefix}/namespaces/{quote(namespace)}/{plural}"
    return f"{path}/{quote(name)}" if name else path


async def arequest(
    api: KubeApi, method: str, path: str, body: Any = None, **kwargs: Any
) -> dict[str, Any]:
    """`api.request` off the event loop (the transport is blocking)."""
    return await asyncio.to_thread(api.request, method, path, body, **kwargs)


def read_tradingbot(api: KubeApi, namespace: str, name: str) -> dict[str, Any]:
    return api.request(
        "GET", namespaced_path(f"{API_GROUP}/{API_VERSION}", namespace, TRADINGBOT_PLURAL, name)
    )


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
        now = utc_now_iso()
        seconds = now.split(".")[0] + "Z"  # core/v1 timestamps are second precision
        involved: dict[str, Any] = {
            "apiVersion": f"{API_GROUP}/{API_VERSION}",
            "kind": TRADINGBOT_KIND,
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
            "firstTimestamp": seconds,
            "lastTimestamp": seconds,
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
            await arequest(self.api, "POST", namespaced_path("v1", self.namespace, "events"), body)
        except Exception as exc:
            log.warning("could not post Event", extra={"reason": reason, "error": str(exc)})

    async def normal(self, reason: str, message: str) -> None:
        await self.emit("Normal", reason, message)

    async def warning(self, reason: str, message: str) -> None:
        await self.emit("Warning", reason, message)
