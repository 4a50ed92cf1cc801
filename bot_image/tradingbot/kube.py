"""A small JSON client for the Kubernetes API and the bot's reads and Events.

The official client's transport does authentication (kubeconfig, in-cluster token refresh);
requests and responses stay plain dicts so the bot controls every byte it sends (timestamps,
resourceVersion preconditions) and tests can substitute an in-memory API with the same
`request` method.

Watches (`watch`) are streamed with aiohttp on the event loop, with the same server, CA,
client certificate and bearer token as the official client: a watch is long-lived and must
be cancellable at once, which a blocking transport on a worker thread is not.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
import uuid
from collections.abc import AsyncIterator
from typing import Any, Protocol
from urllib.parse import quote, urlencode

import aiohttp

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
# One watch event is one object; etcd stores at most 1.5 MiB per object.
MAX_WATCH_EVENT_BYTES = 4 * 1024 * 1024
WATCH_CONNECT_TIMEOUT_SECONDS = 5.0
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


class KubeWatchApi(Protocol):
    def watch(self, path: str, *, read_timeout: float) -> AsyncIterator[dict[str, Any]]:
        """The events of a watch request (`path` with its query), until the server ends the
        stream; raises KubeApiError for an HTTP error and TimeoutError when nothing arrived
        for `read_timeout` seconds."""
        ...


def split_lines(buffer: bytes, limit: int = MAX_WATCH_EVENT_BYTES) -> tuple[list[bytes], bytes]:
    """Complete non-empty lines of `buffer` and the incomplete rest; ValueError when the rest
    grew past `limit` (no object is that large: the stream is not what it should be)."""
    *lines, rest = buffer.split(b"\n")
    if len(rest) > limit:
        raise ValueError(f"watch event larger than {limit} bytes")
    return [line for line in lines if line.strip()], rest


class KubeClient:
    """Raw JSON requests through the official client's authenticated transport.

    `token_file` is the projected ServiceAccount token when running in-cluster; the kubelet
    rotates it, so `bearer_token` reads it again on every call.
    """

    def __init__(self, api_client: Any, token_file: str | None = None) -> None:
        self.api_client = api_client
        self.token_file = token_file
        self._session: aiohttp.ClientSession | None = None
        self._ssl: ssl.SSLContext | bool | None = None

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

    def _ssl_context(self) -> ssl.SSLContext | bool:
        """TLS as the official client does it: the kubeconfig's CA and client certificate
        (files written by the config loader), verification unless the kubeconfig turns it
        off. Blocking: reads files."""
        cfg = self.api_client.configuration
        if not str(cfg.host).startswith("https"):
            return False
        context = ssl.create_default_context(cafile=cfg.ssl_ca_cert or None)
        if not cfg.verify_ssl:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if cfg.cert_file:
            context.load_cert_chain(cfg.cert_file, cfg.key_file or None)
        return context

    async def watch(self, path: str, *, read_timeout: float) -> AsyncIterator[dict[str, Any]]:
        cfg = self.api_client.configuration
        if self._ssl is None:
            self._ssl = await asyncio.to_thread(self._ssl_context)
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        token = await asyncio.to_thread(self.bearer_token)
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        timeout = aiohttp.ClientTimeout(
            total=None, connect=WATCH_CONNECT_TIMEOUT_SECONDS, sock_read=read_timeout
        )
        options: dict[str, Any] = {}
        server_name = getattr(cfg, "tls_server_name", None)
        if server_name:
            options["server_hostname"] = server_name
        if getattr(cfg, "proxy", None):
            options["proxy"] = cfg.proxy
        url = str(cfg.host).rstrip("/") + path
        try:
            async with self._session.get(
                url, headers=headers, timeout=timeout, ssl=self._ssl, **options
            ) as response:
                if response.status != 200:
                    text = (await response.content.read(4096)).decode(errors="replace")
                    raise KubeApiError(response.status, response.reason or "", text)
                rest = b""
                async for chunk in response.content.iter_any():
                    lines, rest = split_lines(rest + chunk)
                    for line in lines:
                        yield json.loads(line)
        except aiohttp.ServerTimeoutError as exc:
            raise TimeoutError(f"watch silent for {read_timeout:g}s") from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def namespaced_path(group_version: str, namespace: str, plural: str, name: str = "") -> str:
    """`/api/v1/...` for the core group, `/apis/<group>/<version>/...` otherwise."""
    prefix = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
    path = f"{prefix}/namespaces/{quote(namespace)}/{plural}"
    return f"{path}/{quote(name)}" if name else path


def watch_query(name: str, *, resource_version: str = "", timeout_seconds: int = 0) -> str:
    """The query of a list (no timeout) or watch of one object by name: the fieldSelector
    lets RBAC that names the object (resourceNames) authorize it."""
    params = {"fieldSelector": f"metadata.name={name}"}
    if timeout_seconds:
        params.update(
            watch="true",
            allowWatchBookmarks="true",
            timeoutSeconds=str(timeout_seconds),
            resourceVersion=resource_version,
        )
    return "?" + urlencode(params)


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
