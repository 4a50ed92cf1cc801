"""`status --watch`: the live status view, redrawn on every change, fed by a thread that
lists and then watches TradingBots and reconnects after errors.
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
from collections.abc import Callable
from typing import Any, Final, TextIO

from tradingbot_api.constants import API_GROUP, PLURAL, VERSION
from tradingbot_api.times import kube_time, utc_now
from tradingbot_plugin.core import Clock, ExitCode, _mapping
from tradingbot_plugin.format import (
    _no_bots_message,
    _render_status,
    _sort_key,
    dump,
    feed_lines,
    strip_server_fields,
)
from tradingbot_plugin.kube import RESOURCE, Kube, _kube_errors, api_error

# Server-side watch timeout: the API server ends the stream after this, and we reconnect
# from the last resourceVersion. Short enough that a silently dead connection is noticed.
WATCH_TIMEOUT_SECONDS: Final = 60
WATCH_RETRY_SECONDS: Final = 2.0
# While any bot shows a countdown ("restart in 2s"), the table is redrawn this often.
COUNTDOWN_REDRAW_SECONDS: Final = 1.0


class _Watcher(threading.Thread):
    """Lists, then watches TradingBots, feeding events to a queue; relists after 410 Gone.

    Runs in a thread so the drawing loop can redraw countdowns and react to Ctrl-C while
    the stream blocks on the socket.
    """

    def __init__(
        self,
        kube: Kube,
        namespace: str | None,
        name: str | None,
        selector: str | None,
        events: queue.Queue[tuple[str, Any]],
        stop: threading.Event,
        timeout_seconds: int,
    ) -> None:
        super().__init__(name="tradingbot-watch", daemon=True)
        self.kube = kube
        self.namespace = namespace
        self.field_selector = f"metadata.name={name}" if name else None
        self.selector = selector
        self.events = events
        self.stop_event = stop
        self.timeout_seconds = timeout_seconds
        self._current: Any = None

    def _list_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        if self.selector:
            kwargs["label_selector"] = self.selector
        if self.field_selector:
            kwargs["field_selector"] = self.field_selector
        return kwargs

    def _list(self) -> tuple[list[dict[str, Any]], str]:
        custom = self.kube.custom
        if self.namespace is None:
            result = custom.list_cluster_custom_object(
                API_GROUP, VERSION, PLURAL, **self._list_kwargs()
            )
        else:
            result = custom.list_namespaced_custom_object(
                API_GROUP, VERSION, self.namespace, PLURAL, **self._list_kwargs()
            )
        return list(result.get("items") or []), str(result["metadata"]["resourceVersion"])

    def _stream(self, resource_version: str) -> str | None:
        """Follow one watch request; the last resourceVersion seen, None after 410 Gone."""
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        custom = self.kube.custom
        stream_watch = watch.Watch()
        self._current = stream_watch
        kwargs = {
            **self._list_kwargs(),
            "resource_version": resource_version,
            "timeout_seconds": self.timeout_seconds,
            "allow_watch_bookmarks": True,
            # The client-side read timeout catches a connection that died without a FIN.
            "_request_timeout": self.timeout_seconds + 15,
        }
        if self.namespace is None:
            stream = stream_watch.stream(
                custom.list_cluster_custom_object, API_GROUP, VERSION, PLURAL, **kwargs
            )
        else:
            stream = stream_watch.stream(
                custom.list_namespaced_custom_object,
                API_GROUP,
                VERSION,
                self.namespace,
                PLURAL,
                **kwargs,
            )
        try:
            for event in stream:
                if self.stop_event.is_set():
                    break
                obj = event.get("raw_object") or {}
                version = _mapping(obj.get("metadata")).get("resourceVersion")
                if version:
                    resource_version = str(version)
                if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                    self.events.put((str(event["type"]), obj))
        except ApiException as exc:
            if exc.status == 410:
                return None
            raise
        finally:
            stream_watch.stop()
            stream.close()  # runs the generator's cleanup: the connection goes back now
            self._current = None
        return resource_version

    def run(self) -> None:
        resource_version: str | None = None
        errors = _kube_errors()
        while not self.stop_event.is_set():
            try:
                if resource_version is None:
                    items, resource_version = self._list()
                    self.events.put(("SYNC", items))
                resource_version = self._stream(resource_version)
            except errors as exc:
                if self.stop_event.is_set():
                    return
                error = api_error(
                    exc,
                    verb="watch",
                    resource=RESOURCE,
                    namespace=self.namespace,
                    server=self.kube.server,
                )
                # Retrying cannot fix RBAC, credentials or a missing API.
                if getattr(exc, "status", None) in (401, 403, 404):
                    self.events.put(("FATAL", error))
                    return
                # A dropped connection or a restarting API server: tell, wait, relist.
                self.events.put(("RETRY", error))
                resource_version = None
                self.stop_event.wait(WATCH_RETRY_SECONDS)

    def interrupt(self) -> None:
        current = self._current
        if current is not None:
            with contextlib.suppress(Exception):
                current.stop()


def watch_status(
    kube: Kube,
    namespace: str | None,
    name: str | None,
    selector: str | None,
    out: TextIO,
    err: TextIO,
    stop: threading.Event,
    *,
    output: str = "table",
    interactive: bool = False,
    clock: Clock = utc_now,
    timeout_seconds: int = WATCH_TIMEOUT_SECONDS,
    feed: Callable[[], list[dict[str, Any]]] | None = None,
) -> int:
    """Draw the status table on every change until `stop` is set (or Ctrl-C in the caller).

    With `feed` (a function returning Events), interactive terminals also show the latest
    Events about the bots under the table.

    Interactive terminals get the table redrawn in place (and every second while a countdown
    runs); pipes get a new table per change. With -o json/yaml each changed object is
    printed (JSON: one object per line).
    """
    events: queue.Queue[tuple[str, Any]] = queue.Queue()
    watcher = _Watcher(kube, namespace, name, selector, events, stop, timeout_seconds)
    watcher.start()
    bots: dict[tuple[str, str], dict[str, Any]] = {}
    with_namespace = namespace is None
    synced = False
    last_drawn = ""
    try:
        while not stop.is_set():
            changed: list[dict[str, Any]] = []
            try:
                kind, payload = events.get(timeout=COUNTDOWN_REDRAW_SECONDS)
                batch = [(kind, payload)]
                while True:
                    try:
                        batch.append(events.get_nowait())
                    except queue.Empty:
                        break
            except queue.Empty:
                batch = []
            for kind, payload in batch:
                if kind == "FATAL":
                    err.write(f"error: {payload.message}\n")
                    return int(payload.code)
                if kind == "RETRY":
                    err.write(f"warning: {payload.message}; reconnecting\n")
                    continue
                if kind == "SYNC":
                    bots = {_sort_key(b): b for b in payload}
                    changed.extend(payload)
                    synced = True
                    continue
                key = _sort_key(payload)
                if kind == "DELETED":
                    bots.pop(key, None)
                else:
                    bots[key] = payload
                changed.append(payload)
            if not synced:
                continue
            if output != "table":
                for obj in changed:
                    if output == "json":
                        out.write(json.dumps(strip_server_fields(obj), ensure_ascii=False) + "\n")
                    else:
                        out.write("---\n" + dump(strip_server_fields(obj), "yaml"))
                out.flush()
                continue
            now = clock()
            if not bots:
                text = _no_bots_message(namespace)
            else:
                text = _render_status(bots.values(), now, with_namespace=with_namespace)
            if interactive and feed is not None:
                lines = feed_lines(feed(), now)
                text += "\n\nRecent events:\n" + ("\n".join(lines) if lines else "(none yet)")
            if text == last_drawn:
                continue
            if interactive:
                # Home + clear screen, then the table: a redraw in place, like `watch`.
                out.write("\x1b[H\x1b[2J" + f"{kube_time(now)}\n" + text + "\n")
            elif batch:
                # Pipes and logs: a new table per change, not per countdown tick.
                out.write(("\n" if last_drawn else "") + text + "\n")
            else:
                continue
            out.flush()
            last_drawn = text
    finally:
        stop.set()
        watcher.interrupt()
        watcher.join(timeout=5)
    return ExitCode.OK
