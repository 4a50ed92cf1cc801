"""The process node's heartbeat, as a kubelet's: a node Lease plus the Node's Ready condition.

The Lease is `coordination.k8s.io/v1` `Lease` named after the node in namespace
`kube-node-lease` (created when absent), `holderIdentity` = the node name, owned by the Node,
`leaseDurationSeconds` = NODE_LEASE_DURATION_SECONDS unless configured, `renewTime` renewed
every duration * NODE_LEASE_RENEW_FRACTION (a kubelet's 0.25), sooner again after a failed
renewal. A node whose Lease's renewTime + leaseDurationSeconds lies in the past is lost
(`lease_expired`): its agent died or is cut off; its containers may still run. The Node's
Ready condition gets its lastHeartbeatTime every NODE_STATUS_SECONDS.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from kubernetes import client

log = logging.getLogger("localkube.node")

NODE_LEASE_NAMESPACE = "kube-node-lease"
NODE_LEASE_DURATION_SECONDS = 10
NODE_LEASE_RENEW_FRACTION = 0.25
NODE_STATUS_SECONDS = 10.0
# After a failed renewal try again soon, but never hammer an API server that is restarting.
RETRY_MIN_SECONDS = 0.2


def _micro(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _seconds(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def renew_interval(duration_seconds: float) -> float:
    return max(duration_seconds * NODE_LEASE_RENEW_FRACTION, RETRY_MIN_SECONDS)


def retry_delay(failures: int, interval: float) -> float:
    """After n failed renewals in a row: 0.2 s, 0.4 s, ... capped at the renew interval."""
    return float(min(RETRY_MIN_SECONDS * 2 ** max(failures - 1, 0), interval))


def lease_expired(
    renew_time: dt.datetime | None, duration_seconds: int | None, now: dt.datetime
) -> bool:
    """True when the holder has not renewed within the lease's duration (or never did)."""
    if renew_time is None or not duration_seconds:
        return True
    if renew_time.tzinfo is None:
        renew_time = renew_time.replace(tzinfo=dt.UTC)
    return renew_time + dt.timedelta(seconds=duration_seconds) < now


def lease_body(
    node_name: str, node_uid: str | None, duration_seconds: int, now: dt.datetime
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": node_name, "namespace": NODE_LEASE_NAMESPACE}
    if node_uid:
        # As a kubelet does: the Lease goes with its Node.
        metadata["ownerReferences"] = [
            {"apiVersion": "v1", "kind": "Node", "name": node_name, "uid": node_uid}
        ]
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": metadata,
        "spec": {
            "holderIdentity": node_name,
            "leaseDurationSeconds": int(duration_seconds),
            "renewTime": _micro(now),
        },
    }


def node_status(
    name: str, now: dt.datetime, *, ready: bool, since: dt.datetime, message: str
) -> dict[str, Any]:
    """The Node's status: the Ready condition with its heartbeat, addresses, capacity."""
    cpus = str(os.cpu_count() or 1)
    return {
        "conditions": [
            {
                "type": "Ready",
                "status": "True" if ready else "False",
                "reason": "KubeletReady" if ready else "KubeletNotReady",
                "message": message,
                "lastHeartbeatTime": _seconds(now),
                "lastTransitionTime": _seconds(since),
            }
        ],
        "addresses": [
            {"type": "InternalIP", "address": "127.0.0.1"},
            {"type": "Hostname", "address": name},
        ],
        "capacity": {"cpu": cpus, "memory": "16Gi", "pods": "250"},
        "allocatable": {"cpu": cpus, "memory": "16Gi", "pods": "250"},
        "nodeInfo": {
            "kubeletVersion": "localkube",
            "operatingSystem": "linux",
            "architecture": "amd64",
            "containerRuntimeVersion": "process://",
            "kernelVersion": os.uname().release,
            "osImage": "localkube",
            "kubeProxyVersion": "",
            "machineID": "",
            "systemUUID": "",
            "bootID": "",
        },
    }


class Heartbeat:
    """Renews the node Lease and the Node's Ready heartbeat on a thread until stopped."""

    def __init__(
        self,
        core: client.CoreV1Api,
        coord: client.CoordinationV1Api,
        node_name: str,
        *,
        lease_duration_seconds: int = NODE_LEASE_DURATION_SECONDS,
        status_seconds: float = NODE_STATUS_SECONDS,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        if lease_duration_seconds < 1:
            raise ValueError("the node lease lasts at least one second")
        self.core, self.coord, self.name = core, coord, node_name
        self.duration = int(lease_duration_seconds)
        self.interval = renew_interval(self.duration)
        self.status_seconds = status_seconds
        self.clock = clock
        self.node_uid: str | None = None
        self.ready_since = clock()
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self, node_uid: str | None) -> Heartbeat:
        """Beat once now (so the Lease exists when this returns), then on a thread."""
        self.node_uid = node_uid
        self.ready_since = self.clock()
        self._ensure_namespace()
        self.renew_lease()
        self.report_status(ready=True)
        self.thread = threading.Thread(target=self._loop, name="node-heartbeat", daemon=True)
        self.thread.start()
        return self

    def stop(self, *, report_not_ready: bool = True) -> None:
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(timeout=5)
        if report_not_ready:
            try:
                self.ready_since = self.clock()
                self.report_status(ready=False, message="localkube process node stopped")
            except Exception as err:  # the API server may already be gone
                log.info("could not report the node stopped: %s", err)

    def _loop(self) -> None:
        failures = 0
        next_status = self.clock() + dt.timedelta(seconds=self.status_seconds)
        while not self.stopping.wait(
            retry_delay(failures, self.interval) if failures else self.interval
        ):
            try:
                self.renew_lease()
                if self.clock() >= next_status:
                    self.report_status(ready=True)
                    next_status = self.clock() + dt.timedelta(seconds=self.status_seconds)
                failures = 0
            except Exception as err:  # the API server may be restarting; beat again soon
                failures += 1
                log.warning("node heartbeat failed (%d in a row): %s", failures, err)

    def _ensure_namespace(self) -> None:
        try:
            self.core.create_namespace({"metadata": {"name": NODE_LEASE_NAMESPACE}})
        except client.ApiException as err:
            if err.status != 409:
                raise

    def renew_lease(self) -> None:
        body = lease_body(self.name, self.node_uid, self.duration, self.clock())
        try:
            self.coord.patch_namespaced_lease(self.name, NODE_LEASE_NAMESPACE, body)
        except client.ApiException as err:
            if err.status != 404:
                raise
            try:
                self.coord.create_namespaced_lease(NODE_LEASE_NAMESPACE, body)
            except client.ApiException as create_err:
                if create_err.status != 404:
                    raise
                self._ensure_namespace()  # someone deleted it: as the kubelet, make it again
                self.coord.create_namespaced_lease(NODE_LEASE_NAMESPACE, body)

    def report_status(self, *, ready: bool, message: str = "") -> None:
        status = node_status(
            self.name,
            self.clock(),
            ready=ready,
            since=self.ready_since,
            message=message or "localkube process node is ready",
        )
        self.core.patch_node_status(self.name, {"status": status})
