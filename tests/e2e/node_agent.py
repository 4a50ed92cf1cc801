"""A process node agent in a process of its own (so a test can SIGKILL it), a /proc census
of a container's processes, and a pod whose processes the census can recognise."""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from kubernetes import client

from localkube import procfs
from localkube.binaries import REPO_ROOT
from localkube.heartbeat import NODE_LEASE_NAMESPACE
from localkube.processes import spawn, tail
from localkube.procfs import ProcessIdentity
from tests import kube

CENSUS_VAR = "LOCALKUBE_CENSUS"

# Serves /readyz on POD_IP:8080; exits 0 on SIGTERM unless told to ignore it.
SERVER = textwrap.dedent("""
    import http.server, os, signal
    def on_term(*_):
        os._exit(0)
    signal.signal(signal.SIGTERM, signal.SIG_IGN if os.environ.get("IGNORE_TERM") else on_term)
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
        def log_message(self, *a): pass
    http.server.HTTPServer((os.environ["POD_IP"], 8080), H).serve_forever()
""")


def census_pod(
    name: str, marker: str, *, grace: int = 3, probe: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A pod whose container process carries `marker` in its environment."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"census": marker}},
        "spec": {
            "serviceAccountName": "default",
            "terminationGracePeriodSeconds": grace,
            "containers": [
                {
                    "name": "main",
                    "image": "python",
                    "command": ["python", "-c", SERVER],
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "readinessProbe": probe
                    or {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 1},
                    "env": [
                        {
                            "name": "POD_IP",
                            "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}},
                        },
                        {"name": CENSUS_VAR, "value": marker},
                    ],
                }
            ],
        },
    }


def new_marker() -> str:
    return uuid.uuid4().hex


class ProcessCensus(threading.Thread):
    """Every 20 ms, the live processes whose environment carries the marker: the most alive
    at once, and every distinct process ever seen (pid + start time)."""

    def __init__(self, marker: str, interval: float = 0.02) -> None:
        super().__init__(daemon=True, name="census")
        self.needle = f"{CENSUS_VAR}={marker}\0".encode()
        self.interval = interval
        self.max_alive = 0
        self.seen: set[ProcessIdentity] = set()
        self._done = threading.Event()
        self._lock = threading.Lock()

    def count(self) -> list[ProcessIdentity]:
        found = []
        for pid in procfs.pids():
            try:
                with open(f"/proc/{pid}/environ", "rb") as environ:
                    if self.needle not in environ.read():
                        continue
            except OSError:
                continue
            identity = procfs.identify(pid)
            if identity is not None and procfs.is_running(identity):
                found.append(identity)
        return found

    def run(self) -> None:
        while not self._done.wait(self.interval):
            alive = self.count()
            with self._lock:
                self.max_alive = max(self.max_alive, len(alive))
                self.seen.update(alive)

    def stop(self) -> None:
        self._done.set()
        self.join(timeout=5)

    def __enter__(self) -> ProcessCensus:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class NodeAgent:
    """`python -m localkube node` for one namespace, on a data dir that outlives it."""

    def __init__(
        self,
        cluster_dir: Path,
        name: str,
        node_dir: Path,
        namespace: str,
        *,
        lease_seconds: int = 4,
    ) -> None:
        self.cluster_dir, self.name, self.node_dir = cluster_dir, name, node_dir
        self.namespace, self.lease_seconds = namespace, lease_seconds
        self.log = node_dir.parent / f"{name}.agent.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = dt.datetime.now(dt.UTC)

    def start(self, coord: client.CoordinationV1Api) -> NodeAgent:
        self.started_at = dt.datetime.now(dt.UTC)
        self.proc = spawn(
            [
                sys.executable,
                "-m",
                "localkube",
                "node",
                "--data-dir",
                str(self.cluster_dir),
                "--name",
                self.name,
                "--node-dir",
                str(self.node_dir),
                "--namespace",
                self.namespace,
                "--lease-duration",
                str(self.lease_seconds),
            ],
            self.log,
            die_with_parent=True,
            cwd=REPO_ROOT,
        )

        def renewed() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"node agent exited:\n{tail(self.log)}")
            lease = read_lease(coord, self.name)
            return bool(lease and lease.spec.renew_time >= self.started_at)

        kube.wait_for(renewed, timeout=30, message=f"node {self.name} to renew its lease")
        return self

    def kill(self) -> None:
        """SIGKILL, as a node agent lost to the OOM killer."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def logs(self) -> str:
        return tail(self.log, 60)


def read_lease(coord: client.CoordinationV1Api, name: str) -> Any:
    try:
        return coord.read_namespaced_lease(name, NODE_LEASE_NAMESPACE)
    except client.ApiException as err:
        if err.status == 404:
            return None
        raise


def container_pid(pod: client.V1Pod) -> int | None:
    statuses = (pod.status.container_statuses or []) if pod.status else []
    if not statuses or not (statuses[0].container_id or "").startswith("process://"):
        return None
    return int(statuses[0].container_id.removeprefix("process://"))


def wait_gone(identity: ProcessIdentity, timeout: float, what: str) -> float:
    """Seconds until the process is gone; fails after timeout."""
    started = time.monotonic()
    kube.wait_for(lambda: not procfs.is_running(identity), timeout=timeout, message=what)
    return time.monotonic() - started
