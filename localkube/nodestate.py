"""What every part of the process node shares: its API clients, the pods it runs, the
orphans it ends, the addresses in use, the lock over them, and forgetting a pod.

The node (localkube.node.ProcessNode) is one object whose methods are grouped by job:
admitting pods (localkube.admission), the sync loop (localkube.syncloop), pods' environment
and volumes (localkube.podenv), termination (localkube.termination) and status
(localkube.podstatus). This base builds the state they share.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch

from localkube import procfs
from localkube.heartbeat import NODE_LEASE_DURATION_SECONDS, NODE_STATUS_SECONDS, Heartbeat
from localkube.podnet import PodNetwork
from localkube.pods import Orphan, PodRun
from localkube.probes import Prober
from localkube.procfs import ProcessIdentity
from localkube.records import RecordStore
from localkube.volumes import remove_secret_volumes

NODE_NAME = "localkube-node"
RECORDS_DIR = "containers"


class NodeState:
    """The node's state, built from the arguments of `localkube.node.ProcessNode`."""

    def __init__(
        self,
        kubeconfig: Path,
        data_dir: Path,
        *,
        server: str,
        ca_cert: Path,
        name: str = NODE_NAME,
        die_with_parent: bool = True,
        python_bin: Path | None = None,
        namespaces: set[str] | None = None,
        anchors: Sequence[ProcessIdentity] | None = None,
        lease_duration_seconds: int = NODE_LEASE_DURATION_SECONDS,
        status_seconds: float = NODE_STATUS_SECONDS,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.data_dir = data_dir
        self.server = server
        self.ca_cert = ca_cert
        self.name = name
        self.die_with_parent = die_with_parent
        self.python_bin = python_bin or Path(sys.executable).parent
        if anchors is None:
            me = procfs.identify(os.getpid())
            anchors = [me] if die_with_parent and me is not None else []
        self.anchors = list(anchors)
        self.api = config.new_client_from_config(config_file=str(kubeconfig))
        self.core = client.CoreV1Api(self.api)
        self.coord = client.CoordinationV1Api(self.api)
        self.heartbeat = Heartbeat(
            self.core,
            self.coord,
            name,
            lease_duration_seconds=lease_duration_seconds,
            status_seconds=status_seconds,
        )
        self.records = RecordStore(data_dir / RECORDS_DIR)
        self.wake = threading.Event()
        self.prober = Prober(on_done=self.wake.set)
        self.pods: dict[str, PodRun] = {}
        self.orphans: list[Orphan] = []
        self.lock = threading.RLock()
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.sync_thread: threading.Thread | None = None
        self.watches: list[watch.Watch] = []
        self.ips_in_use: set[str] = set()
        self.network: PodNetwork | None = None
        self.node_uid: str | None = None
        self.recovered = threading.Event()
        self._lock_file: Any = None
        # None: every namespace. Tests share one API server with tests that play the
        # kubelet themselves, so they hand the node only their own namespaces.
        self.namespaces = namespaces

    def _forget(self, run: PodRun) -> None:
        with self.lock:
            if self.pods.get(run.key) is run:
                del self.pods[run.key]
            self.ips_in_use.discard(run.ip)
            # Under the lock: a mount in progress either finishes first or sees the pod gone.
            remove_secret_volumes(run.root / "volumes", run.spec)
            self.records.remove_pod(run.uid)
        shutil.rmtree(run.root / "secrets", ignore_errors=True)
