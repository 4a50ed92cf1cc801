"""The real bot process (`python -m tradingbot`) against the real API server: the harness.

Each bot runs as a subprocess under its own ServiceAccount (TokenRequest kubeconfig), with the
Role, Lease and state ConfigMap the operator would create for it, so RBAC is the production
one. Paper mode on the seeded price feed; only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
from kubernetes import client

from tests.integration.conftest import SidecarProcess
from tradingbot.state import StateCheckpoint, decode_state

GROUP, VERSION, PLURAL = "trading.r7.dev", "v1alpha1", "tradingbots"
BOT = "alpha"
LEASE_SECONDS = 6
GRACE_SECONDS = 15

# Momentum with a hair trigger so that fills come within a few seconds.
PARAMS = {
    "lookback": 2,
    "entryThresholdPct": 0.05,
    "exitThresholdPct": 0.0,
    "priceFeed": "seeded",
    "seed": 11,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class BotProcess:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    started: float = field(default_factory=time.monotonic)

    def get(self, path: str) -> tuple[int, dict[str, Any] | str]:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.port}{path}", timeout=2
            ) as response:
                body = response.read().decode()
                status = response.status
        except urllib.error.HTTPError as exc:
            body, status = exc.read().decode(), exc.code
        except OSError:
            return 0, ""
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body

    @property
    def ready(self) -> bool:
        return self.get("/readyz")[0] == 200

    def logs(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.logs().splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue
        return lines

    def wait_exit(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)


@dataclass
class BotEnv:
    namespace: str
    kubeconfig: Path
    core: client.CoreV1Api
    custom: client.CustomObjectsApi
    coordination: client.CoordinationV1Api
    tmp: Path
    processes: list[BotProcess] = field(default_factory=list)

    def start(self, pod: str, **env: str) -> BotProcess:
        port = free_port()
        log_path = self.tmp / f"{pod}.log"
        environment = {
            **{k: v for k, v in os.environ.items() if k not in ("KUBECONFIG",)},
            "BOT_NAME": BOT,
            "POD_NAMESPACE": self.namespace,
            "POD_NAME": pod,
            "POD_UID": f"uid-{pod}",
            "POD_IP": "127.0.0.1",
            "METRICS_PORT": str(port),
            "KUBECONFIG": str(self.kubeconfig),
            "TICK_SECONDS": "0.05",
            "CHECKPOINT_INTERVAL_SECONDS": "1",
            "LEASE_DURATION_SECONDS": str(LEASE_SECONDS),
            "GRACE_PERIOD_SECONDS": str(GRACE_SECONDS),
            "LOG_LEVEL": "INFO",
            **env,
        }
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tradingbot"],
                env=environment,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        bot = BotProcess(pod, proc, port, log_path)
        self.processes.append(bot)
        return bot

    def state(self) -> StateCheckpoint | None:
        cm = self.core.read_namespaced_config_map(f"{BOT}-state", self.namespace)
        text = (cm.data or {}).get("state.json")
        return decode_state(text) if text else None

    def lease_holder(self) -> str | None:
        lease = self.coordination.read_namespaced_lease(f"{BOT}-trader", self.namespace)
        return lease.spec.holder_identity if lease.spec else None

    def events(self, reason: str) -> list[Any]:
        items = self.core.list_namespaced_event(self.namespace).items
        return [e for e in items if e.reason == reason]

    def status(self) -> dict[str, Any]:
        obj = cast(
            dict[str, Any],
            self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, BOT),
        )
        return dict(obj.get("status") or {})


def tradingbot_manifest(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TradingBot",
        "metadata": {"name": BOT, "namespace": namespace},
        "spec": {
            "profile": "volatile",
            "exchange": {"id": "binance", "mode": "paper"},
            "symbols": ["BTC/USDT", "ETH/USDT"],
            "strategy": {"params": PARAMS},
        },
    }


@pytest.fixture
def bot_env(
    apply_crds: list[str],
    namespace: str,
    api_client: client.ApiClient,
    custom_api: client.CustomObjectsApi,
    core_api: client.CoreV1Api,
    apply_yaml: Callable[..., list[Any]],
    sa_kubeconfig: Callable[[str, str], Path],
    tmp_path: Path,
) -> Iterator[BotEnv]:
    from tradingbot_operator.render import BotRef, render_bot_objects, service_account_name

    created = cast(
        dict[str, Any],
        custom_api.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, tradingbot_manifest(namespace)
        ),
    )
    ref = BotRef(namespace=namespace, name=BOT, uid=created["metadata"]["uid"])
    # What the operator creates before the pod: ServiceAccount, least-privilege Role and its
    # binding, the unheld Lease and the empty state ConfigMap.
    apply_yaml(render_bot_objects(ref, created["spec"]), namespace)
    env = BotEnv(
        namespace=namespace,
        kubeconfig=sa_kubeconfig(namespace, service_account_name(BOT)),
        core=core_api,
        custom=custom_api,
        coordination=client.CoordinationV1Api(api_client),
        tmp=tmp_path,
    )
    yield env
    for bot in env.processes:
        if bot.proc.poll() is None:
            bot.proc.kill()
            bot.proc.wait(timeout=10)


@pytest.fixture
def audit_sidecars(
    start_sidecar: Callable[..., SidecarProcess], tmp_path: Path
) -> Callable[[], SidecarProcess]:
    """Starts the audit sidecar as a process, every one on the same log directory, under a
    ServiceAccount bound to `system:auth-delegator` only (as the chart does)."""
    return lambda: start_sidecar(tmp_path / "audit")
