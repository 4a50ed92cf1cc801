"""etcd + kube-apiserver on loopback, with an admin kubeconfig.

``LocalCluster`` is used two ways: the CLI (``python -m localkube up``) starts it detached and
records the pids in the data dir so ``down`` can stop it later; tests use it as a context
manager whose processes die with the test run.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from localkube import binaries
from localkube.pki import Pki
from localkube.processes import pid_runs, spawn, tail, terminate

STATE_FILE = "localkube.json"
DEFAULT_DATA_DIR = binaries.REPO_ROOT / ".local"
SERVICE_CIDR = "10.0.0.0/24"


class ClusterError(RuntimeError):
    """The control plane could not be started; the message carries the failing log's tail."""


@dataclass
class ClusterState:
    """What `up` leaves in the data dir for `down`, `env` and a second `up`."""

    etcd_pid: int
    etcd_port: int
    apiserver_pid: int
    apiserver_port: int
    kubeconfig: str
    etcd_binary: str
    apiserver_binary: str
    node_pid: int = 0

    @classmethod
    def load(cls, data_dir: Path) -> ClusterState | None:
        try:
            return cls(**json.loads((data_dir / STATE_FILE).read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def save(self, data_dir: Path) -> None:
        tmp = data_dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(data_dir / STATE_FILE)

    def running(self) -> bool:
        return pid_runs(self.etcd_pid, self.etcd_binary) and pid_runs(
            self.apiserver_pid, self.apiserver_binary
        )

    def node_running(self) -> bool:
        return bool(self.node_pid) and pid_runs(self.node_pid, sys.executable)


def free_port(preferred: int | None = None) -> int:
    """A free TCP port on 127.0.0.1, the preferred one if it is still free."""
    candidates = [preferred, 0] if preferred else [0]
    for candidate in candidates:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", candidate or 0))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise ClusterError("no free port on 127.0.0.1")


def write_kubeconfig(
    path: Path,
    server: str,
    ca_cert: Path,
    user: str,
    *,
    cert: Path | None = None,
    key: Path | None = None,
    token: str | None = None,
    namespace: str | None = None,
) -> Path:
    """A self-contained kubeconfig (certificates inlined) for one user."""
    credentials: dict[str, str] = {}
    if cert and key:
        credentials["client-certificate-data"] = _b64(cert.read_bytes())
        credentials["client-key-data"] = _b64(key.read_bytes())
    if token:
        credentials["token"] = token
    context: dict[str, str] = {"cluster": "localkube", "user": user}
    if namespace:
        context["namespace"] = namespace
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "localkube",
                "cluster": {
                    "server": server,
                    "certificate-authority-data": _b64(ca_cert.read_bytes()),
                },
            }
        ],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": "localkube", "context": context}],
        "current-context": "localkube",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.touch(mode=0o600)
    tmp.write_text(yaml.safe_dump(config, sort_keys=False))
    tmp.replace(path)
    return path


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class LocalCluster:
    """One etcd and one kube-apiserver serving on 127.0.0.1."""

    def __init__(self, data_dir: Path, *, die_with_parent: bool = True) -> None:
        self.data_dir = data_dir.resolve()
        self.die_with_parent = die_with_parent
        self.pki = Pki(self.data_dir / "pki")
        self.kubeconfig = self.data_dir / "kubeconfig"
        self.logs = self.data_dir / "logs"
        self.state: ClusterState | None = None

    @property
    def server(self) -> str:
        if self.state is None:
            raise ClusterError("cluster is not started")
        return f"https://127.0.0.1:{self.state.apiserver_port}"

    def start_node_process(self) -> int:
        """Run the process node detached (`python -m localkube node`); return its pid."""
        if self.state is None:
            raise ClusterError("cluster is not started")
        if self.state.node_running():
            return self.state.node_pid
        proc = spawn(
            [sys.executable, "-m", "localkube", "node", "--data-dir", str(self.data_dir)],
            self.logs / "node.log",
            die_with_parent=self.die_with_parent,
            cwd=binaries.REPO_ROOT,
        )
        self.state.node_pid = proc.pid
        self.state.save(self.data_dir)
        return proc.pid

    def state_from_disk(self) -> ClusterState | None:
        return ClusterState.load(self.data_dir)

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, timeout: float = 90.0) -> LocalCluster:
        previous = ClusterState.load(self.data_dir)
        if previous and previous.running():
            self.state = previous
            return self
        etcd = binaries.require_binary("etcd")
        apiserver = binaries.require_binary("kube-apiserver")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.pki.ensure()
        etcd_port = free_port(previous.etcd_port if previous else None)
        api_port = free_port(previous.apiserver_port if previous else None)
        etcd_proc = spawn(
            [
                str(etcd),
                f"--data-dir={self.data_dir / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
                "--listen-peer-urls=http://127.0.0.1:0",
                "--log-level=warn",
                "--quota-backend-bytes=4294967296",
            ],
            self.logs / "etcd.log",
            die_with_parent=self.die_with_parent,
        )
        self.state = ClusterState(
            etcd_pid=etcd_proc.pid,
            etcd_port=etcd_port,
            apiserver_pid=0,
            apiserver_port=api_port,
            kubeconfig=str(self.kubeconfig),
            etcd_binary=str(etcd),
            apiserver_binary=str(apiserver),
        )
        api_proc: subprocess.Popen[bytes] | None = None
        try:
            self._wait_etcd(etcd_proc, timeout)
            api_proc = spawn(
                [str(apiserver), *self._apiserver_flags(etcd_port, api_port)],
                self.logs / "kube-apiserver.log",
                die_with_parent=self.die_with_parent,
            )
            self.state.apiserver_pid = api_proc.pid
            self.state.save(self.data_dir)
            write_kubeconfig(
                self.kubeconfig,
                self.server,
                self.pki.ca_cert,
                "localkube-admin",
                cert=self.pki.admin_cert,
                key=self.pki.admin_key,
            )
            self._wait_apiserver(api_proc, timeout)
        except BaseException:
            # Whatever was started goes, even if a check misjudged it: these are our children.
            for proc in (etcd_proc, api_proc):
                if proc is not None and proc.poll() is None:
                    terminate(proc.pid, grace_seconds=10)
            self.stop()
            raise
        return self

    def stop(self) -> None:
        state = self.state or ClusterState.load(self.data_dir)
        if state is None:
            return
        # The node first: its pods' processes get their grace period while the API is up.
        if state.node_pid and pid_runs(state.node_pid, sys.executable):
            terminate(state.node_pid, grace_seconds=90)
        # The API server first, so it never sees its storage vanish mid-request.
        if state.apiserver_pid and pid_runs(state.apiserver_pid, state.apiserver_binary):
            terminate(state.apiserver_pid, grace_seconds=15)
        if pid_runs(state.etcd_pid, state.etcd_binary):
            terminate(state.etcd_pid, grace_seconds=15)
        (self.data_dir / STATE_FILE).unlink(missing_ok=True)
        self.state = None

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- helpers -----------------------------------------------------------------------

    def _apiserver_flags(self, etcd_port: int, api_port: int) -> list[str]:
        pki = self.pki
        return [
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            "--bind-address=127.0.0.1",
            # Explicit, so that a machine (or network namespace) with no default route, only
            # loopback, still has an address to advertise.
            "--advertise-address=127.0.0.1",
            f"--secure-port={api_port}",
            f"--tls-cert-file={pki.serving_cert}",
            f"--tls-private-key-file={pki.serving_key}",
            f"--client-ca-file={pki.ca_cert}",
            "--authorization-mode=RBAC",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
            f"--service-account-issuer=https://127.0.0.1:{api_port}",
            f"--service-account-key-file={pki.sa_public_key}",
            f"--service-account-signing-key-file={pki.sa_private_key}",
            # No controller-manager runs here, so nothing would create a namespace's
            # `default` ServiceAccount; every pod must name the ServiceAccount it runs as.
            "--enable-admission-plugins=NamespaceLifecycle,ServiceAccount,PodSecurity,"
            "MutatingAdmissionPolicy,ValidatingAdmissionPolicy,ValidatingAdmissionWebhook,"
            "MutatingAdmissionWebhook",
            f"--cert-dir={self.data_dir / 'apiserver-certs'}",
            "--profiling=false",
            "--endpoint-reconciler-type=none",
            "--v=1",
        ]

    def _wait_etcd(self, proc: subprocess.Popen[bytes], timeout: float) -> None:
        assert self.state is not None
        url = f"http://127.0.0.1:{self.state.etcd_port}/health"
        self._wait("etcd", proc, self.logs / "etcd.log", timeout, lambda: _http_ok(url, None))

    def _wait_apiserver(self, proc: subprocess.Popen[bytes], timeout: float) -> None:
        assert self.state is not None
        context = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        context.load_cert_chain(str(self.pki.admin_cert), str(self.pki.admin_key))
        url = f"{self.server}/readyz"
        self._wait(
            "kube-apiserver",
            proc,
            self.logs / "kube-apiserver.log",
            timeout,
            lambda: _http_ok(url, context),
        )

    @staticmethod
    def _wait(
        name: str,
        proc: subprocess.Popen[bytes],
        log: Path,
        timeout: float,
        probe: Callable[[], bool],
    ) -> None:
        """Until `probe` passes. Liveness comes from our own child handle (`poll`), which
        cannot misjudge a live process the way reading /proc by pid can (a busy machine, or a
        pid that another cluster's process just left)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = proc.poll()
            if code is not None:
                raise ClusterError(
                    f"{name} exited during start-up (exit code {code}); last lines of {log}:\n"
                    f"{tail(log)}"
                )
            if probe():
                return
            time.sleep(0.1)
        raise ClusterError(
            f"{name} not ready after {timeout:.0f}s; last lines of {log}:\n{tail(log)}"
        )


def _http_ok(url: str, context: ssl.SSLContext | None) -> bool:
    try:
        with urllib.request.urlopen(url, context=context, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False
