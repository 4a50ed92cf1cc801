"""The bot's watches on its TradingBot and the fleet switch: silence, retries, the watch loop
against the in-memory API (list, events, bookmarks, clean ends, 410, a cut connection), and
the JSON-lines framing of the shared client."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from tests.fakeapi import FakeApiServer
from tradingbot.control import ControlWatcher, ObjectWatch, retry_delay, watch_silent
from tradingbot.killswitch import ControlState
from tradingbot.kube import KubeApi, watch_query
from tradingbot_api.constants import ANNOTATION_HALT, HaltMode
from tradingbot_api.kubeclient import MAX_LINE_BYTES, split_lines

TB = "trading.r7.dev/v1alpha1"
NS = "bots"


@pytest.mark.parametrize(
    ("last", "now", "timeout", "silent"),
    [
        (100.0, 100.0, 10, False),
        (100.0, 130.0, 10, False),  # exactly three timeouts: not yet
        (100.0, 130.1, 10, True),
        (100.0, 103.5, 1, True),
        (100.0, 99.0, 10, False),
    ],
)
def test_a_watch_is_silent_after_three_timeouts(
    last: float, now: float, timeout: int, silent: bool
) -> None:
    assert watch_silent(last, now, timeout) == silent


@pytest.mark.parametrize(
    ("failures", "delay"), [(0, 0.0), (1, 0.5), (2, 1.0), (3, 2.0), (5, 8.0), (6, 10.0), (60, 10.0)]
)
def test_failed_watches_retry_sooner_than_the_timeout(failures: int, delay: float) -> None:
    assert retry_delay(failures, 10) == delay


def test_list_and_watch_queries_select_the_object_by_name() -> None:
    listed = watch_query("alpha")
    assert listed == {"fieldSelector": "metadata.name=alpha"}
    watched = watch_query("alpha", resource_version="42", timeout_seconds=10)
    assert watched == {
        "fieldSelector": "metadata.name=alpha",
        "watch": "true",
        "allowWatchBookmarks": "true",
        "timeoutSeconds": "10",
        "resourceVersion": "42",
    }


async def test_the_watch_requests_carry_the_query() -> None:
    kube = FakeApiServer()
    kube.put(tradingbot())
    watch = object_watch(kube, [], Clock())
    task = asyncio.create_task(watch.run())
    try:
        await until(lambda: kube.watches_opened >= 1)
    finally:
        task.cancel()
    (listed,) = [c for c in kube.calls if c.method == "GET"]
    assert listed.path == f"/apis/{TB}/namespaces/{NS}/tradingbots"
    assert listed.query == {"fieldSelector": "metadata.name=alpha"}
    watched = next(c for c in kube.calls if c.method == "WATCH")
    assert watched.path == listed.path
    assert watched.query == {
        "fieldSelector": "metadata.name=alpha",
        "watch": "true",
        "allowWatchBookmarks": "true",
        "timeoutSeconds": "1",
        "resourceVersion": "1",
    }


@pytest.mark.parametrize(
    ("buffer", "lines", "rest"),
    [
        (b"", [], b""),
        (b'{"a":1}\n', [b'{"a":1}'], b""),
        (b'{"a":1}\n{"b"', [b'{"a":1}'], b'{"b"'),
        (b'{"a":1}\n\n{"b":2}\n', [b'{"a":1}', b'{"b":2}'], b""),
        (b"partial", [], b"partial"),
    ],
)
def test_watch_streams_are_split_into_json_lines(
    buffer: bytes, lines: list[bytes], rest: bytes
) -> None:
    assert split_lines(buffer) == (lines, rest)


def test_an_endless_line_is_refused() -> None:
    with pytest.raises(ValueError, match="larger than"):
        split_lines(b"x" * (MAX_LINE_BYTES + 1))


def tradingbot(**annotations: str) -> dict[str, Any]:
    return {
        "apiVersion": TB,
        "kind": "TradingBot",
        "metadata": {"name": "alpha", "namespace": NS, "annotations": annotations},
        "spec": {"profile": "stable"},
    }


async def until(predicate: Callable[[], Any], limit: float = 5.0) -> Any:
    deadline = asyncio.get_running_loop().time() + limit
    while asyncio.get_running_loop().time() < deadline:
        if value := predicate():
            return value
        await asyncio.sleep(0.005)
    raise AssertionError("condition not met in time")


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return asyncio.get_running_loop().time() + self.offset


def object_watch(
    kube: FakeApiServer, seen: list[Mapping[str, Any] | None], clock: Callable[[], float]
) -> ObjectWatch:
    return ObjectWatch(
        KubeApi(kube),
        f"/apis/{TB}/namespaces/{NS}/tradingbots",
        "alpha",
        label="tradingbot",
        timeout_seconds=1,
        on_object=seen.append,
        clock=clock,
    )


async def test_the_watch_lists_follows_changes_and_comes_back_after_each_timeout() -> None:
    kube = FakeApiServer()
    kube.put(tradingbot())
    seen: list[Mapping[str, Any] | None] = []
    clock = Clock()
    watch = object_watch(kube, seen, clock)
    task = asyncio.create_task(watch.run())
    try:
        await until(lambda: watch.known.is_set())
        assert seen[-1] is not None and seen[-1]["metadata"]["annotations"] == {}
        kube.annotate("TradingBot", NS, "alpha", **{ANNOTATION_HALT: "true"})
        await until(lambda: (seen[-1] or {}).get("metadata", {}).get("annotations"))
        # The server ends each watch after timeoutSeconds; the next one starts at once.
        await until(lambda: kube.watches_opened >= 3, limit=5)
        assert not watch.silent() and watch.failures == 0
        lists = [c for c in kube.calls if c.method == "GET" and c.path.endswith("/tradingbots")]
        assert len(lists) == 1  # resumed from the resourceVersion, never listed again
        kube.remove("TradingBot", NS, "alpha")
        await until(lambda: seen[-1] is None)
    finally:
        task.cancel()


async def test_a_gone_resource_version_lists_again() -> None:
    kube = FakeApiServer()
    kube.put(tradingbot())
    seen: list[Mapping[str, Any] | None] = []
    watch = object_watch(kube, seen, Clock())
    kube.fail_next(410, method="WATCH")
    task = asyncio.create_task(watch.run())
    try:
        await until(lambda: kube.watches_opened >= 2)
        lists = [c for c in kube.calls if c.method == "GET" and c.path.endswith("/tradingbots")]
        assert len(lists) == 2 and watch.failures == 0
    finally:
        task.cancel()


async def test_a_cut_watch_turns_silent_and_recovers() -> None:
    kube = FakeApiServer()
    kube.put(tradingbot())
    seen: list[Mapping[str, Any] | None] = []
    clock = Clock()
    watch = object_watch(kube, seen, clock)
    task = asyncio.create_task(watch.run())
    try:
        await until(lambda: watch.known.is_set())
        kube.freeze_watches = True
        await asyncio.sleep(0.05)
        heard = watch.last_heard
        clock.offset += 3.5  # three timeouts and a half without a word
        assert watch.silent()
        kube.freeze_watches = False
        await until(lambda: watch.last_heard > heard + 3.0, limit=10)
        assert not watch.silent()
    finally:
        task.cancel()


async def test_failures_are_retried_and_counted() -> None:
    kube = FakeApiServer()
    kube.put(tradingbot())
    kube.fail_next(403, method="WATCH")
    watch = object_watch(kube, [], Clock())
    task = asyncio.create_task(watch.run())
    try:
        await until(lambda: watch.failures == 1)
        await until(lambda: kube.watches_opened >= 2 and watch.failures == 0, limit=5)
    finally:
        task.cancel()


async def test_the_watcher_combines_the_bot_and_the_fleet_switch() -> None:
    kube = FakeApiServer()
    kube.put(tradingbot())
    states: list[ControlState] = []
    watcher = ControlWatcher(
        KubeApi(kube),
        NS,
        "alpha",
        fleet_switch=("fleet-ns", "fleet-switch"),
        timeout_seconds=1,
        on_change=states.append,
        initial=tradingbot(),
    )
    watcher.start()
    try:
        stop = asyncio.Event()
        await asyncio.wait_for(watcher.wait_known(stop), 5)  # a missing ConfigMap is known
        assert watcher.known and watcher.state.mode is None and states == []
        kube.put(
            {
                "kind": "ConfigMap",
                "metadata": {"name": "fleet-switch", "namespace": "fleet-ns"},
                "data": {"halt": "drain"},
            }
        )
        await until(lambda: watcher.state.mode == HaltMode.DRAIN)
        assert watcher.state.source == "fleet"
        kube.annotate("TradingBot", NS, "alpha", **{ANNOTATION_HALT: "flatten"})
        await until(lambda: watcher.state.mode == HaltMode.FLATTEN)
        assert watcher.state.source == "bot"
        assert [s.mode for s in states] == [HaltMode.DRAIN, HaltMode.FLATTEN]
        assert not watcher.silent() and watcher.silent_watches() == []
    finally:
        await watcher.stop()


async def test_waiting_for_the_first_read_ends_on_stop() -> None:
    kube = FakeApiServer()
    kube.fail_next(500, method="GET", times=1000)  # nothing can be read
    watcher = ControlWatcher(
        KubeApi(kube), NS, "alpha", fleet_switch=None, timeout_seconds=1, on_change=lambda s: None
    )
    watcher.start()
    stop = asyncio.Event()
    try:
        waiting = asyncio.create_task(watcher.wait_known(stop))
        await asyncio.sleep(0.1)
        assert not waiting.done()
        stop.set()
        assert await asyncio.wait_for(waiting, 2) is False
    finally:
        await watcher.stop()
