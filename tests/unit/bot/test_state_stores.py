"""State backends: the PVC file store (atomic, previous copy) and the ConfigMap store
(resourceVersion preconditions) against an in-memory API."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.fakeapi import FakeApiServer
from tradingbot.kube import KubeApi
from tradingbot.ledger import Execution, apply_fill
from tradingbot.state import (
    ConfigMapStateStore,
    FileStateStore,
    StateCheckpoint,
    StateConflictError,
    StateCorruptError,
    StateWriteError,
    decode_state,
)


def with_fill(state: StateCheckpoint, n: int) -> StateCheckpoint:
    state, _ = apply_fill(
        state,
        Execution(
            "BTC/USDT",
            "buy",
            0.001,
            100.0,
            0.1,
            0.0001,
            "USDT",
            f"o{n}",
            f"c{n}",
            "2026-03-01T00:00:00.000Z",
        ),
    )
    return state.next(reason="fill", writer_pod="pod-a")


# ---------------------------------------------------------------- FileStateStore


async def test_file_store_first_start_is_empty(tmp_path: Path) -> None:
    result = await FileStateStore(tmp_path / "state").load()
    assert result.source == "empty" and result.state == StateCheckpoint()


async def test_file_store_round_trip_keeps_previous(tmp_path: Path) -> None:
    store = FileStateStore(tmp_path)
    first = with_fill(StateCheckpoint(), 1)
    second = with_fill(first, 2)
    await store.save(first)
    await store.save(second)
    assert decode_state((tmp_path / "state.json").read_text()) == second
    assert decode_state((tmp_path / "state.prev.json").read_text()) == first
    restored = await FileStateStore(tmp_path).load()
    assert restored.source == "current" and restored.state == second
    assert [p for p in os.listdir(tmp_path) if p.endswith(".tmp")] == []


async def test_file_store_fsyncs_file_and_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    await FileStateStore(tmp_path).save(with_fill(StateCheckpoint(), 1))
    assert len(synced) == 2  # the temp file before the rename, the directory after it


async def test_crash_before_rename_leaves_the_stored_state_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FileStateStore(tmp_path)
    good = with_fill(StateCheckpoint(), 1)
    await store.save(good)

    def crash(*args: object) -> None:
        raise OSError("power cut")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(StateWriteError):
        await store.save(with_fill(good, 2))
    monkeypatch.undo()
    restored = await FileStateStore(tmp_path).load()
    assert restored.source == "current" and restored.state == good


async def test_crash_between_renames_restores_the_previous_copy(tmp_path: Path) -> None:
    store = FileStateStore(tmp_path)
    first = with_fill(StateCheckpoint(), 1)
    await store.save(first)
    await store.save(with_fill(first, 2))
    # The window between "state.json -> state.prev.json" and "tmp -> state.json":
    (tmp_path / "state.json").replace(tmp_path / "state.prev.json")
    restored = await FileStateStore(tmp_path).load()
    assert restored.fell_back and restored.problem == "state.json missing"
    assert restored.state.checkpoint_seq == 2


async def test_corrupt_current_falls_back_and_is_moved_aside(tmp_path: Path) -> None:
    store = FileStateStore(tmp_path)
    first = with_fill(StateCheckpoint(), 1)
    await store.save(first)
    await store.save(with_fill(first, 2))
    (tmp_path / "state.json").write_text('{"schemaVersion": 1, "trunc')
    store = FileStateStore(tmp_path)
    restored = await store.load()
    assert restored.fell_back and restored.state == first
    following = restored.state.next(reason="restore", writer_pod="pod-b")
    await store.save(following)
    # The good previous copy was not overwritten by the corrupt file.
    assert decode_state((tmp_path / "state.prev.json").read_text()) == first
    assert decode_state((tmp_path / "state.json").read_text()) == following
    assert len([p for p in os.listdir(tmp_path) if p.startswith("state.corrupt-")]) == 1


async def test_unreadable_state_without_fallback_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text("garbage")
    with pytest.raises(StateCorruptError):
        await FileStateStore(tmp_path).load()


# ---------------------------------------------------------------- ConfigMapStateStore

NS = "bots"


def cm(kube: FakeApiServer, name: str = "alpha-state") -> dict:
    obj = kube.get("ConfigMap", NS, name)
    assert obj is not None
    return obj


async def test_configmap_store_creates_when_absent_and_labels_it() -> None:
    kube = FakeApiServer()
    store = ConfigMapStateStore(KubeApi(kube), NS, "alpha")
    assert (await store.load()).source == "empty"
    state = with_fill(StateCheckpoint(), 1)
    await store.save(state)
    obj = cm(kube)
    assert obj["metadata"]["labels"] == {"trading.r7.dev/bot": "alpha"}
    assert decode_state(obj["data"]["state.json"]) == state
    assert "state.prev.json" not in obj["data"]


async def test_configmap_store_uses_a_precreated_empty_configmap() -> None:
    kube = FakeApiServer()
    kube.put(
        {
            "kind": "ConfigMap",
            "metadata": {"name": "alpha-state", "namespace": NS, "labels": {"owner": "operator"}},
            "data": {},
        }
    )
    store = ConfigMapStateStore(KubeApi(kube), NS, "alpha")
    assert (await store.load()).source == "empty"
    first = with_fill(StateCheckpoint(), 1)
    second = with_fill(first, 2)
    await store.save(first)
    await store.save(second)
    obj = cm(kube)
    assert obj["metadata"]["labels"] == {"owner": "operator"}  # the operator's labels stay
    assert decode_state(obj["data"]["state.json"]) == second
    assert decode_state(obj["data"]["state.prev.json"]) == first
    assert ("POST", f"/api/v1/namespaces/{NS}/configmaps") not in [
        (c.method, c.path) for c in kube.calls
    ]


async def test_configmap_write_by_another_writer_is_a_conflict() -> None:
    kube = FakeApiServer()
    mine = ConfigMapStateStore(KubeApi(kube), NS, "alpha")
    theirs = ConfigMapStateStore(KubeApi(kube), NS, "alpha")
    await mine.load()
    await mine.save(with_fill(StateCheckpoint(), 1))
    await theirs.load()
    await theirs.save(with_fill(StateCheckpoint(), 7))
    with pytest.raises(StateConflictError):
        await mine.save(with_fill(StateCheckpoint(), 2))
    assert decode_state(cm(kube)["data"]["state.json"]).journal[-1].order_id == "o7"


async def test_configmap_metadata_change_is_not_a_conflict() -> None:
    kube = FakeApiServer()
    store = ConfigMapStateStore(KubeApi(kube), NS, "alpha")
    await store.load()
    first = with_fill(StateCheckpoint(), 1)
    await store.save(first)
    obj = cm(kube)
    obj["metadata"]["labels"]["team"] = "quant"
    await kube.request("PUT", f"/api/v1/namespaces/{NS}/configmaps/alpha-state", body=obj)
    await store.save(with_fill(first, 2))
    obj = cm(kube)
    assert obj["metadata"]["labels"]["team"] == "quant"
    assert decode_state(obj["data"]["state.json"]).checkpoint_seq == 2


async def test_configmap_deleted_under_the_writer_is_recreated() -> None:
    kube = FakeApiServer()
    store = ConfigMapStateStore(KubeApi(kube), NS, "alpha")
    await store.load()
    first = with_fill(StateCheckpoint(), 1)
    await store.save(first)
    kube.remove("ConfigMap", NS, "alpha-state")
    await store.save(with_fill(first, 2))
    assert decode_state(cm(kube)["data"]["state.json"]).checkpoint_seq == 2


async def test_configmap_api_failure_is_a_write_error() -> None:
    kube = FakeApiServer()
    store = ConfigMapStateStore(KubeApi(kube), NS, "alpha")
    await store.load()
    kube.fail_next(500, method="POST")
    with pytest.raises(StateWriteError):
        await store.save(with_fill(StateCheckpoint(), 1))


async def test_configmap_corrupt_state_falls_back_to_previous_key() -> None:
    kube = FakeApiServer()
    store = ConfigMapStateStore(KubeApi(kube), NS, "alpha")
    await store.load()
    first = with_fill(StateCheckpoint(), 1)
    await store.save(first)
    await store.save(with_fill(first, 2))
    obj = cm(kube)
    obj["data"]["state.json"] = "{oops"
    await kube.request("PUT", f"/api/v1/namespaces/{NS}/configmaps/alpha-state", body=obj)
    store = ConfigMapStateStore(KubeApi(kube), NS, "alpha")
    restored = await store.load()
    assert restored.fell_back and restored.state == first
    await store.save(restored.state.next(reason="restore", writer_pod="pod-b"))
    assert decode_state(cm(kube)["data"]["state.prev.json"]) == first


async def test_configmap_both_keys_unreadable_is_an_error() -> None:
    kube = FakeApiServer()
    kube.put(
        {
            "kind": "ConfigMap",
            "metadata": {"name": "alpha-state", "namespace": NS},
            "data": {"state.json": "{", "state.prev.json": "["},
        }
    )
    with pytest.raises(StateCorruptError):
        await ConfigMapStateStore(KubeApi(kube), NS, "alpha").load()


async def test_configmap_document_stays_under_its_budget() -> None:
    kube = FakeApiServer()
    store = ConfigMapStateStore(KubeApi(kube), NS, "alpha", max_document_bytes=20_000)
    await store.load()
    state = StateCheckpoint()
    for n in range(300):
        state = with_fill(state, n)
    stored = await store.save(state)
    text = cm(kube)["data"]["state.json"]
    assert len(text.encode()) <= 20_000
    assert stored.journal == state.journal[-len(stored.journal) :]
    assert json.loads(text)["stats"]["totalTrades"] == 300
