"""An in-memory stand-in for the Kubernetes API with the semantics the bot relies on.

A transport for `tradingbot.kube.KubeApi`: the `request` and `stream` methods of
`tradingbot_api.kubeclient.KubeClient`, for namespaced objects. GET/POST/PUT/PATCH (JSON merge
patch), 404 for missing objects, 409 for a create of an existing object or a replace whose
`metadata.resourceVersion` is stale, a fresh resourceVersion on every write, and a `/status`
subresource. Failures can be injected per method (`fail`), and `hook` runs before each
request (it may raise, or be a coroutine function and wait).

Lists by `fieldSelector=metadata.name=...` and `stream` (watches) send the changes of one
object from a resourceVersion (ADDED/MODIFIED/DELETED, a bookmark at the server's timeout,
then a clean end); `freeze_watches` makes every watch hang without a word, like a cut
connection, and `watch_error` answers the next watch with an HTTP error.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import itertools
import json
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from tradingbot_api.kubeclient import JSON, KubeError

Key = tuple[str, str, str, str]  # (group/version, namespace, plural, name)


def _parse(path: str) -> tuple[str, str, str, str, str]:
    parts = urlsplit(path).path.strip("/").split("/")
    if parts[0] == "api":
        group_version, rest = parts[1], parts[2:]
    else:
        group_version, rest = f"{parts[1]}/{parts[2]}", parts[3:]
    if rest[0] != "namespaces":
        raise ValueError(f"only namespaced paths: {path}")
    namespace, plural = rest[1], rest[2]
    name = rest[3] if len(rest) > 3 else ""
    sub = rest[4] if len(rest) > 4 else ""
    return group_version, namespace, plural, name, sub


def with_query(path: str, query: Mapping[str, Any] | None) -> str:
    """The request's URL path and query, as a server would see it."""
    params = {k: v for k, v in (query or {}).items() if v is not None}
    if not params:
        return path
    return path + ("&" if "?" in path else "?") + urlencode(params)


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class FakeKube:
    def __init__(self) -> None:
        self.objects: dict[Key, dict[str, Any]] = {}
        self._rv = itertools.count(1)
        self.calls: list[tuple[str, str]] = []
        # method -> how many upcoming calls fail with HTTP 500
        self.fail: dict[str, int] = {}
        # called before each request; may raise to simulate any failure, or wait (async)
        self.hook: Callable[[str, str, Any], Any] | None = None
        # (resourceVersion, event type, key, object) of every write, for watches
        self.history: list[tuple[int, str, Key, dict[str, Any]]] = []
        self.freeze_watches = False
        self.watch_error: int | None = None
        self.watches_opened = 0

    # -- direct access for tests
    def put_object(
        self, group_version: str, namespace: str, plural: str, obj: dict[str, Any]
    ) -> dict[str, Any]:
        obj = copy.deepcopy(obj)
        rv = next(self._rv)
        obj.setdefault("metadata", {})["resourceVersion"] = str(rv)
        obj["metadata"].setdefault("uid", f"uid-{obj['metadata']['name']}")
        key = (group_version, namespace, plural, obj["metadata"]["name"])
        kind = "MODIFIED" if key in self.objects else "ADDED"
        self.objects[key] = obj
        self.history.append((rv, kind, key, copy.deepcopy(obj)))
        return copy.deepcopy(obj)

    def delete_object(self, group_version: str, namespace: str, plural: str, name: str) -> None:
        key = (group_version, namespace, plural, name)
        obj = self.objects.pop(key)
        rv = next(self._rv)
        obj["metadata"]["resourceVersion"] = str(rv)
        self.history.append((rv, "DELETED", key, copy.deepcopy(obj)))

    def annotate(self, group_version: str, plural: str, name: str, **values: str | None) -> None:
        """Set (or with None remove) annotations by a merge patch, as a user would."""
        namespace = next(k[1] for k in self.objects if k[0] == group_version and k[3] == name)
        path = f"/apis/{group_version}/namespaces/{namespace}/{plural}/{name}"
        if group_version == "v1":
            path = f"/api/v1/namespaces/{namespace}/{plural}/{name}"
        self.handle(
            "PATCH",
            path,
            {"metadata": {"annotations": values}},
            content_type="application/merge-patch+json",
        )

    def current_rv(self) -> int:
        return self.history[-1][0] if self.history else 0

    async def stream(
        self, path: str, *, query: Mapping[str, Any] | None = None, read_timeout: float = 60.0
    ) -> AsyncIterator[dict[str, Any]]:
        path = with_query(path, query)
        self.calls.append(("WATCH", path))
        self.watches_opened += 1
        if self.watch_error is not None:
            status, self.watch_error = self.watch_error, None
            raise KubeError(status, "injected", "injected watch failure")
        gv, ns, plural, _, _ = _parse(path)
        params = parse_qs(urlsplit(path).query)
        name = params["fieldSelector"][0].partition("=")[2]
        since = int(params.get("resourceVersion", ["0"])[0] or 0)
        timeout = float(params.get("timeoutSeconds", ["10"])[0])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        quiet_since = loop.time()
        while True:
            if self.freeze_watches:  # not even the server's timeout ends a cut connection
                if loop.time() - quiet_since > read_timeout:
                    raise TimeoutError("watch silent")
                await asyncio.sleep(0.005)
                continue
            if loop.time() >= deadline:
                break
            for rv, kind, key, obj in list(self.history):
                if rv > since and key == (gv, ns, plural, name):
                    since = rv
                    quiet_since = loop.time()
                    yield {"type": kind, "object": copy.deepcopy(obj)}
            await asyncio.sleep(0.005)
        bookmark = {"kind": "Bookmark", "metadata": {"resourceVersion": str(self.current_rv())}}
        yield {"type": "BOOKMARK", "object": bookmark}

    def get_object(
        self, group_version: str, namespace: str, plural: str, name: str
    ) -> dict[str, Any] | None:
        obj = self.objects.get((group_version, namespace, plural, name))
        return copy.deepcopy(obj) if obj is not None else None

    def list_objects(self, group_version: str, namespace: str, plural: str) -> list[dict[str, Any]]:
        return [
            copy.deepcopy(o)
            for (gv, ns, pl, _), o in self.objects.items()
            if (gv, ns, pl) == (group_version, namespace, plural)
        ]

    # -- the transport
    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: Mapping[str, Any] | None = None,
        content_type: str = JSON,
        timeout: float = 10.0,  # noqa: ASYNC109 - the signature of KubeClient.request
    ) -> Any:
        path = with_query(path, query)
        self.calls.append((method, path))
        if self.hook is not None:
            waited = self.hook(method, path, body)
            if inspect.isawaitable(waited):
                await waited
        if self.fail.get(method, 0) > 0:
            self.fail[method] -= 1
            raise KubeError(500, "Internal Server Error", "injected failure")
        return self.handle(method, path, body, content_type=content_type)

    def handle(
        self, method: str, path: str, body: Any = None, *, content_type: str = JSON
    ) -> dict[str, Any]:
        """One request as the API server answers it (no hook, no injected failure)."""
        body = json.loads(json.dumps(body)) if body is not None else None  # like the wire
        gv, ns, plural, name, sub = _parse(path)
        if method == "GET" and not name:
            return self._list(gv, ns, plural, parse_qs(urlsplit(path).query))
        if method == "POST":
            name = body["metadata"]["name"]
            key = (gv, ns, plural, name)
            if key in self.objects and plural != "events":
                raise KubeError(409, "Conflict", "AlreadyExists")
            return self.put_object(gv, ns, plural, body)
        key = (gv, ns, plural, name)
        current = self.objects.get(key)
        if current is None:
            raise KubeError(404, "Not Found", f"{plural} {name} not found")
        if method == "GET":
            return copy.deepcopy(current)
        if method == "PUT":
            sent_rv = (body.get("metadata") or {}).get("resourceVersion")
            if sent_rv is not None and sent_rv != current["metadata"]["resourceVersion"]:
                raise KubeError(409, "Conflict", "the object has been modified")
            if sub == "status":
                body = {**current, "status": body.get("status")}
            else:
                body = {**body, "status": current.get("status")} if "status" in current else body
            body["metadata"] = {**current["metadata"], **body["metadata"]}
            return self.put_object(gv, ns, plural, body)
        if method == "PATCH":
            if "merge-patch" not in content_type:
                raise KubeError(415, "Unsupported Media Type", content_type)
            if sub != "status" and "status" in body:
                body = {k: v for k, v in body.items() if k != "status"}
            patched = merge_patch(current, body)
            return self.put_object(gv, ns, plural, patched)
        raise KubeError(405, "Method Not Allowed", method)

    def _list(self, gv: str, ns: str, plural: str, query: dict[str, list[str]]) -> dict[str, Any]:
        items = self.list_objects(gv, ns, plural)
        selector = (query.get("fieldSelector") or [""])[0]
        if selector.startswith("metadata.name="):
            wanted = selector.partition("=")[2]
            items = [o for o in items if o["metadata"]["name"] == wanted]
        return {
            "kind": "List",
            "metadata": {"resourceVersion": str(self.current_rv())},
            "items": items,
        }
