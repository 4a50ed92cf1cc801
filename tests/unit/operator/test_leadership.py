"""Leader election of a shard: the fleet starts only under the Lease; losing the Lease, or a
fleet that fails to start under it, ends the replica; a stopped replica never starts."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.fakeapi import FakeApiServer
from tradingbot_api.informer import Store
from tradingbot_api.lease import LeaseFence
from tradingbot_operator.leadership import lead, leader_fence, replica_identity
from tradingbot_operator.sharding import Shard

NS = "tradingbot-system"


def quick_fence(kube: FakeApiServer, identity: str) -> LeaseFence:
    return LeaseFence(
        kube,
        NS,
        "tradingbot-operator",
        identity,
        purpose="leader lease",
        duration_seconds=3,
        renew_interval=0.05,
        renew_deadline=1,
        retry_interval=0.01,
    )


async def test_the_fleet_starts_under_the_lease_and_a_taken_lease_ends_the_replica() -> None:
    kube = FakeApiServer()
    fence = quick_fence(kube, "op-a")
    started, lost = asyncio.Event(), asyncio.Event()

    async def start() -> None:
        assert fence.held  # nothing is built before the Lease is ours
        started.set()

    task = asyncio.create_task(lead(fence, start, asyncio.Event(), lost.set))
    await asyncio.wait_for(started.wait(), 2)
    lease = kube.get("Lease", NS, "tradingbot-operator")
    assert lease is not None
    kube.put({**lease, "spec": {**lease["spec"], "holderIdentity": "op-b"}})
    await asyncio.wait_for(lost.wait(), 2)
    await task
    assert not fence.held


async def test_a_fleet_that_fails_to_start_gives_the_replica_up() -> None:
    kube = FakeApiServer()
    lost = asyncio.Event()

    async def start() -> None:
        raise RuntimeError("cache never synced")

    await asyncio.wait_for(lead(quick_fence(kube, "op-a"), start, asyncio.Event(), lost.set), 2)
    assert lost.is_set()


async def test_a_standby_never_starts_and_leaves_quietly() -> None:
    kube = FakeApiServer()
    leader = quick_fence(kube, "op-a")
    assert await leader.try_acquire()
    stop, calls = asyncio.Event(), []

    async def start() -> None:
        calls.append("start")

    task = asyncio.create_task(
        lead(quick_fence(kube, "op-b"), start, stop, lambda: calls.append("lost"))
    )
    await asyncio.sleep(0.1)
    stop.set()
    await asyncio.wait_for(task, 2)
    assert calls == []


def test_each_replica_and_shard_has_its_own_identity_and_lease() -> None:
    assert replica_identity() != replica_identity()
    kube = FakeApiServer()
    assert leader_fence(kube, NS, Shard(1, 2)).name == "tradingbot-operator-shard-1-of-2"
    assert leader_fence(kube, NS, Shard()).name == "tradingbot-operator"


def test_a_store_holds_only_what_it_keeps() -> None:
    shard = Shard(0, 2)
    store = Store(keep=lambda o: shard.owns(o["metadata"]["namespace"], o["metadata"]["name"]))
    bots = [
        {"metadata": {"namespace": "b", "name": f"bot-{i}", "uid": str(i), "resourceVersion": "1"}}
        for i in range(40)
    ]
    for bot in bots:
        store.observe(bot)
    held = {key[1] for key in store.objects}
    assert held == {b["metadata"]["name"] for b in bots if shard.owns("b", b["metadata"]["name"])}
    assert 0 < len(held) < 40


class StuckRenewals:
    """The fake API server, except that every renewal (PUT) hangs, ignoring its timeout, as
    a request queued behind a busy connection pool does."""

    def __init__(self, kube: FakeApiServer) -> None:
        self.kube = kube

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        if method == "PUT":
            await asyncio.Event().wait()
        return await self.kube.request(method, path, **kwargs)


async def test_a_renewal_that_hangs_ends_the_replica_by_its_own_deadline() -> None:
    fence = quick_fence(StuckRenewals(FakeApiServer()), "op-a")  # type: ignore[arg-type]
    lost = asyncio.Event()

    async def start() -> None:
        pass

    task = asyncio.create_task(lead(fence, start, asyncio.Event(), lost.set))
    await asyncio.wait_for(lost.wait(), fence.renew_deadline + 1)
    assert not fence.held
    await task
