"""One in-memory stand-in for the Kubernetes API server, for unit tests of every program.

It answers at the level of `tradingbot_api.kubeclient.KubeClient` (`request`, `stream`), so
the code under test builds real paths, queries and bodies, and it keeps the rules the
programs rely on, the way the API server does:

- every write gets a new `resourceVersion`; a merge patch, replace or delete that names a
  `metadata.resourceVersion` (or a delete precondition `uid`) that no longer matches is
  409 Conflict, so two writers can never both win;
- create of an existing name is 409 AlreadyExists; `generateName` works; a create or delete
  with `dryRun=All` stores nothing;
- `/status` is a subresource for the kinds that have one: a main-resource write leaves
  status alone, a status write leaves everything else alone; `metadata.generation` moves
  only with `spec`;
- a delete of an object with finalizers, or of a pod with a grace period while
  `graceful_pods` is set, only sets `deletionTimestamp`; removing the last finalizer of such
  an object removes it;
- server-side apply (`application/apply-patch+yaml`) needs a `fieldManager` and creates or
  merges;
- lists (sorted by name, as etcd keeps them) filter by `labelSelector` (`k=v`, `k!=v`, `k`)
  and `fieldSelector=metadata.name=`;
- watches stream the recorded changes after a `resourceVersion` until `timeoutSeconds`
  (default 5) and, with `allowWatchBookmarks=true`, end with a BOOKMARK of the newest
  resourceVersion, as the API server does before it closes a timed-out watch; a watch
  quiet for the client's `read_timeout` raises TimeoutError, as `KubeClient.stream` does.

For tests:

- `put`/`get`/`all`/`remove` by kind, and `annotate` (a user's merge patch of annotations),
  change or read the store directly: not recorded, no `before`, no injected failure;
- `fail_next` injects failures into the next requests (`method="WATCH"` for watches; with
  no method, into any request or watch);
- `before` runs before each request, not watches (to play a concurrent writer between a
  read and a write, or a slow server); it may be a coroutine function, which `request`
  awaits (the synchronous `handle` refuses one);
- `freeze_watches` cuts every watch that runs while it is set, like a dead connection:
  nothing more arrives, not even the server's timeout or a bookmark, until the client's
  `read_timeout` after the last data, then TimeoutError (clearing the flag helps only the
  watches opened after that);
- every request and watch is recorded in `calls` (`writes()`, `watches_opened`).
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import itertools
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from tradingbot_api.kubeclient import KubeError
from tradingbot_api.times import kube_time, utc_now

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
# Kinds whose status is a subresource (a main-resource write cannot change it).
STATUS_SUBRESOURCE = {"tradingbots", "pods", "nodes", "persistentvolumeclaims"}
WITH_GENERATION = {"tradingbots", "deployments"}
PLURALS = {
    "Pod": ("v1", "pods"),
    "ConfigMap": ("v1", "configmaps"),
    "Secret": ("v1", "secrets"),
    "ServiceAccount": ("v1", "serviceaccounts"),
    "Event": ("v1", "events"),
    "Node": ("v1", "nodes"),
    "Namespace": ("v1", "namespaces"),
    "PersistentVolumeClaim": ("v1", "persistentvolumeclaims"),
    "Role": ("rbac.authorization.k8s.io/v1", "roles"),
    "RoleBinding": ("rbac.authorization.k8s.io/v1", "rolebindings"),
    "Lease": ("coordination.k8s.io/v1", "leases"),
    "TradingBot": ("trading.r7.dev/v1alpha1", "tradingbots"),
}
KINDS = {resource: kind for kind, resource in PLURALS.items()}

Key = tuple[str, str, str, str]  # (group/version, namespace or "", plural, name)


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    query: Mapping[str, str]
    content_type: str
    body: Any


@dataclass
class Injected:
    status: int
    method: str | None
    path_contains: str | None
    times: int


@dataclass
class Target:
    group_version: str
    namespace: str
    plural: str
    name: str
    sub: str

    @property
    def key(self) -> Key:
        return (self.group_version, self.namespace, self.plural, self.name)


def parse_path(path: str) -> Target:
    parts = [unquote(p) for p in urlsplit(path).path.strip("/").split("/")]
    if parts[0] == "api":
        group_version, rest = parts[1], parts[2:]
    elif parts[0] == "apis":
        group_version, rest = f"{parts[1]}/{parts[2]}", parts[3:]
    else:
        raise KubeError(404, "Not Found", f"no such path {path}")
    namespace = ""
    if len(rest) >= 2 and rest[0] == "namespaces" and len(rest) != 2:
        namespace, rest = rest[1], rest[2:]
    plural = rest[0]
    return Target(
        group_version, namespace, plural, rest[1] if len(rest) > 1 else "", "/".join(rest[2:])
    )


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386, as the API server applies application/merge-patch+json."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def status_error(code: int, reason: str, message: str, target: Target | None = None) -> KubeError:
    """The error the API server answers with, its Status body included."""
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "reason": reason,
        "message": message,
        "code": code,
    }
    if target is not None:
        group = target.group_version.rpartition("/")[0]
        body["details"] = {"name": target.name, "group": group, "kind": target.plural}
    return KubeError(code, reason, json.dumps(body))


def resource(target: Target) -> str:
    """How the API server names a resource in messages: `pods`, `tradingbots.trading.r7.dev`."""
    group = target.group_version.rpartition("/")[0]
    return f"{target.plural}.{group}" if group else target.plural


def _matches(labels: Mapping[str, str], selector: str) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, _, value = term.partition("!=")
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, _, value = term.partition("=")
            if labels.get(key) != value.lstrip("="):
                return False
        elif term not in labels:
            return False
    return True


AccessReview = Callable[[Mapping[str, Any]], tuple[bool, str]]
# Runs before each request; a coroutine function is awaited by `request`.
Before = Callable[[Call], Awaitable[None] | None]


@dataclass
class FakeApiServer:
    """The store and the rules; `request`/`stream` are the KubeClient face."""

    graceful_pods: bool = False
    access: AccessReview = field(default=lambda spec: (True, ""))
    before: Before | None = None
    freeze_watches: bool = False
    objects: dict[Key, dict[str, Any]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    history: list[tuple[int, str, Key, dict[str, Any]]] = field(default_factory=list)
    _injected: list[Injected] = field(default_factory=list)
    _versions: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _uids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _now: Callable[[], str] = field(default=lambda: kube_time(utc_now()))
    closed: bool = False

    # -- for tests ----------------------------------------------------------------------

    def fail_next(
        self,
        status: int = 500,
        *,
        method: str | None = None,
        path_contains: str | None = None,
        times: int = 1,
    ) -> None:
        self._injected.append(Injected(status, method, path_contains, times))

    def put(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Store an object as if created (kind from `kind`, namespace from metadata); over an
        existing one, as if a user replaced it: its uid and creationTimestamp stay unless
        `obj` names its own, and the generation moves with `spec`."""
        group_version, plural = PLURALS[str(obj["kind"])]
        meta = obj.get("metadata") or {}
        key = (group_version, str(meta.get("namespace") or ""), plural, str(meta["name"]))
        stored = copy.deepcopy(dict(obj))
        stored.setdefault("apiVersion", group_version)
        current = self.objects.get(key)
        if current is not None:
            for fixed in ("uid", "creationTimestamp"):
                if fixed in current["metadata"]:
                    stored["metadata"].setdefault(fixed, current["metadata"][fixed])
        self._created(stored["metadata"])
        if plural in WITH_GENERATION:
            generation = 1
            if current is not None:
                changed = stored.get("spec") != current.get("spec")
                generation = current["metadata"].get("generation", 1) + int(changed)
            stored["metadata"].setdefault("generation", generation)
        return self._store(key, stored)

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        group_version, plural = PLURALS[kind]
        found = self.objects.get((group_version, namespace, plural, name))
        return copy.deepcopy(found) if found is not None else None

    def all(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        group_version, plural = PLURALS[kind]
        return [
            copy.deepcopy(o)
            for (gv, ns, pl, _), o in sorted(self.objects.items())
            if (gv, pl) == (group_version, plural) and namespace in (None, ns)
        ]

    def remove(self, kind: str, namespace: str, name: str) -> None:
        """Remove at once (a kubelet finishing a pod's termination, a user's forced delete)."""
        group_version, plural = PLURALS[kind]
        self._drop((group_version, namespace, plural, name))

    def annotate(self, kind: str, namespace: str, name: str, **values: str | None) -> None:
        """Set (None: remove) annotations with a merge patch, as a user would: a new
        resourceVersion and a MODIFIED event, the uid and the spec unchanged."""
        group_version, plural = PLURALS[kind]
        target = Target(group_version, namespace, plural, name, "")
        current = self.objects.get(target.key)
        if current is None:
            raise status_error(404, "NotFound", f'{resource(target)} "{name}" not found', target)
        patch = {"metadata": {"annotations": values}}
        self._write(target, current, merge_patch(current, patch))

    def writes(self, method: str | None = None) -> list[Call]:
        return [
            c for c in self.calls if c.method not in ("GET", "WATCH") and method in (None, c.method)
        ]

    @property
    def watches_opened(self) -> int:
        """Watches asked for (each a WATCH in `calls`), those refused included."""
        return sum(1 for c in self.calls if c.method == "WATCH")

    # -- the KubeClient face ------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: Mapping[str, Any] | None = None,
        content_type: str = JSON,
        timeout: float = 30.0,
    ) -> Any:
        call = self._record(method, path, body, query, content_type)
        if self.before is not None:
            waited = self.before(call)
            if inspect.isawaitable(waited):
                await waited
        return self._answer(call, path)

    async def stream(
        self, path: str, *, query: Mapping[str, Any] | None = None, read_timeout: float = 60.0
    ) -> AsyncIterator[dict[str, Any]]:
        params = self._query(path, query)
        self.calls.append(Call("WATCH", path.split("?")[0], params, JSON, None))
        self._raise_injected("WATCH", path)
        target = parse_path(path)
        since = int(params.get("resourceVersion") or 0)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(params.get("timeoutSeconds") or 5)
        last_data = loop.time()
        cut = False
        while True:
            cut = cut or self.freeze_watches  # a dead connection does not come back
            if loop.time() - last_data >= read_timeout:
                # What KubeClient.stream raises: aiohttp's read timeout is a TimeoutError.
                raise TimeoutError(f"no data on the watch for {read_timeout:g}s")
            if not cut:
                for version, kind, key, obj in list(self.history):
                    if version > since and self._selected(key, obj, target, params):
                        since = version
                        last_data = loop.time()
                        yield {"type": kind, "object": copy.deepcopy(obj)}
                if loop.time() >= deadline:
                    break
            await asyncio.sleep(0.005)
        if params.get("allowWatchBookmarks") == "true":
            newest = max(since, self.history[-1][0] if self.history else 0)
            bookmark: dict[str, Any] = {
                "apiVersion": target.group_version,
                "metadata": {"resourceVersion": str(newest)},
            }
            kind_name = KINDS.get((target.group_version, target.plural))
            if kind_name is not None:
                bookmark["kind"] = kind_name
            yield {"type": "BOOKMARK", "object": bookmark}

    async def close(self) -> None:
        self.closed = True

    # -- the rules ----------------------------------------------------------------------

    def handle(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: Mapping[str, Any] | None = None,
        content_type: str = JSON,
    ) -> Any:
        """One request, synchronously (recorded, `before`, injected failures, the answer);
        an async `before` needs `request`."""
        call = self._record(method, path, body, query, content_type)
        if self.before is not None:
            waited = self.before(call)
            if inspect.isawaitable(waited):
                close = getattr(waited, "close", None)
                if close is not None:
                    close()
                raise TypeError("an async `before` runs only under `request`")
        return self._answer(call, path)

    def _record(
        self,
        method: str,
        path: str,
        body: Any,
        query: Mapping[str, Any] | None,
        content_type: str,
    ) -> Call:
        params = self._query(path, query)
        if isinstance(body, str | bytes):
            body = json.loads(body)
        elif body is not None:
            body = json.loads(json.dumps(body))  # what goes over the wire
        call = Call(method, path.split("?")[0], params, content_type, body)
        self.calls.append(call)
        return call

    def _answer(self, call: Call, path: str) -> Any:
        """The API server's answer to a recorded request."""
        method, params, content_type, body = call.method, call.query, call.content_type, call.body
        self._raise_injected(method, path)
        target = parse_path(path)
        if target.plural == "subjectaccessreviews" and method == "POST":
            allowed, reason = self.access(body.get("spec") or {})
            return {**body, "status": {"allowed": allowed, "reason": reason}}
        dry_run = params.get("dryRun") == "All"
        if method == "GET" and not target.name:
            return self._list(target, params)
        if method == "POST":
            return self._create(target, copy.deepcopy(body), dry_run)
        current = self.objects.get(target.key)
        if method == "PATCH" and content_type == APPLY_PATCH:
            return self._apply(target, current, copy.deepcopy(body), params)
        if current is None:
            raise status_error(
                404, "NotFound", f'{resource(target)} "{target.name}" not found', target
            )
        if method == "GET":
            return copy.deepcopy(current)
        if method == "DELETE":
            return self._delete(target, current, body or {}, dry_run)
        if method == "PUT":
            self._check_version(current, body)
            return self._write(target, current, body)
        if method == "PATCH":
            if content_type != MERGE_PATCH:
                raise status_error(415, "UnsupportedMediaType", content_type)
            self._check_version(current, body)
            return self._write(target, current, merge_patch(current, body))
        raise status_error(405, "MethodNotAllowed", method)

    def _query(self, path: str, query: Mapping[str, Any] | None) -> dict[str, str]:
        params = {k: v[0] for k, v in parse_qs(urlsplit(path).query).items()}
        params.update({k: str(v) for k, v in (query or {}).items() if v is not None})
        return params

    def _raise_injected(self, method: str, path: str) -> None:
        for injected in self._injected:
            if injected.times <= 0:
                continue
            if injected.method not in (None, method):
                continue
            if injected.path_contains is not None and injected.path_contains not in path:
                continue
            injected.times -= 1
            if injected.status == 0:
                raise KubeError(0, "ClientConnectorError", "injected: no answer")
            raise status_error(injected.status, "Injected", "injected failure")

    def _selected(
        self, key: Key, obj: Mapping[str, Any], target: Target, params: Mapping[str, str]
    ) -> bool:
        group_version, namespace, plural, name = key
        if (group_version, plural) != (target.group_version, target.plural):
            return False
        if target.namespace and namespace != target.namespace:
            return False
        field_selector = params.get("fieldSelector", "")
        if field_selector.startswith("metadata.name=") and name != field_selector[14:]:
            return False
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return _matches(labels, params.get("labelSelector", ""))

    def _list(self, target: Target, params: Mapping[str, str]) -> dict[str, Any]:
        items = [
            copy.deepcopy(obj)
            for key, obj in sorted(self.objects.items())
            if self._selected(key, obj, target, params)
        ]
        version = str(self.history[-1][0]) if self.history else "0"
        return {"kind": "List", "metadata": {"resourceVersion": version}, "items": items}

    def _created(self, meta: dict[str, Any]) -> None:
        meta["uid"] = meta.get("uid") or f"uid-{next(self._uids)}"
        meta.setdefault("creationTimestamp", self._now())

    def _create(self, target: Target, body: dict[str, Any], dry_run: bool) -> dict[str, Any]:
        meta = body.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = f"{meta['generateName']}{next(self._uids):05d}"
        name = meta.get("name")
        if not name:
            raise status_error(422, "Invalid", "metadata.name: Required value")
        key = (target.group_version, target.namespace, target.plural, str(name))
        if key in self.objects:
            raise status_error(
                409, "AlreadyExists", f'{resource(target)} "{name}" already exists', target
            )
        if target.namespace:
            meta["namespace"] = target.namespace
        self._created(meta)
        if target.plural in WITH_GENERATION:
            meta["generation"] = 1
        if dry_run:
            return body
        return self._store(key, body)

    def _apply(
        self,
        target: Target,
        current: dict[str, Any] | None,
        body: dict[str, Any],
        params: Mapping[str, str],
    ) -> dict[str, Any]:
        if not params.get("fieldManager"):
            raise status_error(
                422, "Invalid", "fieldManager: Required value: is required for apply patch"
            )
        if current is None:
            return self._create(target, body, dry_run=False)
        return self._write(target, current, _deep_merge(current, body))

    def _check_version(self, current: Mapping[str, Any], body: Mapping[str, Any]) -> None:
        sent = (body.get("metadata") or {}).get("resourceVersion")
        if sent is not None and sent != current["metadata"]["resourceVersion"]:
            raise status_error(
                409, "Conflict", "the object has been modified; please apply your changes"
            )

    def _write(
        self, target: Target, current: dict[str, Any], wanted: dict[str, Any]
    ) -> dict[str, Any]:
        wanted = copy.deepcopy(wanted)
        if target.sub == "status":
            wanted = {**current, "status": wanted.get("status")}
        elif target.plural in STATUS_SUBRESOURCE:
            wanted.pop("status", None)
            if "status" in current:
                wanted["status"] = current["status"]
        meta = {**wanted.get("metadata", {})}
        for fixed in ("uid", "creationTimestamp", "namespace", "name", "deletionTimestamp"):
            if fixed in current["metadata"]:
                meta[fixed] = current["metadata"][fixed]
        if target.plural in WITH_GENERATION:
            changed = wanted.get("spec") != current.get("spec")
            meta["generation"] = current["metadata"].get("generation", 1) + int(changed)
        wanted["metadata"] = meta
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self._drop(target.key)
            return wanted
        return self._store(target.key, wanted)

    def _delete(
        self, target: Target, current: dict[str, Any], options: Mapping[str, Any], dry_run: bool
    ) -> dict[str, Any]:
        preconditions = options.get("preconditions") or {}
        meta = current["metadata"]
        for name in ("uid", "resourceVersion"):
            if name in preconditions and preconditions[name] != meta.get(name):
                raise status_error(
                    409,
                    "Conflict",
                    f"Precondition failed: {name} in precondition: {preconditions[name]}, "
                    f"{name} in object meta: {meta.get(name)}",
                )
        if dry_run:
            return copy.deepcopy(current)
        grace = options.get("gracePeriodSeconds")
        graceful = target.plural == "pods" and self.graceful_pods and grace != 0
        if meta.get("finalizers") or graceful:
            if not meta.get("deletionTimestamp"):
                updated = copy.deepcopy(current)
                updated["metadata"]["deletionTimestamp"] = self._now()
                if graceful:
                    updated["metadata"]["deletionGracePeriodSeconds"] = grace
                return self._store(target.key, updated)
            return copy.deepcopy(current)
        self._drop(target.key)
        return {"kind": "Status", "status": "Success"}

    def _store(self, key: Key, obj: dict[str, Any]) -> dict[str, Any]:
        version = next(self._versions)
        obj["metadata"]["resourceVersion"] = str(version)
        kind = "MODIFIED" if key in self.objects else "ADDED"
        self.objects[key] = obj
        self.history.append((version, kind, key, copy.deepcopy(obj)))
        return copy.deepcopy(obj)

    def _drop(self, key: Key) -> None:
        obj = self.objects.pop(key)
        version = next(self._versions)
        obj["metadata"]["resourceVersion"] = str(version)
        self.history.append((version, "DELETED", key, copy.deepcopy(obj)))


def _deep_merge(current: Any, applied: Any) -> Any:
    """Apply's effect for one manager that owns what it sends: its fields replace, the rest
    stays."""
    if not isinstance(applied, dict) or not isinstance(current, dict):
        return copy.deepcopy(applied)
    result = dict(current)
    for key, value in applied.items():
        result[key] = _deep_merge(current.get(key), value)
    return result
