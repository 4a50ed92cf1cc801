"""Leader takeover: two replicas of one shard, the leader SIGKILLed (or stopped).

100 bots stored, a stand-in kubelet marks pods Ready (no bot processes run), both replicas
run with the chart's identity and leader election. Each round SIGKILLs the leader and at once
edits one bot; measured from the kill to (a) the standby holding the Lease and (b) that edit
done (the bot Running with the new config), which is what a user waits for. A killed leader
keeps the Lease until it expires (10 s unchanged, as the standby sees it), so (a) is bounded
by the Lease duration plus one retry. A stopped leader (SIGTERM) releases the Lease: measured
the same way. A fresh replica is started as the next standby after each round.
"""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path
from typing import Any

from kubernetes import client, config

from benchmarks.killswitch_bench import _wait
from benchmarks.report import summarize
from benchmarks.scale_bench import store_bots
from localkube import binaries, product
from localkube.cluster import LocalCluster
from tests.integration.invalid_specs import VALID_BASE_SPEC
from tests.integration.operator.harness import Bots, Kubelet, OperatorProcess
from tradingbot_operator.leadership import LEASE_DURATION_SECONDS
from tradingbot_operator.sharding import Shard

NAMESPACE = "takeover"
BOTS = 100
ROUNDS = 5


def _holder(coord: client.CoordinationV1Api) -> str:
    try:
        lease = coord.read_namespaced_lease(Shard().lease_name, NAMESPACE)
    except client.ApiException:
        return ""
    return str(lease.spec.holder_identity or "")


def run() -> str:
    binaries.ensure()
    killed_lease: list[float] = []
    killed_edit: list[float] = []
    stopped_lease: list[float] = []
    stopped_edit: list[float] = []
    with tempfile.TemporaryDirectory() as tmp, LocalCluster(Path(tmp) / "kube") as cluster:
        api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
        custom = client.CustomObjectsApi(api)
        coord = client.CoordinationV1Api(api)
        product.install_crds(api)
        spec: dict[str, Any] = copy.deepcopy(VALID_BASE_SPEC)
        spec["restartPolicy"].update(coalesceSeconds=0, maxRestartsPerHour=100)
        store_bots(api, custom, NAMESPACE, BOTS, spec)
        kubelet = Kubelet(api, NAMESPACE, delay=0.0, poll=0.2)
        kubelet.start()
        kubeconfig = product.operator_kubeconfig(cluster, api, Path(tmp) / "op.kubeconfig")
        bots = Bots(api, NAMESPACE)
        replicas: list[OperatorProcess] = []

        def replica() -> OperatorProcess:
            proc = OperatorProcess(
                kubeconfig, NAMESPACE, Path(tmp) / f"op-{len(replicas)}.log"
            ).start(
                POD_NAME=f"op-{len(replicas)}",
                TRADINGBOT_OPERATOR_LEADER_ELECTION="true",
                TRADINGBOT_OPERATOR_LEADER_NAMESPACE=NAMESPACE,
            )
            replicas.append(proc)
            return proc

        def leader() -> OperatorProcess:
            who = _wait(lambda: _holder(coord), 60, "a leader")
            return next(p for p in replicas if who.startswith(f"{p.pod_name}_"))

        try:
            replica()
            replica()
            for i in range(BOTS):
                bots.wait_running_with(f"bot-{i:04d}", timeout=300)
            for round_ in range(2 * ROUNDS):
                current = leader()
                name = f"bot-{round_ % BOTS:04d}"
                before = bots.status(name)["configHash"]
                gone = time.monotonic()
                if round_ % 2 == 0:
                    current.kill()
                else:
                    current.stop()
                bots.patch(name, {"spec": {"risk": {"maxOpenPositions": 3 + round_ % 2}}})
                _wait(
                    lambda c=current: (h := _holder(coord)) and not h.startswith(f"{c.pod_name}_"),
                    60,
                    "the standby to lead",
                )
                lease = time.monotonic() - gone

                def edited(n: str = name, b: str = before) -> bool:
                    status = bots.status(n)
                    return (
                        status.get("phase") == "Running"
                        and status.get("configHash") not in (None, b)
                        and status.get("configHash") == status.get("desiredConfigHash")
                    )

                _wait(edited, 120, "the edit done by the new leader")
                done = time.monotonic() - gone
                (killed_lease if round_ % 2 == 0 else stopped_lease).append(lease)
                (killed_edit if round_ % 2 == 0 else stopped_edit).append(done)
                replica()
        finally:
            for proc in replicas:
                proc.stop()
            kubelet.stop()
    rows = [
        ("leader SIGKILLed: the standby holds the Lease", killed_lease),
        ("leader SIGKILLed: an edit sent at the kill is done", killed_edit),
        ("leader stopped (SIGTERM, Lease released): the standby holds it", stopped_lease),
        ("leader stopped: an edit sent at the stop is done", stopped_edit),
    ]
    lines = [
        f"Two replicas of one shard, {BOTS} bots, Lease duration {LEASE_DURATION_SECONDS} s; "
        f"{ROUNDS} rounds of each kind (goal: takeover after the leader's death <= 15 s).",
        "",
        "| measure | median | p95 | max |",
        "|---|---|---|---|",
    ]
    for label, values in rows:
        s = summarize(values)
        lines.append(f"| {label} | {s['median']:.1f} s | {s['p95']:.1f} s | {s['max']:.1f} s |")
    return "\n".join(lines)
