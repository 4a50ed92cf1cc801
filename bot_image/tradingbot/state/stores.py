"""Where checkpoints live: a ConfigMap (default) or a file on a PersistentVolume.

Both keep the previous good checkpoint next to the current one (`state.prev.json`) and restore
by the same pure rule (`choose_restore`): the current checkpoint if it reads; else the previous
one, loudly; a state that exists but cannot be read is an error, never an empty start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from tradingbot.kube import KubeApi, KubeError, namespaced_path
from tradingbot.state.model import (
    StateCheckpoint,
    StateCorruptError,
    StateTooLargeError,
    decode_state,
    encode_state,
)
from tradingbot_api.constants import LABEL_BOT, STATE_KEY, STATE_PREV_KEY, state_configmap_name

log = logging.getLogger(__name__)

# A ConfigMap holds at most 1 MiB; both copies of the state (current and previous) live in it,
# so each document gets half of a guard that leaves room for metadata.
CONFIGMAP_SIZE_GUARD_BYTES: Final = 900 * 1024
CONFIGMAP_DOCUMENT_BUDGET_BYTES: Final = CONFIGMAP_SIZE_GUARD_BYTES // 2

SOURCE_CURRENT = "current"
SOURCE_PREVIOUS = "previous"
SOURCE_EMPTY = "empty"


class StateConflictError(Exception):
    """Another writer changed the stored state since this process read it: stop trading."""


class StateWriteError(Exception):
    """The checkpoint could not be stored (API down, disk full, too large)."""


@dataclass(frozen=True)
class RestoreResult:
    state: StateCheckpoint
    source: str  # current | previous | empty
    problem: str = ""  # why the current checkpoint was not used

    @property
    def fell_back(self) -> bool:
        return self.source == SOURCE_PREVIOUS


def choose_restore(current: str | None, previous: str | None) -> RestoreResult:
    """The checkpoint to restore from the two stored documents (None = absent)."""
    if current is None and previous is None:
        return RestoreResult(StateCheckpoint(), SOURCE_EMPTY)
    problem = ""
    if current is not None:
        try:
            return RestoreResult(decode_state(current), SOURCE_CURRENT)
        except StateCorruptError as exc:
            problem = f"{STATE_KEY} unreadable: {exc}"
    else:
        problem = f"{STATE_KEY} missing"
    if previous is None:
        raise StateCorruptError(f"{problem}; no {STATE_PREV_KEY} to fall back to")
    try:
        return RestoreResult(decode_state(previous), SOURCE_PREVIOUS, problem)
    except StateCorruptError as exc:
        raise StateCorruptError(f"{problem}; {STATE_PREV_KEY} unreadable too: {exc}") from exc


class StateStore(Protocol):
    backend: str

    async def load(self) -> RestoreResult: ...

    async def save(self, state: StateCheckpoint) -> StateCheckpoint:
        """Store `state`; returns what was stored (the journal may have been trimmed)."""
        ...


class FileStateStore:
    """`<dir>/state.json` written atomically: temp file, fsync, rename, fsync directory.

    The file being replaced becomes `state.prev.json` (a rename, so it costs no copy). A crash
    between the two renames leaves only `state.prev.json`, which is the newest stored
    checkpoint then, and restore falls back to it.
    """

    backend = "pvc"

    def __init__(
        self, directory: Path | str, *, max_bytes: int | None = None, fsync: bool = True
    ) -> None:
        self.directory = Path(directory)
        self.path = self.directory / STATE_KEY
        self.prev_path = self.directory / STATE_PREV_KEY
        self.max_bytes = max_bytes
        self.fsync = fsync
        # Whether state.json on disk is known to decode; a corrupt one must not be rotated
        # over the good previous copy.
        self._current_good = False

    def _read(self, path: Path) -> str | None:
        try:
            return path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            # Unreadable bytes are handled like corrupt JSON: fall back or fail loudly.
            return f"<unreadable: {exc}>"

    def _load(self) -> RestoreResult:
        result = choose_restore(self._read(self.path), self._read(self.prev_path))
        self._current_good = result.source == SOURCE_CURRENT
        return result

    async def load(self) -> RestoreResult:
        return await asyncio.to_thread(self._load)

    def _save(self, state: StateCheckpoint) -> StateCheckpoint:
        text, stored = encode_state(state, max_bytes=self.max_bytes)
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / f".{STATE_KEY}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            if self.fsync:
                os.fsync(handle.fileno())
        if self.path.exists():
            if self._current_good:
                os.replace(self.path, self.prev_path)
            else:
                # Keep the unreadable file for a human, out of the restore path.
                corrupt = self.directory / f"state.corrupt-{int(time.time())}.json"
                os.replace(self.path, corrupt)
                log.warning("moved unreadable state file aside", extra={"path": str(corrupt)})
        os.replace(tmp, self.path)
        if self.fsync:
            fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self._current_good = True
        return stored

    async def save(self, state: StateCheckpoint) -> StateCheckpoint:
        try:
            return await asyncio.to_thread(self._save, state)
        except (OSError, StateTooLargeError) as exc:
            raise StateWriteError(f"{self.path}: {exc}") from exc


class ConfigMapStateStore:
    """ConfigMap `<bot>-state`, keys `state.json` and `state.prev.json`.

    Every write is a replace carrying the resourceVersion this process last saw, so a write by
    anyone else in between fails with 409 instead of being overwritten. A 409 caused only by a
    metadata change (labels edited by a person or the operator) is retried once the stored
    state is confirmed to still be ours.
    """

    backend = "configmap"

    def __init__(
        self,
        api: KubeApi,
        namespace: str,
        bot: str,
        *,
        max_document_bytes: int = CONFIGMAP_DOCUMENT_BUDGET_BYTES,
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.bot = bot
        self.name = state_configmap_name(bot)
        self.path = namespaced_path("v1", namespace, "configmaps", self.name)
        self.max_document_bytes = max_document_bytes
        self._object: dict[str, Any] | None = None  # last seen ConfigMap, None = absent
        self._last_good: str | None = None  # text of the newest checkpoint known to decode
        self._last_written: str | None = None

    async def load(self) -> RestoreResult:
        obj = await self.api.get_or_none(self.path)
        self._object = obj
        data = (obj or {}).get("data") or {}
        result = choose_restore(data.get(STATE_KEY), data.get(STATE_PREV_KEY))
        if result.source == SOURCE_CURRENT:
            self._last_good = data[STATE_KEY]
        elif result.source == SOURCE_PREVIOUS:
            self._last_good = data[STATE_PREV_KEY]
        self._last_written = data.get(STATE_KEY)
        return result

    def _body(self, text: str) -> dict[str, Any]:
        data = {STATE_KEY: text}
        if self._last_good is not None:
            data[STATE_PREV_KEY] = self._last_good
        if self._object is None:
            return {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": self.name,
                    "namespace": self.namespace,
                    "labels": {LABEL_BOT: self.bot},
                },
                "data": data,
            }
        body = {k: v for k, v in self._object.items() if k not in ("data", "binaryData")}
        metadata = dict(body.get("metadata") or {})
        metadata.pop("managedFields", None)
        body["metadata"] = metadata
        body["data"] = data
        return body

    def _still_ours(self, fresh: dict[str, Any] | None) -> bool:
        """After a 409: is the stored state still the one this process wrote or read?"""
        if fresh is None:
            return False
        return bool((fresh.get("data") or {}).get(STATE_KEY) == self._last_written)

    async def _save(self, state: StateCheckpoint) -> StateCheckpoint:
        text, stored = encode_state(state, max_bytes=self.max_document_bytes)
        for _ in range(3):
            body = self._body(text)
            try:
                if self._object is None:
                    result = await self.api.create(
                        namespaced_path("v1", self.namespace, "configmaps"), body
                    )
                else:
                    result = await self.api.replace(self.path, body)
            except KubeError as exc:
                status = exc.status
                if not (exc.not_found or exc.conflict):
                    raise StateWriteError(f"ConfigMap {self.name}: {exc}") from exc
                fresh = await self.api.get_or_none(self.path)
                if fresh is None:
                    # Deleted under us: this process holds the lease and the newest state,
                    # so it writes the state back rather than lose it.
                    log.warning(
                        "state ConfigMap disappeared; recreating it", extra={"configmap": self.name}
                    )
                    self._object = None
                    continue
                if not self._still_ours(fresh):
                    raise StateConflictError(
                        f"ConfigMap {self.namespace}/{self.name} changed by another writer "
                        f"(HTTP {status})"
                    ) from exc
                self._object = fresh
                continue
            self._object = result
            self._last_good = text
            self._last_written = text
            return stored
        raise StateWriteError(f"ConfigMap {self.name}: kept changing under the writer")

    async def save(self, state: StateCheckpoint) -> StateCheckpoint:
        try:
            return await self._save(state)
        except (StateConflictError, StateWriteError):
            raise
        except Exception as exc:
            raise StateWriteError(f"ConfigMap {self.name}: {type(exc).__name__}: {exc}") from exc


class MemoryStateStore:
    """In-process store with the same contract, for tests and benchmarks."""

    backend = "memory"

    def __init__(self, current: str | None = None, previous: str | None = None) -> None:
        self.current = current
        self.previous = previous
        self.fail_writes = False
        self.saved: list[StateCheckpoint] = []  # every stored checkpoint, oldest first

    async def load(self) -> RestoreResult:
        return choose_restore(self.current, self.previous)

    async def save(self, state: StateCheckpoint) -> StateCheckpoint:
        if self.fail_writes:
            raise StateWriteError("writes disabled")
        text, stored = encode_state(state)
        with contextlib.suppress(StateCorruptError):
            if self.current is not None:
                decode_state(self.current)
                self.previous = self.current
        self.current = text
        self.saved.append(stored)
        return stored
