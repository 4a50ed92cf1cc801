"""The process node: a Node that runs pods' containers as local processes.

It does a kubelet's job for this machine, against the real API server: registers a Node with
a heartbeat Lease (localkube/heartbeat.py), binds unscheduled pods to itself (there is no
scheduler), starts each container's command with the pod's environment resolved (downward
API, Secret and ConfigMap references), a loopback pod IP of its own (127.0.0.N), a token for
the pod's own ServiceAccount (so RBAC applies to the process exactly as in a cluster), volumes
mapped to per-pod and per-claim directories (Secret volumes written as files before any
container of the pod starts; localkube/volumes.py); it probes readiness over HTTP off the sync
loop (localkube/probes.py), restarts containers by the pod's restartPolicy with back-off, and
on deletion sends SIGTERM, waits the grace period, sends SIGKILL and removes the pod object as
a kubelet would.

Process lifetime. Killing a kubelet does not kill its containers, and neither does killing
this node agent: every container process is the child of its own small supervisor, the shim
(localkube/shim.py), started in a session of its own and not bound to the agent. What bounds a
container's life instead is its node's *anchors*: processes whose death means the cluster or
the session that started it is over. A node run by the CLI (`python -m localkube node`,
`up --node`) is anchored to the cluster's etcd and kube-apiserver, so `LocalCluster.stop` and
`python -m localkube down` end every pod process, adopted ones included, within its grace
period (and both die with a test run that started them, through PDEATHSIG). A
node running inside another program (tests' fixture, `make run`, benchmarks;
`die_with_parent=True`) is anchored to that program's process: its end, however abrupt, ends
the pods. When an anchor dies the shim sends SIGTERM to the container's process group, waits
the pod's grace period and sends SIGKILL. The container in turn carries PR_SET_PDEATHSIG =
SIGKILL towards its shim, so no container runs unsupervised, and when a container exits the
rest of its process group is killed, as when a container's init dies.

Adoption. The shim writes a record per container (localkube/records.py: pod uid, container,
pod IP, pid and /proc start time of the container and of the shim) before the command runs.
A node agent starting on a data dir where another one died reads them: a container whose
recorded process still runs (same pid *and* start time) is adopted (monitored, probed,
reported, terminated with its grace period on deletion) and nothing is started; a dead one is
restarted per restartPolicy and counted; a process whose pod is gone or has another uid is
terminated (localkube/adoption.py decides). Readiness only ever comes from a live process
whose probe passes, and a frozen process's probes time out, so a status never shows Ready for
a container without a live, answering process.

Containers run the project's own Python (its virtualenv's bin directory leads PATH); images
are not pulled. Production runs on a real cluster; this exists so that the real bot runtime
runs against the real API server in tests and in `make run`.

This module is the node's lifecycle (its data dir, its Node object, starting and stopping
its threads); its other jobs are parts of the same object: localkube.admission (watches,
binding, admitting pods), localkube.syncloop (the sync loop and containers' lifecycle),
localkube.podenv (environment, Secrets, volumes), localkube.termination (ending pods) and
localkube.podstatus (status), all over the state of localkube.nodestate.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import signal
import threading
import time

from kubernetes import client

from localkube import procfs
from localkube.admission import LOCAL_PROVISIONER, PodAdmission
from localkube.nodestate import NODE_NAME, RECORDS_DIR
from localkube.podenv import MOUNT_RETRY_SECONDS, TOKEN_SECONDS
from localkube.podnet import Block, PodNetwork, block_of
from localkube.syncloop import BACKOFF_MAX, PodSync

__all__ = [
    "BACKOFF_MAX",
    "LOCAL_PROVISIONER",
    "LOCK_FILE",
    "MOUNT_RETRY_SECONDS",
    "NODE_NAME",
    "RECORDS_DIR",
    "TOKEN_SECONDS",
    "NodeBusyError",
    "ProcessNode",
]

log = logging.getLogger("localkube.node")

LOCK_FILE = "node.lock"


class NodeBusyError(RuntimeError):
    """Another node agent runs on this data dir: two would start every container twice."""


class ProcessNode(PodAdmission, PodSync):
    """Run with `start()` (background threads) and `stop()` (stop every pod's processes).

    `anchors`: processes whose death ends every container of this node (see the module
    docstring); by default this process when `die_with_parent`, else none.
    `lease_duration_seconds`: the node Lease's duration; it is renewed every quarter of it.
    """

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> ProcessNode:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._take_data_dir()
        try:
            preferred = self._reserve_recorded_ips()
            self.network = PodNetwork.claim(str(self.data_dir.resolve()), preferred)
            self._register()
            self.heartbeat.start(self.node_uid)
        except BaseException:
            if self.network is not None:
                self.network.release()
            self._release_data_dir()
            raise
        self.sync_thread = threading.Thread(target=self._sync_loop, name="node-sync", daemon=True)
        for target in (self._watch_pods, self._watch_claims):
            thread = threading.Thread(target=target, name=f"node-{target.__name__}", daemon=True)
            thread.start()
            self.threads.append(thread)
        self.sync_thread.start()
        self.threads.append(self.sync_thread)
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """Stop every container gracefully (a node shutting down), leaving pod objects."""
        self.stopping.set()
        self.wake.set()
        if self.sync_thread is not None:
            self.sync_thread.join(timeout=20)  # no container may start once stopping begins
        with self.lock:
            runs = list(self.pods.values())
            orphans = list(self.orphans)
        procs = [c.proc for run in runs for c in run.containers if c.proc is not None]
        procs += [o.proc for o in orphans]
        for proc in procs:
            proc.signal_group(signal.SIGTERM)
        graces = [r.grace for r in runs] + [o.proc.record.grace_seconds for o in orphans]
        deadline = time.monotonic() + min(timeout, max(graces, default=0))
        for proc in procs:
            self._wait_or_kill(proc, deadline)
        for run in runs:  # a node going away leaves its pods not ready, as a kubelet would
            with contextlib.suppress(Exception):
                self._report_stopped(run)
        self.heartbeat.stop()
        with self.lock:
            streams = list(self.watches)
        for stream in streams:  # unblocks a watch waiting for its next event
            stream.stop()
        for thread in self.threads:
            thread.join(timeout=5)
        self.prober.close()
        self.api.close()
        if self.network is not None:
            self.network.release()
        self._release_data_dir()

    def live_processes(self, label: str) -> dict[str, int]:
        """Running processes per value of a pod label (e.g. bots by their bot label)."""
        with self.lock:
            runs = list(self.pods.values())
        counts: dict[str, int] = {}
        for run in runs:
            value = run.labels.get(label)
            if value is not None:
                counts[value] = counts.get(value, 0) + run.live_processes()
        return counts

    def _take_data_dir(self) -> None:
        lock = open(self.data_dir / LOCK_FILE, "a+")  # noqa: SIM115 (held until stop)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise NodeBusyError(f"another node agent runs on {self.data_dir}") from None
        self._lock_file = lock

    def _release_data_dir(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def _reserve_recorded_ips(self) -> Block | None:
        """Addresses live processes of a previous agent listen on stay theirs; returns the
        address block they are in, to claim it again."""
        records, problems = self.records.load()
        for problem in problems:
            log.warning("ignoring container record %s", problem)
        block: Block | None = None
        for record in records:
            if procfs.is_running(record.process):
                self.ips_in_use.add(record.pod_ip)
                block = block or block_of(record.pod_ip)
        return block

    # -- node object -------------------------------------------------------------------

    def _register(self) -> None:
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "labels": {
                    "kubernetes.io/hostname": self.name,
                    "kubernetes.io/os": "linux",
                    "node.kubernetes.io/instance-type": "localkube-process-node",
                },
            },
        }
        try:
            created = self.core.create_node(node)
        except client.ApiException as err:
            if err.status != 409:
                raise
            created = self.core.read_node(self.name)
        self.node_uid = created.metadata.uid
