"""Operator-wide facts that change without any event on a bot: node heartbeats and the
fleet-wide kill switch. Each is one small poll or watch for the whole operator (not per
bot), and a change wakes exactly the bots it concerns.

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
from typing import Any

from tradingbot_api.constants import FLEET_SWITCH_KEY, HaltMode, effective_halt
from tradingbot_api.informer import Informer
from tradingbot_api.kubeclient import KubeClient
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


class NodeHeartbeats:
    """Which nodes stopped heartbeating: the Leases come from a watch, and every `poll`
    seconds they are judged against the clock here, without a request (a dead node sends
    nothing, so the verdict is the clock's). No verdict before the first list is in. A
    stalled watch can only make a live node look lost, and a pod on a lost node is replaced
    only once its bot's own Lease, read live, has expired too."""

    def __init__(self, client: KubeClient, poll: float = 2.0) -> None:
        self.informer = Informer(
            client, f"/apis/coordination.k8s.io/v1/namespaces/{NODE_LEASE_NAMESPACE}/leases"
        )
        self.poll = poll
        self.stale: set[str] = set()
        self.known: set[str] = set()

    def lost(self, node: str | None) -> bool:
        """A node counts as lost when its Lease expired; one without a Lease (a cluster
        whose kubelets publish none) never does."""
        return bool(node) and node in self.stale

    def judge(self, now: dt.datetime) -> set[str]:
        """Judge the Leases as watched; returns the nodes that became stale just now."""
        if not self.informer.synced.is_set():
            return set()
        leases = list(self.informer.store.objects.values())
        stale = stale_nodes(leases, now)
        newly = stale - self.stale
        self.stale = stale
        self.known = {str((lease.get("metadata") or {}).get("name")) for lease in leases}
        if newly:
            log.warning("nodes stopped heartbeating: %s", ", ".join(sorted(newly)))
        return newly

    async def run(self, on_stale: Callable[[set[str]], None]) -> None:
        watching = asyncio.create_task(self.informer.run(), name="node-heartbeats")
        try:
            while True:
                newly = self.judge(utc_now())
                if newly:
                    on_stale(newly)
                await asyncio.sleep(self.poll)
        finally:
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching


class FleetSwitch:
    """The fleet-wide kill switch, kept by a watch of its one ConfigMap (a field selector on
    its name, which the chart's reader Role names): an engaged switch reaches the operator
    within the watch's latency, and at rest costs one request per watch period instead of a
    read a second. The bots watch it themselves; this is what the operator decides by."""

    def __init__(self, client: KubeClient, namespace: str, name: str) -> None:
        self.informer = Informer(
            client,
            f"/api/v1/namespaces/{namespace}/configmaps",
            query={"fieldSelector": f"metadata.name={name}"},
            on_change=self._changed,
        )
        self.mode: HaltMode | None = None
        self._on_change: Callable[[], None] | None = None

    def _changed(self, _key: Any, obj: Mapping[str, Any] | None) -> None:
        mode = effective_halt(((obj or {}).get("data") or {}).get(FLEET_SWITCH_KEY))
        if mode == self.mode:
            return
        log.warning("fleet-wide kill switch: %s", mode or "off")
        self.mode = mode
        if self._on_change is not None:
            self._on_change()

    async def run(self, on_change: Callable[[], None]) -> None:
        self._on_change = on_change
        await self.informer.run()


async def cancel(tasks: Iterable[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
