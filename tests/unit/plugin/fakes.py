"""Loopback stand-ins for the two servers the plugin talks to, recording what it sends.

`FakeKubeApi` serves the shared fake API server (tests/fakeapi.py) over HTTP, so the wire
format the plugin's client sends (path, fieldManager, User-Agent, Content-Type, body) is
checked without a cluster; the real API server is exercised by tests/integration/plugin.
`FakeAuditApi` serves the audit read API contract (/v1/events, /v1/summary, /v1/verify).
"""

from __future__ import annotations

import contextlib
import json
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from tests.fakeapi import FakeApiServer, merge_patch, parse_path
from tradingbot_api.kubeclient import KubeError

TOKEN = "s3cr3t-token-value"
BOT_PATH = "/apis/trading.r7.dev/v1alpha1/namespaces/{ns}/tradingbots"


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


def canonical_headers(request: BaseHTTPRequestHandler) -> dict[str, str]:
    """Header names are case-insensitive; store them as `Content-Type`, `Authorization`."""
    return {name.title(): value for name, value in request.headers.items()}


def status_body(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


class _ConfigMaps:
    """`fake.configmaps[(namespace, name)] = obj` stores a ConfigMap in the shared fake."""

    def __init__(self, store: FakeApiServer) -> None:
        self.store = store

    def __setitem__(self, key: tuple[str, str], obj: dict[str, Any]) -> None:
        namespace, name = key
        meta = {**obj.get("metadata", {}), "namespace": namespace, "name": name}
        self.store.put({"apiVersion": "v1", "kind": "ConfigMap", **obj, "metadata": meta})


@dataclass
class FakeKubeApi:
    """The shared fake API server (tests/fakeapi.py) over HTTP; `forbidden` verbs answer 403
    like RBAC does."""

    store: FakeApiServer = field(default_factory=FakeApiServer)
    forbidden: set[str] = field(default_factory=set)
    requests: list[Recorded] = field(default_factory=list)
    url: str = ""

    @property
    def bots(self) -> dict[tuple[str, str], dict[str, Any]]:
        return {
            (b["metadata"]["namespace"], b["metadata"]["name"]): b
            for b in self.store.all("TradingBot")
        }

    @property
    def configmaps(self) -> _ConfigMaps:
        return _ConfigMaps(self.store)

    def add_bot(self, namespace: str, name: str, **extra: Any) -> dict[str, Any]:
        bot: dict[str, Any] = {
            "apiVersion": "trading.r7.dev/v1alpha1",
            "kind": "TradingBot",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "creationTimestamp": "2025-01-01T00:00:00Z",
                "labels": {},
                "annotations": {},
            },
            "spec": {
                "profile": "stable",
                "exchange": {"id": "binance", "mode": "paper"},
                "symbols": ["BTC/USDT"],
                "suspend": False,
            },
        }
        return self.store.put(merge_patch(bot, extra))

    def writes(self) -> list[Recorded]:
        return [r for r in self.requests if r.method != "GET"]

    def handle(
        self,
        method: str,
        path: str,
        query: dict[str, list[str]],
        body: Any,
        content_type: str = "application/json",
    ) -> tuple[int, Any]:
        refusal = self._forbidden(method, path)
        if refusal is not None:
            return 403, refusal
        try:
            answer = self.store.handle(
                method,
                path,
                body=body,
                query={k: v[0] for k, v in query.items()},
                content_type=content_type,
            )
        except KubeError as err:
            return err.status, json.loads(err.body)
        return 200, answer

    def _forbidden(self, method: str, path: str) -> dict[str, Any] | None:
        user = "system:serviceaccount:default:tester"
        target = parse_path(path)
        if target.plural == "configmaps":
            if "get-configmap" not in self.forbidden:
                return None
            return status_body(
                403,
                "Forbidden",
                f'configmaps "{target.name}" is forbidden: '
                f'User "{user}" cannot get resource "configmaps"',
            )
        verb = {"GET": "get" if target.name else "list"}.get(method, method.lower())
        if verb not in self.forbidden:
            return None
        if not target.name:
            return status_body(
                403,
                "Forbidden",
                f'tradingbots.trading.r7.dev is forbidden: User "{user}" cannot {verb} resource',
            )
        return status_body(
            403,
            "Forbidden",
            f'tradingbots.trading.r7.dev "{target.name}" is forbidden: User '
            f'"{user}" cannot {verb} resource "tradingbots" in API group "trading.r7.dev" '
            f'in the namespace "{target.namespace}"',
        )


def _serve(handler_for: Callable[[BaseHTTPRequestHandler, str], None]) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            handler_for(self, "GET")

        def do_PATCH(self) -> None:
            handler_for(self, "PATCH")

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output clean

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
    ).start()
    return server


def _reply(request: BaseHTTPRequestHandler, code: int, payload: Any) -> None:
    data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
    request.send_response(code)
    request.send_header("Content-Type", "application/json")
    request.send_header("Content-Length", str(len(data)))
    request.end_headers()
    request.wfile.write(data)


@contextlib.contextmanager
def running_fake_kube() -> Iterator[FakeKubeApi]:
    api = FakeKubeApi()

    def handle(request: BaseHTTPRequestHandler, method: str) -> None:
        url = urllib.parse.urlsplit(request.path)
        length = int(request.headers.get("Content-Length") or 0)
        raw = request.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        api.requests.append(
            Recorded(
                method, url.path, urllib.parse.parse_qs(url.query), canonical_headers(request), body
            )
        )
        content_type = request.headers.get("Content-Type") or "application/json"
        code, payload = api.handle(
            method, url.path, urllib.parse.parse_qs(url.query), body, content_type
        )
        _reply(request, code, payload)

    server = _serve(handle)
    api.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield api
    finally:
        server.shutdown()
        server.server_close()


def write_kubeconfig(
    path: Path,
    server: str,
    *,
    token: str | None = TOKEN,
    namespace: str | None = "trading",
    cert_user: bool = False,
) -> Path:
    user: dict[str, str] = {}
    if token:
        user["token"] = token
    if cert_user:
        # Any bytes do: the client only writes them to a file until it connects.
        user["client-certificate-data"] = "Y2VydA=="
        user["client-key-data"] = "a2V5"
    context: dict[str, str] = {"cluster": "fake", "user": "tester"}
    if namespace:
        context["namespace"] = namespace
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": server}}],
                "users": [{"name": "tester", "user": user}],
                "contexts": [
                    {"name": "fake", "context": context},
                    {"name": "other", "context": {"cluster": "fake", "user": "tester"}},
                ],
                "current-context": "fake",
            }
        )
    )
    return path


AUDIT_EVENTS: list[dict[str, Any]] = [
    {
        "seq": 3,
        "timestamp": "2025-01-01T12:00:03.000000Z",
        "event_type": "halt",
        "severity": "critical",
        "source": "plugin",
        "target": "meme",
        "action": "halt_requested",
        "details": {"reason": "exchange outage"},
        "user_id": "alice",
        "namespace": "trading",
        "dedup_key": None,
        "prev_hash": "b",
        "hash": "c",
    },
    {
        "seq": 2,
        "timestamp": "2025-01-01T12:00:02.000000Z",
        "event_type": "restart",
        "severity": "info",
        "source": "operator",
        "target": "stable",
        "action": "restart_completed",
        "details": {},
        "user_id": None,
        "namespace": "trading",
        "dedup_key": None,
        "prev_hash": "a",
        "hash": "b",
    },
    {
        "seq": 1,
        "timestamp": "2025-01-01T12:00:01.000000Z",
        "event_type": "config_change",
        "severity": "info",
        "source": "kubectl",
        "target": "stable",
        "action": "spec_changed",
        "details": {},
        "user_id": "bob",
        "namespace": "trading",
        "dedup_key": None,
        "prev_hash": "0",
        "hash": "a",
    },
]


@dataclass
class FakeAuditApi:
    """The audit read API; requests without the expected bearer token get 401."""

    token: str | None = TOKEN
    verify_ok: bool = True
    requests: list[Recorded] = field(default_factory=list)
    url: str = ""
    status_override: int | None = None

    def handle(self, path: str, query: dict[str, list[str]]) -> tuple[int, Any]:
        if self.status_override:
            return self.status_override, {"error": "nope"}
        if path == "/v1/events":
            events = AUDIT_EVENTS
            if "type" in query:
                events = [e for e in events if e["event_type"] == query["type"][0]]
            limit = int(query.get("limit", ["100"])[0])
            return 200, {"events": events[:limit] if limit else events}
        if path == "/v1/summary":
            return 200, {
                "total": 3,
                "by_type": {"halt": 1, "restart": 1, "config_change": 1},
                "by_severity": {"info": 2, "critical": 1},
                "by_source": {"plugin": 1, "operator": 1, "kubectl": 1},
                "by_target": {"stable": 2, "meme": 1},
            }
        if path == "/v1/verify":
            if self.verify_ok:
                return 200, {
                    "ok": True,
                    "summary": "ok: 3 events in 1 files, last seq 3",
                    "error": None,
                }
            return 200, {
                "ok": False,
                "summary": "FAILED: audit-1.jsonl:2 (seq 2): hash mismatch",
                "error": {"file": "audit-1.jsonl", "line": 2, "seq": 2, "reason": "hash mismatch"},
            }
        return 404, {"error": "no such endpoint"}


@contextlib.contextmanager
def running_fake_audit() -> Iterator[FakeAuditApi]:
    api = FakeAuditApi()

    def handle(request: BaseHTTPRequestHandler, method: str) -> None:
        url = urllib.parse.urlsplit(request.path)
        query = urllib.parse.parse_qs(url.query)
        api.requests.append(Recorded(method, url.path, query, canonical_headers(request), None))
        expected = f"Bearer {api.token}" if api.token else None
        if request.headers.get("Authorization") != expected or expected is None:
            _reply(request, 401, {"error": "unauthorized"})
            return
        code, payload = api.handle(url.path, query)
        _reply(request, code, payload)

    server = _serve(handle)
    api.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield api
    finally:
        server.shutdown()
        server.server_close()
