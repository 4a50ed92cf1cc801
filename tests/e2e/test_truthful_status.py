"""What a newcomer sees is true: two embedded clusters on one machine do not disturb each
other, and a bot whose container keeps crashing says so."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from localkube import product
from localkube.cluster import LocalCluster
from localkube.node import ProcessNode
from tests import kube
from tests.e2e.harness import E2E, FAST_BOT, read_state
from tests.integration.invalid_specs import spec_with
from tests.integration.operator.harness import Bots, OperatorProcess

SPEC = spec_with({"profile": "meme", "symbols": ["DOGE/USDT"], "restartPolicy.coalesceSeconds": 0})


class Instance:
    """One whole embedded cluster: control plane, process node, operator, one bot."""

    def __init__(self, root: Path) -> None:
        self.cluster = LocalCluster(root / "kube", die_with_parent=True).start()
        self.api = config.new_client_from_config(config_file=str(self.cluster.kubeconfig))
        self.core = client.CoreV1Api(self.api)
        self.node = ProcessNode(
            self.cluster.kubeconfig,
            root / "node",
            server=self.cluster.server,
            ca_cert=self.cluster.pki.ca_cert,
        ).start()
        product.install_crds(self.api)
        product.ensure_namespace(self.api, "trading")
        product.install_admission_policies(self.api)
        kubeconfig = product.operator_kubeconfig(self.cluster, self.api, root / "op.kubeconfig")
        bot_env = [a for pair in FAST_BOT for a in ("--bot-env", pair)]
        self.operator = OperatorProcess(
            kubeconfig, "trading", root / "operator.log", args=tuple(bot_env)
        ).start()
        self.bots = Bots(self.api, "trading")

    def trades(self) -> int:
        state = read_state(self.core, "trading", "bot")
        return int(state["stats"]["totalTrades"]) if state else 0

    def pod(self) -> client.V1Pod:
        (pod,) = self.core.list_namespaced_pod("trading").items
        return pod

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.operator.stop()
        with contextlib.suppress(Exception):
            self.node.stop(timeout=30)
        self.cluster.stop()


@pytest.fixture
def two_instances(tmp_path: Path) -> Iterator[tuple[Instance, Instance]]:
    started: list[Instance] = []
    try:
        started.append(Instance(tmp_path / "one"))
        started.append(Instance(tmp_path / "two"))
        yield started[0], started[1]
    finally:
        for instance in started:
            instance.close()


def readyz(ip: str) -> dict:
    try:
        with urllib.request.urlopen(f"http://{ip}:8080/readyz", timeout=2) as response:
            return dict(json.loads(response.read()))
    except urllib.error.HTTPError as err:
        return dict(json.loads(err.read()))


def test_two_embedded_clusters_on_one_machine_run_their_bots_apart(
    two_instances: tuple[Instance, Instance],
) -> None:
    for instance in two_instances:
        instance.bots.create("bot", SPEC)
    for instance in two_instances:
        instance.bots.wait_running_with("bot", timeout=120)
    pods = [instance.pod() for instance in two_instances]
    assert pods[0].status.pod_ip != pods[1].status.pod_ip
    trades_before = [instance.trades() for instance in two_instances]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for instance, pod in zip(two_instances, pods, strict=True):
            answer = readyz(pod.status.pod_ip)
            assert answer.get("pod") == pod.metadata.uid, answer  # its own process answered
            live = instance.pod()
            restarts = sum(c.restart_count for c in live.status.container_statuses or [])
            assert restarts == 0, live.status.container_statuses
            ready = {c.type: c.status for c in live.status.conditions or []}
            assert ready.get("Ready") == "True"
        time.sleep(2)
    trades_after = [instance.trades() for instance in two_instances]
    assert all(a > b for a, b in zip(trades_after, trades_before, strict=True)), (
        trades_before,
        trades_after,
    )


def test_a_bot_that_keeps_crashing_reads_crash_loop_within_three_crashes(e2e: E2E) -> None:
    e2e.start_operator()
    e2e.bots.create("bot-a", spec_with({"restartPolicy.coalesceSeconds": 0}))
    e2e.bots.wait_running_with("bot-a", timeout=90)
    for crash in range(3):
        proc = kube.wait_for(lambda: e2e.bot_process("bot-a"), timeout=60, message="the bot")
        os.kill(proc.pid, signal.SIGKILL)
        kube.wait_for(
            lambda n=crash: (
                (e2e.bots.status("bot-a").get("container") or {}).get("restarts", 0) > n
            ),
            timeout=60,
            message=f"crash {crash + 1} reported",
        )
    degraded = kube.wait_for(
        lambda: next(
            (
                c
                for c in e2e.bots.status("bot-a").get("conditions") or []
                if c["type"] == "Degraded" and c["reason"] == "CrashLoop"
            ),
            None,
        ),
        timeout=30,
        message="Degraded/CrashLoop",
    )
    assert degraded["status"] == "True" and "restarted 3 times" in degraded["message"]
    container = e2e.bots.status("bot-a")["container"]
    assert container["restarts"] == 3 and container["lastExitCode"] in (137, -9, 9)
    assert "CrashLoop" in e2e.bots.reasons("bot-a")
