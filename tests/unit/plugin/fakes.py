"""Loopback stand-ins for the two servers the plugin talks to, recording what it sends.

`FakeKubeApi` answers the handful of TradingBot calls (get, list, merge patch) the way the
API server does, so the wire format (path, fieldManager, User-Agent, Content-Type, body) is
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


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386, as the API server applies application/merge-patch+json."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def status_body(code: int, reason: str, message: str, name: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if name:
        body["details"] = {"name": name, "group": "trading.r7.dev", "kind": "tradingbots"}
    return body


@dataclass
class FakeKubeApi:
    """In-memory TradingBots per namespace; `forbidden` verbs answer 403 like RBAC does."""

    bots: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    configmaps: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    forbidden: set[str] = field(default_factory=set)
    requests: list[Recorded] = field(default_factory=list)
    url: str = ""

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
                "resourceVersion": "1",
            },
            "spec": {
                "profile": "stable",
                "exchange": {"id": "binance", "mode": "paper"},
                "symbols": ["BTC/USDT"],
                "suspend": False,
            },
        }
        bot = merge_patch(bot, extra)
        self.bots[(namespace, name)] = bot
        return bot

    def writes(self) -> list[Recorded]:
        return [r for r in self.requests if r.method != "GET"]

    def handle(
        self, method: str, path: str, query: dict[str, list[str]], body: Any
    ) -> tuple[int, Any]:
        user = "system:serviceaccount:default:tester"
        parts = path.strip("/").split("/")
        if (
            parts[:3] == ["api", "v1", "namespaces"]
            and len(parts) == 6
            and parts[4] == "configmaps"
        ):
            namespace, name = parts[3], parts[5]
            if "get-configmap" in self.forbidden:
                return 403, status_body(
                    403,
                    "Forbidden",
                    f'configmaps "{name}" is forbidden: '
                    f'User "{user}" cannot get resource "configmaps"',
                )
            configmap = self.configmaps.get((namespace, name))
            if configmap is None:
                return 404, status_body(404, "NotFound", f'configmaps "{name}" not found', name)
            return 200, configmap
        if parts[:3] != ["apis", "trading.r7.dev", "v1alpha1"]:
            return 404, "404 page not found"
        if parts[3] == "tradingbots":  # cluster-wide list
            items = list(self.bots.values())
            return 200, self._list(items, query)
        namespace = parts[4]
        verb = {"GET": "get", "PATCH": "patch"}.get(method, method.lower())
        if len(parts) == 6:
            verb = "list" if method == "GET" else verb
            if verb in self.forbidden:
                return 403, status_body(
                    403,
                    "Forbidden",
                    f"tradingbots.trading.r7.dev is "
                    f'forbidden: User "{user}" cannot {verb} resource',
                )
            items = [b for (ns, _n), b in self.bots.items() if ns == namespace]
            return 200, self._list(items, query)
        name = parts[6]
        if verb in self.forbidden:
            return 403, status_body(
                403,
                "Forbidden",
                f'tradingbots.trading.r7.dev "{name}" is forbidden: User '
                f'"{user}" cannot {verb} resource "tradingbots" in API group "trading.r7.dev" '
                f'in the namespace "{namespace}"',
            )
        bot = self.bots.get((namespace, name))
        if bot is None:
            return 404, status_body(
                404, "NotFound", f'tradingbots.trading.r7.dev "{name}" not found', name
            )
        if method == "PATCH":
            bot = merge_patch(bot, body)
            self.bots[(namespace, name)] = bot
        return 200, bot

    def _list(self, items: list[dict[str, Any]], query: dict[str, list[str]]) -> dict[str, Any]:
        selector = (query.get("labelSelector") or [""])[0]
        if selector:
            key, _, value = selector.partition("=")
            items = [b for b in items if b["metadata"].get("labels", {}).get(key) == value]
        return {
            "apiVersion": "trading.r7.dev/v1alpha1",
            "kind": "TradingBotList",
            "metadata": {"resourceVersion": "10"},
            "items": items,
        }


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
        code, payload = api.handle(method, url.path, urllib.parse.parse_qs(url.query), body)
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
