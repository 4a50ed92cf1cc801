"""The trader Lease: who may take it, renewal, loss, release (in-memory API, fake clock)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

from tests.fakeapi import Call, FakeApiServer
from tradingbot.config import Settings
from tradingbot_api.constants import LABEL_BOT
from tradingbot_api.lease import (
    LeaseFence,
    LeaseLostError,
    LeaseView,
    Observation,
    lease_valid,
    may_acquire,
    observe,
)

NS = "bots"
GV = "coordination.k8s.io/v1"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fence(kube: Any, identity: str, clock: Clock) -> LeaseFence:
    return LeaseFence(
        kube,
        NS,
        "alpha-trader",
        identity,
        labels={LABEL_BOT: "alpha"},
        duration_seconds=15,
        renew_interval=5,
        renew_deadline=10,
        retry_interval=0.01,
        clock=clock,
    )


def holder(kube: FakeApiServer) -> str | None:
    obj = kube.get("Lease", NS, "alpha-trader")
    assert obj is not None
    return obj["spec"].get("holderIdentity")


def precreated_lease() -> dict[str, Any]:
    """A Lease with no holder, as the operator creates it."""
    return {
        "apiVersion": GV,
        "kind": "Lease",
        "metadata": {"name": "alpha-trader", "namespace": NS},
        "spec": {},
    }


def test_may_acquire_rules() -> None:
    held = LeaseView("pod-a", 15, "7")
    assert may_acquire(None, "pod-b", None, 0, 15) == (True, "absent")
    assert may_acquire(LeaseView("", 15, "7"), "pod-b", None, 0, 15) == (True, "released")
    assert may_acquire(held, "pod-a", None, 0, 15)[0]
    seen = Observation("7", since=100.0)
    assert may_acquire(held, "pod-b", seen, 114.9, 15) == (False, "held by pod-a")
    assert may_acquire(held, "pod-b", seen, 115.0, 15)[0]
    assert may_acquire(held, "pod-b", None, 1e9, 15)[0] is False  # never observed: wait


def test_observation_restarts_when_the_lease_changes() -> None:
    first = observe(None, LeaseView("a", 15, "1"), 10.0)
    assert observe(first, LeaseView("a", 15, "1"), 20.0) is first
    assert observe(first, LeaseView("a", 15, "2"), 20.0) == Observation("2", 20.0)


async def test_acquire_absent_and_precreated_leases() -> None:
    kube, clock = FakeApiServer(), Clock()
    a = fence(kube, "pod-a", clock)
    assert await a.try_acquire() and a.held
    obj = kube.get("Lease", NS, "alpha-trader")
    assert obj is not None
    assert obj["spec"]["leaseDurationSeconds"] == 15
    assert obj["metadata"]["labels"] == {"trading.r7.dev/bot": "alpha"}
    assert obj["spec"]["renewTime"].endswith("Z") and len(obj["spec"]["renewTime"]) == 27

    kube2 = FakeApiServer()
    kube2.put(precreated_lease())
    b = fence(kube2, "pod-b", clock)
    assert await b.try_acquire()
    assert holder(kube2) == "pod-b"


async def test_second_instance_waits_until_expiry_then_takes_over() -> None:
    kube, clock = FakeApiServer(), Clock()
    a, b = fence(kube, "pod-a", clock), fence(kube, "pod-b", clock)
    assert await a.try_acquire()
    assert not await b.try_acquire()
    clock.now += 14
    assert not await b.try_acquire()
    clock.now += 1  # a has not renewed for a full lease duration as b observed it
    assert await b.try_acquire()
    assert holder(kube) == "pod-b"
    obj = kube.get("Lease", NS, "alpha-trader")
    assert obj is not None and obj["spec"]["leaseTransitions"] == 1
    # a finds out at its next renewal and stops.
    with pytest.raises(LeaseLostError):
        await a.renew_once()


async def test_renewals_keep_others_out() -> None:
    kube, clock = FakeApiServer(), Clock()
    a, b = fence(kube, "pod-a", clock), fence(kube, "pod-b", clock)
    assert await a.try_acquire()
    for _ in range(5):
        clock.now += 5
        assert not await b.try_acquire()
        await a.renew_once()
    assert a.held


async def test_released_lease_is_taken_at_once() -> None:
    kube, clock = FakeApiServer(), Clock()
    a, b = fence(kube, "pod-a", clock), fence(kube, "pod-b", clock)
    assert await a.try_acquire()
    await a.release()
    assert not a.held
    assert holder(kube) is None
    assert await b.try_acquire()


async def test_release_does_not_touch_a_lease_held_by_someone_else() -> None:
    kube, clock = FakeApiServer(), Clock()
    a, b = fence(kube, "pod-a", clock), fence(kube, "pod-b", clock)
    assert await a.try_acquire()
    assert not await b.try_acquire()
    clock.now += 15
    assert await b.try_acquire()
    await a.release()
    assert holder(kube) == "pod-b"


class ReadersMeet:
    """A transport on which every GET answers only once two GETs were answered: both
    contenders have read the Lease before either writes."""

    def __init__(self, kube: FakeApiServer) -> None:
        self.kube = kube
        self.barrier = asyncio.Barrier(2)

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        answer = await self.kube.request(method, path, **kwargs)
        if method == "GET":
            await asyncio.wait_for(self.barrier.wait(), 5)
        return answer

    def stream(
        self, path: str, *, query: Mapping[str, Any] | None = None, read_timeout: float = 60.0
    ) -> AsyncIterator[dict[str, Any]]:
        return self.kube.stream(path, query=query, read_timeout=read_timeout)


async def test_racing_contenders_cannot_both_win() -> None:
    kube, clock = FakeApiServer(), Clock()
    kube.put(precreated_lease())
    both_read = ReadersMeet(kube)
    a, b = fence(both_read, "pod-a", clock), fence(both_read, "pod-b", clock)
    results = await asyncio.gather(a.try_acquire(), b.try_acquire())
    assert sorted(results) == [False, True]
    assert [c.method for c in kube.calls] == ["GET", "GET", "PUT", "PUT"]


async def test_unrenewed_lease_is_lost_after_the_deadline() -> None:
    kube, clock = FakeApiServer(), Clock()
    a = fence(kube, "pod-a", clock)
    a.renew_interval = 0.01
    assert await a.try_acquire()
    kube.fail_next(500, method="PUT", times=10_000)
    task = asyncio.create_task(a.keep_renewed())
    await asyncio.sleep(0.05)
    assert a.held  # failures within the deadline are tolerated
    clock.now += 10
    await asyncio.wait_for(task, 5)
    assert a.lost.is_set() and not a.held


async def test_acquire_waits_and_returns_false_on_stop() -> None:
    kube, clock = FakeApiServer(), Clock()
    assert await fence(kube, "pod-a", clock).try_acquire()
    stop = asyncio.Event()
    b = fence(kube, "pod-b", clock)
    waiter = asyncio.create_task(b.acquire(stop))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    stop.set()
    assert await asyncio.wait_for(waiter, 2) is False


def test_timing_must_leave_room() -> None:
    with pytest.raises(ValueError):
        LeaseFence(
            FakeApiServer(),
            NS,
            "x",
            "y",
            duration_seconds=10,
            renew_interval=5,
            renew_deadline=12,
        )


@pytest.mark.parametrize(
    ("acquired", "lost", "renewed_at", "now", "valid", "case"),
    [
        (True, False, 100.0, 100.0, True, "just renewed"),
        (True, False, 100.0, 109.9, True, "inside the window"),
        (True, False, 100.0, 110.0, False, "window over"),
        (True, False, 100.0, 400.0, False, "frozen for minutes"),
        (False, False, 100.0, 100.0, False, "never acquired"),
        (True, True, 100.0, 100.0, False, "known lost"),
        (True, False, 100.0, 99.0, False, "clock behind the renewal"),
    ],
)
def test_lease_validity_by_the_process_clock(
    acquired: bool, lost: bool, renewed_at: float, now: float, valid: bool, case: str
) -> None:
    assert (
        lease_valid(acquired=acquired, lost=lost, renewed_at=renewed_at, now=now, valid_for=10)
        == valid
    )


async def test_validity_counts_from_when_the_renewal_was_sent() -> None:
    kube, clock = FakeApiServer(), Clock()
    a = fence(kube, "pod-a", clock)
    assert await a.try_acquire()
    sent = clock.now

    def slow_answer(call: Call) -> None:
        if call.method == "PUT":
            clock.now += 3  # the server answers 3 s after the request left

    kube.before = slow_answer
    await a.renew_once()
    clock.now = sent + 1 + 10  # 10 s after the renewal was sent, 8 s after it was answered
    assert not a.held


async def test_a_frozen_holder_never_renews_and_knows_it_lost() -> None:
    kube, clock = FakeApiServer(), Clock()
    a = fence(kube, "pod-a", clock)
    a.renew_interval = 0.01
    assert await a.try_acquire()
    puts = sum(1 for c in kube.calls if c.method == "PUT")
    # SIGSTOP for longer than the lease, then SIGCONT: nobody took it over, yet a renewal now
    # would hide that this process was not the holder for a while.
    clock.now += 20
    assert not a.held
    with pytest.raises(LeaseLostError):
        await a.renew_once()
    await asyncio.wait_for(a.keep_renewed(), 2)
    assert a.lost.is_set()
    assert sum(1 for c in kube.calls if c.method == "PUT") == puts


async def test_two_processes_of_one_pod_are_two_contenders() -> None:
    kube, clock = FakeApiServer(), Clock()
    first = Settings(bot_name="alpha", namespace=NS, pod_name="alpha-1", pod_uid="u1")
    second = Settings(bot_name="alpha", namespace=NS, pod_name="alpha-1", pod_uid="u1")
    assert first.identity != second.identity
    assert await fence(kube, first.identity, clock).try_acquire()
    assert not await fence(kube, second.identity, clock).try_acquire()
    assert holder(kube) == first.identity
