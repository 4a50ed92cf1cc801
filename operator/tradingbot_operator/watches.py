"""Operator-wide facts that change without any event on a bot: node heartbeats and the
fleet-wide kill switch. Each is one small poll for the whole operator (not per bot), and a
change wakes exactly the bots it concerns.

- Node heartbeats: the node Leases in `kube-node-lease` (renewed by each kubelet, or by the
  localkube process node). A node whose Lease was not renewed within its duration (plus a
  margin for clock skew) has stopped heartbeating; its pods may still look Ready, because a
  dead node reports nothing.
- The fleet switch: the ConfigMap named by the operator setting `fleet_switch`, key `halt`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from tradingbot_api.constants import FLEET_SWITCH_KEY, HaltMode, effective_halt
from tradingbot_api.times import parse_time, utc_now

log = logging.getLogger(__name__)

NODE_LEASE_NAMESPACE = "kube-node-lease"
# Skew between the node's clock and ours that must not make a live node look dead.
HEARTBEAT_MARGIN_SECONDS = 5.0


def lease_expired(lease: Mapping[str, Any] | None, now: dt.datetime, margin: float = 0.0) -> bool:
    """Whether nobody holds this Lease any more: released, never renewed, or not renewed
    within its duration (plus `margin`)."""
    spec = (lease or {}).get("spec") or {}
    if not spec.get("holderIdentity"):
        return True
    renewed = parse_time(spec.get("renewTime")) or parse_time(spec.get("acquireTime"))
    duration = spec.get("leaseDurationSeconds")
    if renewed is None or not isinstance(duration, int):
        return True
    return now > renewed + dt.timedelta(seconds=duration + margin)


def stale_nodes(leases: Iterable[Mapping[str, Any]], now: dt.datetime) -> set[str]:
    """Names of the nodes whose heartbeat Lease expired."""
    return {
        str((lease.get("metadata") or {}).get("name"))
        for lease in leases
        if lease_expired(lease, now, HEARTBEAT_MARGIN_SECONDS)
    }


class Lister(Protocol):
    async def request(self, method: str, path: str) -> Any: ...


class NodeHeartbeats:
    """Which nodes stopped heartbeating, refreshed every `poll` seconds."""

    def __init__(self, api: Lister, poll: float = 2.0) -> None:
        self.api = api
        self.poll = poll
        self.stale: set[str] = set()
        self.known: set[str] = set()

    def lost(self, node: str | None) -> bool:
        """A node counts as lost when its Lease expired; one without a Lease (a cluster
        whose kubelets publish none) never does."""
        return bool(node) and node in self.stale

    async def refresh(self) -> set[str]:
        """Re-read the Leases; returns the nodes that became stale just now."""
        path = f"/apis/coordination.k8s.io/v1/namespaces/{NODE_LEASE_NAMESPACE}/leases"
        result = await self.api.request("GET", path)
        leases = list((result or {}).get("items") or [])
        stale = stale_nodes(leases, utc_now())
        newly = stale - self.stale
        self.stale = stale
        self.known = {str((lease.get("metadata") or {}).get("name")) for lease in leases}
        if newly:
            log.warning("nodes stopped heartbeating: %s", ", ".join(sorted(newly)))
        return newly

    async def run(self, on_stale: Callable[[set[str]], None]) -> None:
        while True:
            try:
                newly = await self.refresh()
            except Exception as err:  # no verdict: keep the last one, try again
                log.warning("cannot read node heartbeats (%s)", err)
                newly = set()
            if newly:
                on_stale(newly)
            await asyncio.sleep(self.poll)


class FleetSwitch:
    """The fleet-wide kill switch, re-read every `poll` seconds."""

    def __init__(self, api: Lister, namespace: str, name: str, poll: float = 1.0) -> None:
        self.api = api
        self.path = f"/api/v1/namespaces/{namespace}/configmaps/{name}"
        self.poll = poll
        self.mode: HaltMode | None = None

    async def refresh(self) -> bool:
        """Re-read the switch; returns whether its mode changed."""
        try:
            obj = await self.api.request("GET", self.path)
        except Exception as err:
            if getattr(err, "status", None) != 404:
                raise
            obj = None  # no ConfigMap: no fleet-wide halt
        mode = effective_halt(((obj or {}).get("data") or {}).get(FLEET_SWITCH_KEY))
        changed = mode != self.mode
        if changed:
            log.warning("fleet-wide kill switch: %s", mode or "off")
        self.mode = mode
        return changed

    async def run(self, on_change: Callable[[], None]) -> None:
        while True:
            try:
                changed = await self.refresh()
            except Exception as err:
                log.warning("cannot read the fleet switch (%s)", err)
                changed = False
            if changed:
                on_change()
            await asyncio.sleep(self.poll)


async def cancel(tasks: Iterable[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
