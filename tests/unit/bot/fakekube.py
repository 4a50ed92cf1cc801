"""An in-memory stand-in for the Kubernetes API with the semantics the bot relies on.

Implements `KubeApi.request` for namespaced objects: GET/POST/PUT/PATCH (JSON merge patch),
404 for missing objects, 409 for a create of an existing object or a replace whose
`metadata.resourceVersion` is stale, a fresh resourceVersion on every write, and a `/status`
subresource. Failures can be injected per method.
"""

from __future__ import annotations

import copy
import itertools
import json
import threading
from collections.abc import Callable
from typing import Any

from tradingbot.kube import KubeApiError

Key = tuple[str, str, str, str]  # (group/version, namespace, plural, name)


def _parse(path: str) -> tuple[str, str, str, str, str]:
    parts = path.strip("/").split("/")
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
        self._lock = threading.Lock()
        self.calls: list[tuple[str, str]] = []
        # method -> how many upcoming calls fail with HTTP 500
        self.fail: dict[str, int] = {}
        # called before each request; may raise to simulate any failure
        self.hook: Callable[[str, str, Any], None] | None = None

    # -- direct access for tests
    def put_object(
        self, group_version: str, namespace: str, plural: str, obj: dict[str, Any]
    ) -> dict[str, Any]:
        obj = copy.deepcopy(obj)
        obj.setdefault("metadata", {})["resourceVersion"] = str(next(self._rv))
        obj["metadata"].setdefault("uid", f"uid-{obj['metadata']['name']}")
        self.objects[(group_version, namespace, plural, obj["metadata"]["name"])] = obj
        return copy.deepcopy(obj)

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

    # -- KubeApi
    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        timeout: float = 10.0,
    ) -> dict[str, Any]:
        self.calls.append((method, path))
        if self.hook is not None:
            self.hook(method, path, body)
        if self.fail.get(method, 0) > 0:
            self.fail[method] -= 1
            raise KubeApiError(500, "Internal Server Error", "injected failure")
        body = json.loads(json.dumps(body)) if body is not None else None  # like the wire
        gv, ns, plural, name, sub = _parse(path)
        with self._lock:
            if method == "POST":
                name = body["metadata"]["name"]
                key = (gv, ns, plural, name)
                if key in self.objects and plural != "events":
                    raise KubeApiError(409, "Conflict", "AlreadyExists")
                return self.put_object(gv, ns, plural, body)
            key = (gv, ns, plural, name)
            current = self.objects.get(key)
            if current is None:
                raise KubeApiError(404, "Not Found", f"{plural} {name} not found")
            if method == "GET":
                return copy.deepcopy(current)
            if method == "PUT":
                sent_rv = (body.get("metadata") or {}).get("resourceVersion")
                if sent_rv is not None and sent_rv != current["metadata"]["resourceVersion"]:
                    raise KubeApiError(409, "Conflict", "the object has been modified")
                if sub == "status":
                    body = {**current, "status": body.get("status")}
                else:
                    body = (
                        {**body, "status": current.get("status")} if "status" in current else body
                    )
                body["metadata"] = {**current["metadata"], **body["metadata"]}
                return self.put_object(gv, ns, plural, body)
            if method == "PATCH":
                if "merge-patch" not in content_type:
                    raise KubeApiError(415, "Unsupported Media Type", content_type)
                if sub != "status" and "status" in body:
                    body = {k: v for k, v in body.items() if k != "status"}
                patched = merge_patch(current, body)
                return self.put_object(gv, ns, plural, patched)
            raise KubeApiError(405, "Method Not Allowed", method)
