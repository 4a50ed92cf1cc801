"""The bot's own watches on what controls it: its TradingBot and the fleet switch ConfigMap.

Each watch lists its one object by name (fieldSelector `metadata.name`, which RBAC that names
the object in `resourceNames` authorizes), then watches from the list's resourceVersion with
bookmarks and a short server timeout (`timeoutSeconds`). When the server ends the stream at
that timeout, the watch is re-established at once from the last resourceVersion; on 410 Gone
it lists again; any other failure is retried after a pause that doubles up to the timeout.

A watch is *heard* when a list is answered, an event or bookmark arrives, or the server ends
the stream cleanly. One not heard from for SILENCE_FACTOR x timeoutSeconds is *silent*
(`watch_silent`): a halt stored now might not reach the bot, so it opens no position until
the watch is heard again (exits stay allowed, see tradingbot.killswitch).

Changes reach the runtime through `on_change`, called on the event loop as soon as an event
is read; the runtime's order gate reads `state` before every order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, Final

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

from tradingbot.killswitch import BotControl, ControlState, bot_control, fleet_halt
from tradingbot.kube import KubeApi, KubeError, namespaced_path, tradingbot_path, watch_query

log = logging.getLogger(__name__)

SILENCE_FACTOR: Final = 3.0
# Past the server's own timeout, how long a stream may stay quiet before the client gives up
# on it (a frozen connection ends at this, a silent one is judged by SILENCE_FACTOR).
READ_MARGIN_SECONDS: Final = 5.0
RETRY_BASE_SECONDS: Final = 0.5


def watch_silent(
    last_heard: float, now: float, timeout_seconds: float, factor: float = SILENCE_FACTOR
) -> bool:
    """Whether a watch with this server timeout has been quiet for too long."""
    return now - last_heard > factor * timeout_seconds


def retry_delay(failures: int, timeout_seconds: float) -> float:
    """Pause before the next attempt after `failures` consecutive ones (capped)."""
    if failures <= 0:
        return 0.0
    return min(float(timeout_seconds), RETRY_BASE_SECONDS * 2 ** min(failures - 1, 10))


class ObjectWatch:
    """List-then-watch of one named object, feeding `on_object` (None: it does not exist)."""

    def __init__(
        self,
        api: KubeApi,
        collection: str,
        name: str,
        *,
        label: str,
        timeout_seconds: int,
        on_object: Callable[[Mapping[str, Any] | None], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = api
        self.collection = collection
        self.name = name
        self.label = label
        self.timeout_seconds = timeout_seconds
        self.on_object = on_object
        self.clock = clock
        # A fresh watch gets one silence window to connect before it counts as silent.
        self.last_heard = clock()
        self.known = asyncio.Event()
        self.failures = 0
        self.resource_version = ""

    def heard(self) -> None:
        self.last_heard = self.clock()

    def silent(self, now: float | None = None) -> bool:
        now = self.clock() if now is None else now
        return watch_silent(self.last_heard, now, self.timeout_seconds)

    async def run(self) -> None:
        """Until cancelled. A failed attempt (timeouts, resets, bad JSON, refusals: the watch
        must not die) is retried after `retry_delay`; a clean end starts the next at once."""
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(Exception),
            wait=lambda attempt: retry_delay(attempt.attempt_number, self.timeout_seconds),
            before_sleep=self._failed,
        )
        while True:
            await retrying(self._list_and_watch)
            self._recovered()

    async def _list_and_watch(self) -> None:
        if not self.resource_version:
            await self._list()
        try:
            await self._watch_once()
        except KubeError as exc:
            if not exc.gone:
                raise
            self.resource_version = ""  # too old to resume from: list again at once

    async def _list(self) -> None:
        result = await self.api.get(
            self.collection, query=watch_query(self.name), timeout=self.timeout_seconds
        )
        items = [
            item
            for item in result.get("items") or []
            if (item.get("metadata") or {}).get("name") == self.name
        ]
        self.resource_version = str((result.get("metadata") or {}).get("resourceVersion") or "")
        self.on_object(items[0] if items else None)
        self.heard()
        self.known.set()

    async def _watch_once(self) -> None:
        stream = self.api.watch(
            self.collection,
            self.name,
            resource_version=self.resource_version,
            timeout_seconds=self.timeout_seconds,
            read_timeout=self.timeout_seconds + READ_MARGIN_SECONDS,
        )
        async for event in stream:
            kind = event.get("type")
            obj = event.get("object") or {}
            if kind == "ERROR":
                code = int(obj.get("code") or 500)
                raise KubeError(code, str(obj.get("reason") or "watch error"), str(obj)[:300])
            version = str((obj.get("metadata") or {}).get("resourceVersion") or "")
            named = (obj.get("metadata") or {}).get("name") == self.name
            if kind in ("ADDED", "MODIFIED", "DELETED") and named:
                self.on_object(None if kind == "DELETED" else obj)
            if version:
                self.resource_version = version
            self.heard()
        self.heard()  # the server ended the stream at its timeout: a clean end

    def _recovered(self) -> None:
        if self.failures:
            log.info(
                "control watch works again",
                extra={"watch": self.label, "failed_attempts": self.failures},
            )
        self.failures = 0

    def _failed(self, attempt: RetryCallState) -> None:
        self.failures = attempt.attempt_number
        exc = attempt.outcome.exception() if attempt.outcome else None
        extra = {"watch": self.label, "error": str(exc)[:300], "failed_attempts": self.failures}
        if self.failures == 1:
            log.warning("control watch failed; retrying", extra=extra)
        else:
            log.debug("control watch still failing", extra=extra)


class ControlWatcher:
    """Keeps `state` (both switches and suspension) current from the watches."""

    def __init__(
        self,
        api: KubeApi,
        namespace: str,
        bot: str,
        *,
        fleet_switch: tuple[str, str] | None,
        timeout_seconds: int,
        on_change: Callable[[ControlState], None],
        initial: Mapping[str, Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.on_change = on_change
        self.clock = clock
        self.state = ControlState(bot=bot_control(initial) if initial else BotControl())
        self.watches = [
            ObjectWatch(
                api,
                tradingbot_path(namespace),
                bot,
                label="tradingbot",
                timeout_seconds=timeout_seconds,
                on_object=self._bot_changed,
                clock=clock,
            )
        ]
        if fleet_switch is not None:
            fleet_namespace, fleet_name = fleet_switch
            self.watches.append(
                ObjectWatch(
                    api,
                    namespaced_path("v1", fleet_namespace, "configmaps"),
                    fleet_name,
                    label="fleet-switch",
                    timeout_seconds=timeout_seconds,
                    on_object=self._fleet_changed,
                    clock=clock,
                )
            )
        self._tasks: list[asyncio.Task[None]] = []

    def _set(self, state: ControlState) -> None:
        if state != self.state:
            self.state = state
            self.on_change(state)

    def _bot_changed(self, obj: Mapping[str, Any] | None) -> None:
        self._set(replace(self.state, bot=bot_control(obj)))

    def _fleet_changed(self, obj: Mapping[str, Any] | None) -> None:
        self._set(replace(self.state, fleet=fleet_halt(obj)))

    @property
    def known(self) -> bool:
        """Every watched object has been read at least once."""
        return all(w.known.is_set() for w in self.watches)

    def silent_watches(self) -> list[str]:
        now = self.clock()
        return [w.label for w in self.watches if w.silent(now)]

    def silent(self) -> bool:
        return bool(self.silent_watches())

    def start(self) -> None:
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(w.run(), name=f"control-watch-{w.label}") for w in self.watches
            ]

    async def wait_known(self, stop: asyncio.Event) -> bool:
        """Until every object was read (True) or `stop` is set (False)."""
        waits = [asyncio.create_task(w.known.wait()) for w in self.watches]
        stopped = asyncio.create_task(stop.wait())
        try:
            while not self.known and not stop.is_set():
                await asyncio.wait({*waits, stopped}, return_when=asyncio.FIRST_COMPLETED)
            return self.known
        finally:
            for task in (*waits, stopped):
                task.cancel()

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*tasks, return_exceptions=True)
