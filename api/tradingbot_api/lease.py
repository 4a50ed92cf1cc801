"""Fencing by a Lease (coordination.k8s.io/v1): at most one process acts for a thing.

A bot trades only while it holds the Lease `<bot>-trader`; an operator replica reconciles
its shard only while it holds the shard's leader Lease. The holder identity is unique per
process (pod name, pod uid and a random nonce drawn at start), so a second process started
with the same pod name and uid is another contender, never "already ours". It renews every
`renew_interval` seconds. The Lease counts as valid, by this process's own monotonic clock,
for `renew_deadline` seconds (the lease duration minus a margin) after the last renewal was
*sent*: the API server stored it no earlier, so nobody else can judge it expired before
then. Before every order and every state write (the bot), or every pass (the operator), it
asks `held`; a process that was frozen (SIGSTOP, a stalled VM) past that window finds it
false the moment it runs again, acts on nothing, and `keep_renewed` reports the Lease lost
without trying to renew it.

Another process takes the Lease only when it is absent, released (no holder), or expired.
Expiry is judged the way client-go's leader election does: by how long this process has seen
the same resourceVersion, on its own monotonic clock, so clock skew between nodes cannot make
two holders. Every write carries the resourceVersion it read, so two contenders cannot both
win.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tradingbot_api.kubeclient import KubeClient, KubeError
from tradingbot_api.times import micro_time

log = logging.getLogger(__name__)

LEASE_GROUP_VERSION = "coordination.k8s.io/v1"


def lease_path(namespace: str, name: str = "") -> str:
    path = f"/apis/{LEASE_GROUP_VERSION}/namespaces/{namespace}/leases"
    return f"{path}/{name}" if name else path


@dataclass(frozen=True)
class LeaseView:
    """The parts of a Lease the decision needs."""

    holder: str
    duration_seconds: int
    resource_version: str
    transitions: int = 0
    acquire_time: str = ""

    @classmethod
    def from_object(cls, obj: dict[str, Any]) -> LeaseView:
        spec = obj.get("spec") or {}
        return cls(
            holder=spec.get("holderIdentity") or "",
            duration_seconds=int(spec.get("leaseDurationSeconds") or 0),
            resource_version=str(obj["metadata"]["resourceVersion"]),
            transitions=int(spec.get("leaseTransitions") or 0),
            acquire_time=spec.get("acquireTime") or "",
        )


@dataclass(frozen=True)
class Observation:
    """Since when (monotonic seconds) this process has seen `resource_version` unchanged."""

    resource_version: str
    since: float


def observe(previous: Observation | None, view: LeaseView, now: float) -> Observation:
    if previous is not None and previous.resource_version == view.resource_version:
        return previous
    return Observation(view.resource_version, now)


def may_acquire(
    view: LeaseView | None,
    identity: str,
    observation: Observation | None,
    now: float,
    default_duration: int,
) -> tuple[bool, str]:
    """Whether `identity` may take the Lease now, and why (for the log)."""
    if view is None:
        return True, "absent"
    if not view.holder:
        return True, "released"
    if view.holder == identity:
        return True, "already ours"
    duration = view.duration_seconds or default_duration
    if observation is not None and now - observation.since >= duration:
        return True, f"expired (held by {view.holder}, unchanged for {duration}s)"
    return False, f"held by {view.holder}"


def lease_valid(
    *, acquired: bool, lost: bool, renewed_at: float, now: float, valid_for: float
) -> bool:
    """Whether this process may still act as the holder: acquired, not known lost, and
    renewed (sent) less than `valid_for` seconds ago by its own clock."""
    return acquired and not lost and 0.0 <= now - renewed_at < valid_for


class LeaseLostError(Exception):
    """The Lease is no longer ours: stop acting now."""


class LeaseFence:
    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        name: str,
        identity: str,
        *,
        labels: dict[str, str] | None = None,
        purpose: str = "trader lease",
        duration_seconds: int = 15,
        renew_interval: float = 5.0,
        renew_deadline: float = 10.0,
        retry_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not renew_interval < renew_deadline < duration_seconds:
            raise ValueError("need renew_interval < renew_deadline < duration_seconds")
        self.client = client
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.labels = dict(labels or {})
        self.purpose = purpose
        self.duration_seconds = duration_seconds
        self.renew_interval = renew_interval
        self.renew_deadline = renew_deadline
        self.retry_interval = retry_interval
        self.clock = clock
        # A request must give up before the deadline it is racing against.
        self.request_timeout = max(1.0, renew_deadline - renew_interval)
        self.path = lease_path(namespace, name)
        self.lost = asyncio.Event()
        self._acquired = False
        self._last_renewed = 0.0
        self._object: dict[str, Any] | None = None
        self._observation: Observation | None = None
        self._acquire_time = ""

    @property
    def held(self) -> bool:
        """True while this process may act: acquired, not lost, renewed recently."""
        return lease_valid(
            acquired=self._acquired,
            lost=self.lost.is_set(),
            renewed_at=self._last_renewed,
            now=self.clock(),
            valid_for=self.renew_deadline,
        )

    def _spec(self, *, transitions: int) -> dict[str, Any]:
        now = micro_time()
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.duration_seconds,
            "acquireTime": self._acquire_time or now,
            "renewTime": now,
            "leaseTransitions": transitions,
        }

    async def _read(self) -> dict[str, Any] | None:
        try:
            found = await self.client.request("GET", self.path, timeout=self.request_timeout)
        except KubeError as err:
            if err.not_found:
                return None
            raise
        return dict(found)

    async def _write(self, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return dict(
            await self.client.request(method, path, body=body, timeout=self.request_timeout)
        )

    async def try_acquire(self) -> bool:
        """One attempt; True when this process now holds the Lease."""
        obj = await self._read()
        now = self.clock()
        sent = now
        view = LeaseView.from_object(obj) if obj else None
        if view is not None:
            self._observation = observe(self._observation, view, now)
        allowed, why = may_acquire(
            view, self.identity, self._observation, now, self.duration_seconds
        )
        if not allowed:
            log.info(f"waiting for the {self.purpose}", extra={"lease": self.name, "why": why})
            return False
        self._acquire_time = (
            micro_time()
            if view is None or view.holder != self.identity
            else (view.acquire_time or micro_time())
        )
        transitions = (
            0 if view is None else view.transitions + (0 if view.holder == self.identity else 1)
        )
        body: dict[str, Any]
        try:
            if obj is None:
                body = {
                    "apiVersion": LEASE_GROUP_VERSION,
                    "kind": "Lease",
                    "metadata": {
                        "name": self.name,
                        "namespace": self.namespace,
                        "labels": self.labels,
                    },
                    "spec": self._spec(transitions=transitions),
                }
                result = await self._write("POST", lease_path(self.namespace), body)
            else:
                body = {**obj, "spec": self._spec(transitions=transitions)}
                result = await self._write("PUT", self.path, body)
        except KubeError as exc:
            if exc.conflict:
                log.info(f"lost the race for the {self.purpose}", extra={"lease": self.name})
                return False
            raise
        self._object = result
        self._acquired = True
        self._last_renewed = sent
        self.lost.clear()
        log.info(
            f"acquired the {self.purpose}",
            extra={"lease": self.name, "why": why, "identity": self.identity},
        )
        return True

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait until the Lease is ours (True) or `stop` is set (False)."""
        while not stop.is_set():
            try:
                if await self.try_acquire():
                    return True
            except Exception as exc:
                log.warning("lease request failed", extra={"lease": self.name, "error": str(exc)})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.retry_interval)
        return False

    async def renew_once(self) -> None:
        """Renew, raising LeaseLostError when someone else holds the Lease now."""
        if self._object is None:
            raise LeaseLostError("lease was never acquired")
        if not self.held:
            # Past the validity window someone may already hold it; a renewal that still
            # succeeded would hide that this process acted on an expired Lease.
            raise LeaseLostError(
                f"lease {self.name} not renewed for {self.clock() - self._last_renewed:.1f}s "
                f"(valid for {self.renew_deadline:g}s)"
            )
        sent = self.clock()
        spec = dict(self._object.get("spec") or {})
        body = {
            **self._object,
            "spec": {**self._spec(transitions=int(spec.get("leaseTransitions") or 0))},
        }
        try:
            self._object = await self._write("PUT", self.path, body)
        except KubeError as exc:
            if not (exc.not_found or exc.conflict):
                raise
            fresh = await self._read()
            holder = ((fresh or {}).get("spec") or {}).get("holderIdentity") or ""
            if holder != self.identity:
                raise LeaseLostError(f"lease {self.name} now held by {holder or 'nobody'}") from exc
            self._object = fresh  # our own Lease changed (e.g. a label): retry next round
            return
        self._last_renewed = sent

    async def keep_renewed(self) -> None:
        """Renew until the Lease is lost (sets `lost`) or the task is cancelled."""
        while not self.lost.is_set():
            await asyncio.sleep(self.renew_interval)
            if not self.held:
                log.error(
                    f"{self.purpose} expired by this process's clock (was it frozen?)",
                    extra={"lease": self.name, "valid_for": self.renew_deadline},
                )
                self.lost.set()
                return
            try:
                await self.renew_once()
            except LeaseLostError as exc:
                log.error(f"{self.purpose} lost", extra={"lease": self.name, "error": str(exc)})
                self.lost.set()
                return
            except Exception as exc:
                log.warning("lease renewal failed", extra={"lease": self.name, "error": str(exc)})
            if self.clock() - self._last_renewed >= self.renew_deadline:
                log.error(
                    f"{self.purpose} not renewed within the deadline",
                    extra={"lease": self.name, "deadline": self.renew_deadline},
                )
                self.lost.set()
                return

    async def release(self) -> None:
        """Give the Lease up (no holder) so a successor need not wait for expiry."""
        if not self._acquired:
            return
        self._acquired = False
        try:
            obj = await self._read()
            if obj is None or (obj.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            spec = dict(obj.get("spec") or {})
            spec.pop("holderIdentity", None)
            spec["renewTime"] = micro_time()
            # client-go releases with a 1 s duration so that readers agree it is over.
            spec["leaseDurationSeconds"] = 1
            spec.pop("acquireTime", None)
            await self._write("PUT", self.path, {**obj, "spec": spec})
            log.info(f"released the {self.purpose}", extra={"lease": self.name})
        except Exception as exc:
            log.warning(
                f"could not release the {self.purpose}; it will expire",
                extra={"lease": self.name, "error": str(exc)},
            )
