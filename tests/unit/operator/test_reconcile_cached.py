"""The reconciler on the fleet cache (two informers over the shared fake API): passes read
no bot and no pods from the API server, its own writes are seen at once even when the
watches are cut, and a stale cache costs a refused write, never a second pod."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.fakeapi import FakeApiServer
from tests.unit.operator.test_reconcile import (
    BOT,
    NS,
    Log,
    audit,
    finish_deletions,
    make_ready,
    pods,
    reconciler,
    server,
    status,
    user_patch,
)
from tradingbot_api.constants import ANNOTATION_APPLIED_SPEC, LABEL_BOT
from tradingbot_api.kubeclient import KubeError
from tradingbot_operator.cache import FleetCache
from tradingbot_operator.kubeapi import KubeApi
from tradingbot_operator.metrics import OperatorMetrics
from tradingbot_operator.reconcile import BotReconciler, Fleet
from tradingbot_operator.recorder import AuditRecorder
from tradingbot_operator.settings import OperatorSettings

__all__ = ["audit", "server"]  # the fixtures this module shares with test_reconcile


@pytest.fixture
async def cached(server: FakeApiServer, audit: Log) -> AsyncIterator[tuple[Fleet, list[Any]]]:
    fleet = Fleet(
        settings=OperatorSettings(node_heartbeats=False),
        api=KubeApi(server),  # type: ignore[arg-type]
        recorder=AuditRecorder(durable=[audit]),
        metrics=OperatorMetrics(),
    )
    woken: list[Any] = []
    fleet.cache = FleetCache(server, NS, woken.append, watch_seconds=60)  # type: ignore[arg-type]
    tasks = fleet.cache.start()
    await asyncio.wait_for(fleet.cache.synced(), 5)
    yield fleet, woken
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def settle(fleet: Fleet, server: FakeApiServer) -> None:
    """Until the cache holds what the fake holds (the watches delivered everything)."""
    assert fleet.cache is not None
    for _ in range(500):
        bot = server.get("TradingBot", NS, BOT)
        held = fleet.cache.bot((NS, BOT))
        wanted = {p["metadata"]["resourceVersion"] for p in pods(server)}
        seen = {p["metadata"]["resourceVersion"] for p in fleet.cache.pods_of((NS, BOT))}
        if bot and held and held["metadata"] == bot["metadata"] and wanted == seen:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the cache did not catch up")


def reads(server: FakeApiServer, since: int) -> list[str]:
    """Bot and pod reads (GET and LIST) after call number `since`."""
    return [
        c.path
        for c in server.calls[since:]
        if c.method == "GET" and ("/tradingbots" in c.path or c.path.endswith("/pods"))
    ]


async def test_a_pass_on_a_warm_cache_reads_nothing_from_the_api_server(
    cached: tuple[Fleet, list[Any]], server: FakeApiServer
) -> None:
    fleet, _ = cached
    await reconciler(fleet).reconcile_once()
    make_ready(server)
    since = len(server.calls)
    for _ in range(5):  # until a pass has nothing more to write
        await settle(fleet, server)
        before = len(server.writes())
        await reconciler(fleet).reconcile_once()
        if len(server.writes()) == before:
            break
    assert status(server)["phase"] == "Running"
    assert reads(server, since) == []
    await settle(fleet, server)
    steady = len(server.calls)
    await reconciler(fleet).reconcile_once()
    assert server.calls[steady:] == []  # nothing changed: not one request


async def test_its_own_pod_is_seen_at_once_with_the_watches_cut(
    cached: tuple[Fleet, list[Any]], server: FakeApiServer
) -> None:
    fleet, _ = cached
    server.freeze_watches = True
    await reconciler(fleet).reconcile_once()  # creates the pod
    for _ in range(3):
        await reconciler(fleet).reconcile_once()
    assert len(pods(server)) == 1
    creates = [c for c in server.writes("POST") if c.path.endswith("/pods") and not c.query]
    assert len(creates) == 1


async def test_a_stale_bot_costs_a_refused_write_and_a_fresh_read(
    cached: tuple[Fleet, list[Any]], server: FakeApiServer
) -> None:
    fleet, _ = cached
    server.freeze_watches = True  # the edit below never reaches the cache by itself
    user_patch(server, {"spec": {"symbols": ["ETH/USDT"]}})
    with pytest.raises(KubeError) as raised:
        await reconciler(fleet).reconcile_once()
    assert raised.value.conflict and pods(server) == []
    await reconciler(fleet)._read_bot(live=True)  # what `run` does after a conflict
    await reconciler(fleet).reconcile_once()
    (pod,) = pods(server)
    assert "ETH/USDT" in pod["metadata"]["annotations"][ANNOTATION_APPLIED_SPEC]


async def test_a_restart_on_the_cache_never_has_two_pods(
    cached: tuple[Fleet, list[Any]], server: FakeApiServer
) -> None:
    fleet, woken = cached
    server.graceful_pods = True
    await reconciler(fleet).reconcile_once()
    make_ready(server)
    await settle(fleet, server)
    await reconciler(fleet).reconcile_once()
    (old,) = pods(server)
    woken.clear()
    user_patch(server, {"spec": {"symbols": ["ETH/USDT"]}})
    await settle(fleet, server)
    assert (NS, BOT) in woken  # the edit woke the bot's loop
    for _ in range(4):  # deletes the old pod, then waits for it to go
        await reconciler(fleet).reconcile_once()
        assert len(pods(server)) == 1
    assert pods(server)[0]["metadata"]["uid"] == old["metadata"]["uid"]
    finish_deletions(server)
    await settle(fleet, server)
    await reconciler(fleet).reconcile_once()
    (new,) = pods(server)
    assert new["metadata"]["uid"] != old["metadata"]["uid"]
    assert "ETH/USDT" in new["metadata"]["annotations"][ANNOTATION_APPLIED_SPEC]
    assert status(server)["phase"] == "Restarting"


async def test_a_pod_the_cache_missed_stops_the_create_it_would_have_caused(
    cached: tuple[Fleet, list[Any]], server: FakeApiServer
) -> None:
    """A pod made by someone else just now (its event not in yet): the quorum list before
    the create finds it, so no second pod is made; the cache learns of it."""
    fleet, _ = cached
    server.freeze_watches = True
    server.put(
        {
            "kind": "Pod",
            "metadata": {"name": "by-hand", "namespace": NS, "labels": {LABEL_BOT: BOT}},
            "spec": {"containers": [{"name": "bot", "image": "x"}]},
        }
    )
    decision = await reconciler(fleet).reconcile_once()
    assert [p["metadata"]["name"] for p in pods(server)] == ["by-hand"]
    assert decision.requeue_after == 0
    assert fleet.cache is not None
    assert [p["metadata"]["name"] for p in fleet.cache.pods_of((NS, BOT))] == ["by-hand"]


async def test_what_a_pass_reads_is_its_own_copy(
    cached: tuple[Fleet, list[Any]], server: FakeApiServer
) -> None:
    fleet, _ = cached
    assert fleet.cache is not None
    body = await reconciler(fleet)._read_bot()
    body["metadata"]["annotations"] = {"changed": "by a pass"}
    held = fleet.cache.bot((NS, BOT))
    assert held is not None and "changed" not in (held["metadata"].get("annotations") or {})


async def test_the_finalizer_on_a_stale_cache_reads_again_instead_of_failing(
    cached: tuple[Fleet, list[Any]], server: FakeApiServer
) -> None:
    """kopf retries a failed finalizer only after a minute: a conflict must not fail it."""
    fleet, _ = cached
    await reconciler(fleet).reconcile_once()
    make_ready(server)
    await settle(fleet, server)
    await reconciler(fleet).reconcile_once()
    await settle(fleet, server)
    server.freeze_watches = True
    server.annotate("TradingBot", NS, BOT, touched="by someone")  # the cache is behind now
    assert await reconciler(fleet).finalize_once() is False  # stopping the bot first
    assert pods(server) == [] or pods(server)[0]["metadata"].get("deletionTimestamp")
    assert status(server)["phase"] == "Stopping"


async def test_a_new_loop_waits_for_the_finalizer_being_added_and_then_writes_once(
    server: FakeApiServer, audit: Log
) -> None:
    """kopf starts a bot's loop as it sends the patch adding its finalizer; a loop that
    waits for it in the cache writes its first status without a refusal or a fresh read."""
    fleet = Fleet(
        settings=OperatorSettings(node_heartbeats=False),
        api=KubeApi(server),  # type: ignore[arg-type]
        recorder=AuditRecorder(durable=[audit]),
        metrics=OperatorMetrics(),
    )
    fleet.cache = FleetCache(
        server,  # type: ignore[arg-type]
        NS,
        lambda key: fleet.wake(*key),
        watch_seconds=60,
    )
    tasks = fleet.cache.start()
    try:
        await asyncio.wait_for(fleet.cache.synced(), 5)
        loop = reconciler(fleet)

        def finalized(bot: Any) -> bool:
            return "example/finalizer" in (bot["metadata"].get("finalizers") or [])

        waiting = asyncio.create_task(loop.until_cached(finalized, 5))
        await asyncio.sleep(0.1)
        assert not waiting.done()
        user_patch(server, {"metadata": {"finalizers": ["example/finalizer"]}})
        await asyncio.wait_for(waiting, 2)
        since = len(server.calls)
        await loop.reconcile_once()  # a refused write would raise here
        assert status(server)["phase"]
        assert [r for r in reads(server, since) if "/tradingbots" in r] == []
        # Bounded: a condition never met ends at the timeout, a bot not cached at once.
        started = asyncio.get_running_loop().time()
        await loop.until_cached(lambda bot: False, 0.2)
        assert 0.15 < asyncio.get_running_loop().time() - started < 1.0
        await BotReconciler(fleet, NS, "absent").until_cached(lambda bot: False, 60)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
