"""`make run`: the product on the embedded local cluster, with a live status table.

Starts (or resumes) the control plane in `.local/`, the process node, the CRDs, the operator
as a local process acting as the chart's ServiceAccount, and the four sample bots in the
`trading` namespace (restricted Pod Security). Ctrl-C stops the operator, then the bots
gracefully (each flushes its state and releases its Lease), then the control plane; the next
`make run` resumes the same bots with their positions.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

from kubernetes import client, config

from localkube import binaries, product
from localkube.cluster import ClusterError, LocalCluster, free_port
from localkube.node import ProcessNode
from tradingbot_operator.webhook import webhook_configurations

BOT_NAMESPACE = "trading"


class LocalRun:
    def __init__(self, data_dir: Path, duration: float | None) -> None:
        self.data_dir = data_dir
        self.duration = duration
        self.cluster = LocalCluster(data_dir, die_with_parent=True)
        self.node: ProcessNode | None = None
        self.operator: subprocess.Popen[bytes] | None = None
        self.stop = threading.Event()

    def say(self, message: str) -> None:
        print(f"[run] {message}", file=sys.stderr, flush=True)

    def start(self) -> None:
        binaries.ensure()
        started = time.monotonic()
        self.say(f"starting the control plane in {self.data_dir}")
        self.cluster.start(timeout=120)
        api = config.new_client_from_config(config_file=str(self.cluster.kubeconfig))
        self.say(f"API server {self.cluster.server} ready ({time.monotonic() - started:.1f}s)")
        self.node = ProcessNode(
            self.cluster.kubeconfig,
            self.data_dir / "node",
            server=self.cluster.server,
            ca_cert=self.cluster.pki.ca_cert,
            die_with_parent=True,
        ).start()
        product.install_crds(api)
        product.ensure_namespace(
            api, BOT_NAMESPACE, {"pod-security.kubernetes.io/enforce": "restricted"}
        )
        product.apply_objects(
            api,
            [
                {
                    "apiVersion": "v1",
                    "kind": "ServiceAccount",
                    "metadata": {"name": "default", "namespace": BOT_NAMESPACE},
                }
            ],
        )
        kubeconfig = product.operator_kubeconfig(
            self.cluster, api, self.data_dir / "operator.kubeconfig"
        )
        product.install_admission_policies(api)
        audit = self.start_audit_sidecar(api)
        audit_token = product.operator_audit_token(api, self.data_dir / "operator-audit.token")
        webhook_port = free_port(9443)
        cert, key, ca_bundle = product.webhook_tls(self.cluster, self.data_dir / "webhook")
        metrics_port = free_port(8000)
        log_path = self.cluster.logs / "operator.log"
        operator_env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "TRADINGBOT_OPERATOR_AUDIT_URL": audit,
            "TRADINGBOT_OPERATOR_AUDIT_TOKEN_FILE": str(audit_token),
            "TRADINGBOT_OPERATOR_WEBHOOK_LISTEN": f"127.0.0.1:{webhook_port}",
            "TRADINGBOT_OPERATOR_WEBHOOK_CERT_FILE": str(cert),
            "TRADINGBOT_OPERATOR_WEBHOOK_KEY_FILE": str(key),
            "TRADINGBOT_OPERATOR_OPERATOR_USER": product.operator_username(),
            "TRADINGBOT_OPERATOR_FLEET_SWITCH": product.fleet_switch(),
        }
        options = {
            "--metrics-port": str(metrics_port),
            "--max-concurrent-restarts": "1",
            "--bot-env": f"AUDIT_URL={self.audit_read_url}",
        }
        self.operator = _spawn(["tradingbot_operator"], options, log_path, env=operator_env)
        product.apply_objects(
            api,
            webhook_configurations(
                {"url": f"https://127.0.0.1:{webhook_port}", "caBundle": ca_bundle}
            ),
        )
        self.say(
            f"operator running as the chart's ServiceAccount (log {log_path}, "
            f"metrics http://127.0.0.1:{metrics_port}/metrics, webhook :{webhook_port})"
        )
        names = product.apply_samples(api, BOT_NAMESPACE)
        self.say(f"sample bots applied in namespace {BOT_NAMESPACE}: {', '.join(names)}")
        kubectl = binaries.find_binary("kubectl")
        self.say(
            "reach it with:\n"
            f"    export KUBECONFIG={self.cluster.kubeconfig}\n"
            f"    {kubectl} -n {BOT_NAMESPACE} get tradingbots\n"
            "  Ctrl-C stops the bots gracefully; `make run` again resumes them."
        )
        self.api = api

    def start_audit_sidecar(self, api: client.ApiClient) -> str:
        """The audit log writer, as the chart runs it: its own identity, no unauthenticated
        ingest, the operator's ServiceAccount the one that may post operator events. Returns
        its URL (the operator's, the bots' and the readers')."""
        kubeconfig = product.audit_kubeconfig(self.cluster, api, self.data_dir / "audit.kubeconfig")
        read = free_port(8901)
        log_path = self.cluster.logs / "audit.log"
        options = {
            "--kubeconfig": str(kubeconfig),
            "--head-configmap": product.audit_head_configmap(),
            "--ingest-listen": "",
            "--listen": f"127.0.0.1:{read}",
            "--operator-user": product.operator_username(),
        }
        command = ["tradingbot_audit", "--log-dir", str(self.data_dir / "audit"), "serve"]
        self.sidecar = _spawn(command, options, log_path)
        self.say(
            f"audit log in {self.data_dir / 'audit'}; read API http://127.0.0.1:{read} "
            f"(kubectl tradingbot audit --log-dir {self.data_dir / 'audit'})"
        )
        self.audit_read_url = f"http://127.0.0.1:{read}"
        return self.audit_read_url

    def watch(self) -> None:
        """The plugin's live status view (`kubectl tradingbot status --watch`): redrawn in
        place on a terminal with the latest Events, one table per change otherwise."""
        from tradingbot_plugin.kube import Kube
        from tradingbot_plugin.watch import watch_status

        kube = Kube(self.api)
        deadline = time.monotonic() + self.duration if self.duration else None

        def guard() -> None:  # ends the view when the run should end
            while not self.stop.wait(0.5):
                if deadline and time.monotonic() >= deadline:
                    break
                if self.operator and self.operator.poll() is not None:
                    self.say(f"the operator exited with {self.operator.returncode}; stopping")
                    break
            self.stop.set()

        threading.Thread(target=guard, daemon=True).start()
        watch_status(
            kube,
            BOT_NAMESPACE,
            None,
            None,
            sys.stdout,
            sys.stderr,
            self.stop,
            interactive=sys.stdout.isatty(),
            feed=lambda: kube.list_events(BOT_NAMESPACE),
        )

    def shutdown(self) -> None:
        self.say("stopping: operator, then bots (graceful), then the control plane")
        if self.operator and self.operator.poll() is None:
            self.operator.send_signal(signal.SIGTERM)
            try:
                self.operator.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.operator.kill()
        if self.node:
            self.node.stop(timeout=60)
        sidecar = getattr(self, "sidecar", None)
        if sidecar is not None and sidecar.poll() is None:
            sidecar.send_signal(signal.SIGTERM)  # finishes in-flight writes, closes the log
            try:
                sidecar.wait(timeout=30)
            except subprocess.TimeoutExpired:
                sidecar.kill()
        self.cluster.stop()
        self.say("stopped; state kept in " + str(self.data_dir))


def _spawn(
    command: list[str],
    options: dict[str, str],
    log_path: Path,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """`python -m <command> <options>` from the repository root, output appended to `log_path`."""
    arguments = [part for pair in options.items() for part in pair]
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", *command, *arguments],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=binaries.REPO_ROOT,
        )


class AlreadyRunning(Exception):
    """Another `make run` holds this data dir."""


def hold_data_dir(data_dir: Path) -> IO[str]:
    """An exclusive lock on the data dir for the life of this run (released on any exit)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    handle = open(data_dir / "run.lock", "a+")  # noqa: SIM115 - held until the process exits
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "another process"
        handle.close()
        raise AlreadyRunning(
            f"{data_dir} is in use by a running `make run` ({owner}); stop it first (Ctrl-C "
            "there), or use another --data-dir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}")
    handle.flush()
    return handle


def main(data_dir: Path, duration: float | None) -> int:
    logging.basicConfig(level=logging.WARNING)
    try:
        lock = hold_data_dir(data_dir)
    except AlreadyRunning as err:
        print(f"localkube: {err}", file=sys.stderr)
        return 1
    run = LocalRun(data_dir, duration)
    signal.signal(signal.SIGINT, lambda *_: run.stop.set())
    signal.signal(signal.SIGTERM, lambda *_: run.stop.set())
    try:
        run.start()
        run.watch()
    except (ClusterError, OSError, client.ApiException) as err:
        # One line for the user; the details are in the logs under the data dir.
        print(
            f"localkube: {str(err).splitlines()[0]} (logs in {data_dir / 'logs'})", file=sys.stderr
        )
        return 1
    finally:
        run.shutdown()
        lock.close()
    return 0
