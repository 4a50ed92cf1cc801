"""The list-and-watch cache: the store's rules as a table, the informer against the shared
fake API (list, watch, bookmarks, 410 Gone, a broken watch, own writes)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from tests.fakeapi import FakeApiServer
from tradingbot_api.informer import Informer, Key, Store, is_older, without_managed_fields

NS = "fleet"
PODS = f"/api/v1/namespaces/{NS}/pods"


def obj(name: str, rv: int | str | None, uid: str = "u1", **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"namespace": NS, "name": name, "uid": uid}
    if rv is not None:
        meta["resourceVersion"] = str(rv)
    return {"metadata": meta, **extra}


@pytest.mark.parametrize(
    ("candidate", "held", "older"),
    [
        pytest.param(obj("a", 5), obj("a", 7), True, id="a smaller revision is older"),
        pytest.param(obj("a", 7), obj("a", 5), False, id="a larger revision is newer"),
        pytest.param(obj("a", 5), obj("a", 5), False, id="the same revision is not older"),
        pytest.param(obj("a", "x"), obj("a", 7), False, id="no integer: never older"),
        pytest.param(obj("a", None), obj("a", 7), False, id="no revision: never older"),
        pytest.param(obj("a", 5), None, False, id="nothing held: not older"),
    ],
)
def test_what_counts_as_an_earlier_state(
    candidate: dict[str, Any], held: dict[str, Any] | None, older: bool
) -> None:
    assert is_older(candidate, held) is older


def test_an_event_older_than_an_own_write_does_not_replace_it() -> None:
    store = Store()
    store.observe(obj("a", 10, phase="Terminating"))  # the answer to our delete
    assert store.apply({"type": "MODIFIED", "object": obj("a", 8, phase="Running")}) is None
    assert store.get((NS, "a")) == obj("a", 10, phase="Terminating")
    assert store.apply({"type": "MODIFIED", "object": obj("a", 11)}) == (NS, "a")
    assert store.get((NS, "a")) == obj("a", 11)


def test_a_deleted_event_removes_only_the_object_it_names() -> None:
    store = Store()
    store.observe(obj("a", 12, uid="new"))  # created again under the same name, by us
    assert store.apply({"type": "DELETED", "object": obj("a", 9, uid="old")}) is None
    assert store.get((NS, "a")) is not None
    assert store.apply({"type": "DELETED", "object": obj("a", 13, uid="new")}) == (NS, "a")
    assert store.get((NS, "a")) is None


def test_an_own_write_answered_after_the_delete_event_does_not_bring_it_back() -> None:
    store = Store()
    store.observe(obj("a", 5, uid="u1"))
    store.apply({"type": "DELETED", "object": obj("a", 7, uid="u1")})
    assert not store.observe(obj("a", 6, uid="u1", phase="Terminating"))  # the delete's answer
    assert store.get((NS, "a")) is None
    assert store.observe(obj("a", 9, uid="u2"))  # a new object under the name is welcome


def test_an_object_back_in_a_label_selected_collection_is_taken_again() -> None:
    """A label-selected watch says DELETED when a pod loses the label; labelled again, the
    same uid comes back with a later version."""
    store = Store()
    store.observe(obj("a", 5, uid="u1"))
    store.apply({"type": "DELETED", "object": obj("a", 7, uid="u1")})
    assert store.apply({"type": "ADDED", "object": obj("a", 9, uid="u1")}) == (NS, "a")


def test_what_is_kept_leaves_managed_fields_out() -> None:
    store = Store(transform=without_managed_fields)
    managed = obj("a", 3)
    managed["metadata"]["managedFields"] = [{"manager": "kubectl"}]
    assert store.observe(managed)
    assert store.get((NS, "a")) == obj("a", 3)
    assert managed["metadata"]["managedFields"]  # the caller's object is left alone
    assert not store.observe(managed)  # the same state again: no change


def test_a_repeated_event_is_no_change_and_bookmarks_change_nothing() -> None:
    store = Store()
    assert store.apply({"type": "ADDED", "object": obj("a", 3)}) == (NS, "a")
    assert store.apply({"type": "ADDED", "object": obj("a", 3)}) is None
    assert (
        store.apply({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}}) is None
    )
    assert list(store.values()) == [obj("a", 3)]


def test_a_relist_drops_what_vanished_and_keeps_what_came_after_it() -> None:
    store = Store()
    store.observe(obj("gone", 4))
    store.observe(obj("kept", 4))
    store.observe(obj("mine", 21))  # written after the list's snapshot at 20
    changed = store.replace([obj("kept", 6), obj("new", 19)], "20")
    assert changed == {(NS, "gone"), (NS, "kept"), (NS, "new")}
    assert sorted(k[1] for k in store.objects) == ["kept", "mine", "new"]


# -- the informer against the fake API --------------------------------------------------------


def pod(name: str, bot: str = "b") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"trading.r7.dev/bot": bot}},
        "spec": {"containers": [{"name": "bot", "image": "x"}]},
    }


async def until(check: Callable[[], bool], seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


class Running:
    def __init__(self, informer: Informer) -> None:
        self.informer = informer
        self.task: asyncio.Task[None] | None = None
        self.changes: list[tuple[Key, bool]] = []
        informer.on_change = lambda key, o: self.changes.append((key, o is not None))

    async def __aenter__(self) -> Informer:
        self.task = asyncio.create_task(self.informer.run())
        await asyncio.wait_for(self.informer.synced.wait(), 5)
        return self.informer

    async def __aexit__(self, *exc_info: object) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


def names(informer: Informer) -> list[str]:
    return sorted(o["metadata"]["name"] for o in informer.store.values())


async def test_it_lists_then_follows_creates_changes_and_deletes() -> None:
    api = FakeApiServer()
    api.put(pod("p1"))
    api.put(pod("other", bot="c"))
    informer = Informer(api, PODS, query={"labelSelector": "trading.r7.dev/bot=b"})  # type: ignore[arg-type]
    running = Running(informer)
    async with running:
        assert names(informer) == ["p1"]
        api.put(pod("p2"))
        api.annotate("Pod", NS, "p1", note="x")
        await until(lambda: names(informer) == ["p1", "p2"])
        await until(
            lambda: (
                "note" in (informer.store.get((NS, "p1")) or {})["metadata"].get("annotations", {})
            )
        )
        api.remove("Pod", NS, "p2")
        await until(lambda: names(informer) == ["p1"])
    assert ((NS, "p2"), False) in running.changes and ((NS, "other"), True) not in running.changes


async def test_a_timed_out_watch_resumes_from_its_bookmark_without_a_new_list() -> None:
    api = FakeApiServer()
    informer = Informer(api, PODS, watch_seconds=1)  # type: ignore[arg-type]
    async with Running(informer):
        await until(lambda: api.watches_opened >= 2, 5)
        api.put(pod("late"))
        await until(lambda: names(informer) == ["late"])
    assert informer.lists == 1


async def test_gone_and_a_broken_watch_are_followed_by_a_new_list() -> None:
    api = FakeApiServer()
    api.put(pod("p1"))
    api.fail_next(410, method="WATCH")
    informer = Informer(api, PODS, watch_seconds=1, backoff=(0.01,))  # type: ignore[arg-type]
    async with Running(informer):
        await until(lambda: informer.lists >= 2)
        api.fail_next(500, method="WATCH")
        api.put(pod("p2"))
        await until(lambda: informer.lists >= 3 and names(informer) == ["p1", "p2"])


async def test_a_silent_watch_is_opened_again_without_a_new_list() -> None:
    api = FakeApiServer()
    informer = Informer(api, PODS, read_timeout=0.2)  # type: ignore[arg-type]
    async with Running(informer):
        api.freeze_watches = True  # the open watch goes dead
        await until(lambda: api.watches_opened >= 2)
        api.freeze_watches = False
        await until(lambda: api.watches_opened >= 3)
        api.put(pod("after"))
        await until(lambda: names(informer) == ["after"])
    assert informer.lists == 1
