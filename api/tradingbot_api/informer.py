"""A list-and-watch cache of one collection (an informer), over the shared async client.

It lists once, so the store holds what the server held at that resourceVersion, then
watches from there; each event replaces or removes one object. The server ending a watch
after its timeout is followed by a watch from the newest resourceVersion seen (bookmarks
keep it fresh); 410 Gone (the server no longer keeps history that old), an ERROR event or a
broken connection is followed by a new list, after a capped back-off when it failed; a watch
that goes silent (a dead connection) is opened again from the newest resourceVersion seen.

Writers read their own writes: `observe` puts the object an API call returned into the
store at once. Nothing older replaces what the store holds: resourceVersions of one
collection are etcd revisions, so a larger one is a later write (when either does not parse
as an integer the newer event wins, as with any informer). A DELETED event removes only the
object it names (by uid), never one created again under the same name since.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from tradingbot_api.kubeclient import KubeClient, KubeError

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped objects
Object = dict[str, Any]
OnChange = Callable[[Key, Object | None], None]

WATCH_SECONDS: Final = 240
# A watch with bookmarks hears from the server at least every minute or so; silence this
# long means a dead connection.
READ_TIMEOUT_SECONDS: Final = 90.0
BACKOFF_SECONDS: Final = (0.5, 1.0, 2.0, 5.0, 10.0)
MAX_TOMBSTONES: Final = 10_000


def object_key(obj: Mapping[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def _version(obj: Mapping[str, Any] | None) -> int | None:
    raw = str(((obj or {}).get("metadata") or {}).get("resourceVersion") or "")
    try:
        return int(raw)
    except (TypeError, ValueError):
        return None


def _uid(obj: Mapping[str, Any] | None) -> str:
    return str(((obj or {}).get("metadata") or {}).get("uid") or "")


def is_older(candidate: Mapping[str, Any], held: Mapping[str, Any] | None) -> bool:
    """Whether `candidate` is an earlier state than `held` (never, when either lacks an
    integer resourceVersion)."""
    new, old = _version(candidate), _version(held)
    return new is not None and old is not None and new < old


def without_managed_fields(obj: Object) -> Object:
    """`obj` without `metadata.managedFields` (often half of an object's size)."""
    meta = obj.get("metadata")
    if not isinstance(meta, dict) or "managedFields" not in meta:
        return obj
    return {**obj, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}


@dataclass
class Store:
    """The objects of one collection by key, as the list, the watch and own writes say.

    The uids of objects seen deleted are remembered with the version they went at (the
    newest `MAX_TOMBSTONES`), so that an own write's answer that arrives after the object's
    DELETED event cannot bring it back; a later state of that uid (a pod labelled again
    after it left a label-selected collection) is taken.
    """

    objects: dict[Key, Object] = field(default_factory=dict)
    tombstones: OrderedDict[str, int | None] = field(default_factory=OrderedDict)
    # What is kept of each object (e.g. `without_managed_fields`, to hold less memory).
    transform: Callable[[Object], Object] | None = None
    # Which objects are held at all (e.g. those of this operator's shard); None: every one.
    keep: Callable[[Mapping[str, Any]], bool] | None = None

    def get(self, key: Key) -> Object | None:
        return self.objects.get(key)

    def values(self) -> Iterable[Object]:
        return self.objects.values()

    def observe(self, obj: Object) -> bool:
        """Hold `obj` unless the store holds a later state; True when it changed."""
        if self.keep is not None and not self.keep(obj):
            return False
        key = object_key(obj)
        held = self.objects.get(key)
        kept = self.transform(obj) if self.transform is not None else obj
        if held is not None and (is_older(obj, held) or held == kept):
            return False
        if held is not None and _version(obj) is not None and _version(held) == _version(obj):
            return False  # the same state (an own write's answer and its watch event)
        if self._buried(obj):
            return False
        self.objects[key] = kept
        return True

    def forget(self, obj: Mapping[str, Any]) -> bool:
        """Drop the object `obj` names (its key and uid), unless a later one took its key."""
        key = object_key(obj)
        held = self.objects.get(key)
        self._bury(_uid(obj), _version(obj))
        if held is None or is_older(obj, held) or (_uid(obj) and _uid(held) != _uid(obj)):
            return False
        del self.objects[key]
        return True

    def _bury(self, uid: str, version: int | None) -> None:
        if not uid:
            return
        self.tombstones[uid] = version
        self.tombstones.move_to_end(uid)
        while len(self.tombstones) > MAX_TOMBSTONES:
            self.tombstones.popitem(last=False)

    def _buried(self, obj: Mapping[str, Any]) -> bool:
        """Whether `obj` is a state of a deleted object from before it went."""
        uid = _uid(obj)
        if uid not in self.tombstones:
            return False
        went, version = self.tombstones[uid], _version(obj)
        return went is None or version is None or version <= went

    def apply(self, event: Mapping[str, Any]) -> Key | None:
        """One watch event (ADDED, MODIFIED, DELETED); the key it changed, if any."""
        obj = event.get("object") or {}
        kind = event.get("type")
        if kind in ("ADDED", "MODIFIED"):
            return object_key(obj) if self.observe(dict(obj)) else None
        if kind == "DELETED":
            return object_key(obj) if self.forget(obj) else None
        return None

    def replace(self, items: Iterable[Object], list_version: str) -> set[Key]:
        """The result of a list at `list_version`; the keys whose object changed. What the
        store learned after that version (own writes meanwhile) is kept."""
        listed = {object_key(item): item for item in items}
        changed = {key for key, item in listed.items() if self.observe(item)}
        snapshot = {"metadata": {"resourceVersion": list_version}}
        for key in [k for k in self.objects if k not in listed]:
            if not is_older(snapshot, self.objects[key]):  # gone before the list was taken
                self._bury(_uid(self.objects.pop(key)), _version(snapshot))
                changed.add(key)
        return changed


class Informer:
    """Keeps `store` in step with the collection at `path` (e.g. `/api/v1/pods` with a
    labelSelector in `query`) until cancelled; `synced` is set after the first list, and
    `on_change(key, object or None)` is called for each change (not for own `observe`s)."""

    def __init__(
        self,
        client: KubeClient,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        on_change: OnChange | None = None,
        watch_seconds: int = WATCH_SECONDS,
        read_timeout: float = READ_TIMEOUT_SECONDS,
        backoff: tuple[float, ...] = BACKOFF_SECONDS,
        transform: Callable[[Object], Object] | None = None,
        keep: Callable[[Mapping[str, Any]], bool] | None = None,
    ) -> None:
        self.client = client
        self.path = path
        self.query = dict(query or {})
        self.on_change = on_change
        self.watch_seconds = watch_seconds
        self.read_timeout = read_timeout
        self.backoff = backoff
        self.store = Store(transform=transform, keep=keep)
        self.synced = asyncio.Event()
        self.resource_version = ""
        self.lists = 0  # how many lists it took (a relist after 410 or a failure counts)

    async def run(self) -> None:
        failures = 0
        while True:
            try:
                await self._list()
                failures = 0
                while await self._watch():
                    pass
            except asyncio.CancelledError:
                raise
            except Exception as err:  # relisted after a pause; never fatal
                failures += 1
                delay = self.backoff[min(failures, len(self.backoff)) - 1]
                log.warning(
                    "watch of %s failed (%s); listing again in %ss",
                    self.path,
                    err,
                    delay,
                    extra={"path": self.path, "failed_attempts": failures},
                )
                await asyncio.sleep(delay)

    async def _list(self) -> None:
        answer = await self.client.request("GET", self.path, query=self.query)
        listed = answer or {}
        self.resource_version = str((listed.get("metadata") or {}).get("resourceVersion", ""))
        changed = self.store.replace(listed.get("items") or [], self.resource_version)
        self.lists += 1
        self.synced.set()
        self._tell(changed)

    async def _watch(self) -> bool:
        """One watch; True when it ended normally (watch again from where it stopped),
        False when only a new list can continue (410 Gone)."""
        query = {
            **self.query,
            "watch": "true",
            "allowWatchBookmarks": "true",
            "resourceVersion": self.resource_version,
            "timeoutSeconds": str(self.watch_seconds),
        }
        try:
            async for event in self.client.stream(
                self.path, query=query, read_timeout=self.read_timeout
            ):
                if event.get("type") == "ERROR":
                    status = event.get("object") or {}
                    if status.get("code") == 410:
                        return False
                    raise KubeError(int(status.get("code") or 0), "watch error", str(status))
                version = ((event.get("object") or {}).get("metadata") or {}).get("resourceVersion")
                if version:
                    self.resource_version = str(version)
                key = self.store.apply(event)
                if key is not None:
                    self._tell({key})
        except KubeError as err:
            if err.gone:
                return False
            raise
        except TimeoutError:
            # Silent past read_timeout: a dead connection. Watching again from the newest
            # version seen loses nothing (the server answers 410 if it is too old by now).
            log.info("watch of %s went silent; watching again", self.path)
        return True

    def _tell(self, keys: Iterable[Key]) -> None:
        if self.on_change is None:
            return
        for key in keys:
            try:
                self.on_change(key, self.store.get(key))
            except Exception:  # a listener's bug must not stop the cache
                log.exception("informer listener failed", extra={"path": self.path})
