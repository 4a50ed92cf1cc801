"""Scale: N TradingBots on one operator — cold-start reconcile time and operator memory.

The operator (chart identity) starts with N bots already stored and no pods; a stand-in
kubelet marks each created pod Ready (bot processes are not run: this measures the
operator and the API server, not N trading processes). Reported: time until every bot is
`Running`, the operator's peak RSS, the operator's own API requests (counted by the API
server for its ServiceAccount alone, `apiserver_requests.py`) during the cold start and per
bot per minute at steady state, and restart latency under churn (a batch of edits across the
fleet while it runs).
"""

from __future__ import annotations

import copy
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from kubernetes import client, config

from benchmarks.apiserver_requests import RequestCounter
from benchmarks.report import summarize
from benchmarks.scale_floor import floor_seconds
from localkube import binaries, product
from localkube.cluster import LocalCluster
from tests.integration.invalid_specs import VALID_BASE_SPEC
from tests.integration.operator.harness import Kubelet, OperatorProcess

NAME = "scale"
TITLE = "Scale: 1,000 TradingBots on one operator"
BOTS = 1000
NAMESPACE = "scale"
FLOOR_NAMESPACE = "scale-floor"
CHURN = 50
# After the cold start: a pause for stragglers (a last status write), then the window in
# which nothing changes and the operator's requests are counted.
SETTLE_SECONDS = 15.0
STEADY_SECONDS = 120.0


def chart_env(pod_name: str) -> dict[str, str]:
    """The operator's settings as the chart runs it: leader election on, the fleet switch
    watched."""
    return {
        "POD_NAME": pod_name,
        "TRADINGBOT_OPERATOR_LEADER_ELECTION": "true",
        "TRADINGBOT_OPERATOR_LEADER_NAMESPACE": product.OPERATOR_NAMESPACE,
        "TRADINGBOT_OPERATOR_FLEET_SWITCH": product.fleet_switch(),
    }


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def bot_phases(custom: client.CustomObjectsApi) -> dict[str, str]:
    items = custom.list_namespaced_custom_object(
        "trading.r7.dev", "v1alpha1", NAMESPACE, "tradingbots"
    )["items"]
    return {b["metadata"]["name"]: (b.get("status") or {}).get("phase", "") for b in items}


def store_bots(
    api: client.ApiClient,
    custom: client.CustomObjectsApi,
    namespace: str,
    bots: int,
    spec: dict[str, Any],
) -> None:
    product.ensure_namespace(api, namespace)
    product.apply_objects(
        api,
        [
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": "default", "namespace": namespace},
            }
        ],
    )
    for i in range(bots):
        custom.create_namespaced_custom_object(
            "trading.r7.dev",
            "v1alpha1",
            namespace,
            "tradingbots",
            {
                "apiVersion": "trading.r7.dev/v1alpha1",
                "kind": "TradingBot",
                "metadata": {"name": f"bot-{i:04d}"},
                "spec": spec,
            },
        )


def run(bots: int = BOTS) -> str:
    binaries.ensure()
    with tempfile.TemporaryDirectory() as tmp, LocalCluster(Path(tmp) / "kube") as cluster:
        api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
        custom = client.CustomObjectsApi(api)
        product.install_crds(api)
        spec: dict[str, Any] = copy.deepcopy(VALID_BASE_SPEC)
        spec["restartPolicy"].update(coalesceSeconds=1, maxRestartsPerHour=100)
        # The floor first, in a namespace of its own, the operator's run after it.
        store_bots(api, custom, FLOOR_NAMESPACE, bots, spec)
        floor_kubelet = Kubelet(api, FLOOR_NAMESPACE, delay=0.0, poll=0.5)
        floor_kubelet.start()
        try:
            floor = floor_seconds(cluster.kubeconfig, FLOOR_NAMESPACE, bots)
        finally:
            floor_kubelet.stop()
        created = time.perf_counter()
        store_bots(api, custom, NAMESPACE, bots, spec)
        create_seconds = time.perf_counter() - created
        kubelet = Kubelet(api, NAMESPACE, delay=0.0, poll=0.5)
        kubelet.start()
        kubeconfig = product.operator_kubeconfig(cluster, api, Path(tmp) / "op.kubeconfig")
        requests = RequestCounter(api, product.OPERATOR_NAMESPACE, product.chart_account())
        requests.install()
        operator = OperatorProcess(
            kubeconfig, NAMESPACE, Path(tmp) / "operator.log", extra_env=chart_env("scale-0")
        )
        peak = [0.0]
        stop = threading.Event()
        try:
            time.sleep(2)  # the FlowSchema is in effect once the API server's config syncs
            at_start = requests.count()
            started = time.perf_counter()
            operator.start()
            assert operator.proc is not None
            pid = operator.proc.pid

            def sample() -> None:
                while not stop.wait(0.5):
                    peak[0] = max(peak[0], rss_mib(pid))

            threading.Thread(target=sample, daemon=True).start()
            deadline = started + 1800
            while time.perf_counter() < deadline:
                seen = bot_phases(custom)
                if sum(p == "Running" for p in seen.values()) == bots:
                    break
                time.sleep(1)
            cold = time.perf_counter() - started
            cold_requests = requests.count() - at_start
            running = sum(p == "Running" for p in bot_phases(custom).values())
            steady_rss = rss_mib(pid)
            time.sleep(SETTLE_SECONDS)
            before, window = requests.count(), time.perf_counter()
            time.sleep(STEADY_SECONDS)
            steady_requests = requests.count() - before
            steady_minutes = (time.perf_counter() - window) / 60
            # Churn: edit CHURN bots at once and time each restart to completion.
            edited = time.time()
            for i in range(0, bots, max(bots // CHURN, 1)):
                custom.patch_namespaced_custom_object(
                    "trading.r7.dev",
                    "v1alpha1",
                    NAMESPACE,
                    "tradingbots",
                    f"bot-{i:04d}",
                    {"spec": {"risk": {"maxOpenPositions": 3}}},
                )
            targets = {f"bot-{i:04d}" for i in range(0, bots, max(bots // CHURN, 1))}
            durations: list[float] = []
            deadline = time.perf_counter() + 600
            while time.perf_counter() < deadline and len(durations) < len(targets):
                durations = []
                for item in custom.list_namespaced_custom_object(
                    "trading.r7.dev", "v1alpha1", NAMESPACE, "tradingbots"
                )["items"]:
                    if item["metadata"]["name"] in targets:
                        last = ((item.get("status") or {}).get("restarts") or {}).get("last")
                        if last and last.get("result") == "succeeded":
                            durations.append(float(last["durationSeconds"]))
                time.sleep(1)
            churn_wall = time.time() - edited
        finally:
            stop.set()
            operator.stop()
            kubelet.stop()
    churn = summarize(durations) if durations else None
    lines = [
        f"{bots} TradingBots created before the operator starts ({create_seconds:.0f} s to "
        "create); the operator runs with the chart's identity and settings (leader election, "
        "the fleet switch); a stand-in kubelet marks pods Ready within 0.5 s (no bot "
        "processes run). "
        "The floor (`benchmarks.scale_floor`) ran first on the same API server, with its own "
        f"{bots} bots in another namespace (left in place). The operator's requests are "
        "counted by the API server for its ServiceAccount alone (a FlowSchema of ours, "
        "`benchmarks/apiserver_requests.py`).",
        "",
        "| measurement | result |",
        "|---|---|",
        f"| floor: a plain async script makes the same objects, until all pods Ready | "
        f"{floor:.0f} s |",
        f"| cold start: operator start until all {bots} bots Running | {cold:.0f} s "
        f"({running} Running) |",
        f"| cold start / floor | {cold / floor:.1f} |",
        f"| operator RSS after cold start / peak | {steady_rss:.0f} MiB / {peak[0]:.0f} MiB |",
        f"| operator's API requests during the cold start, per bot | "
        f"{cold_requests / bots:.1f} ({cold_requests:.0f} in all) |",
        f"| operator's API requests at steady state ({STEADY_SECONDS:.0f} s, nothing "
        f"changing), per bot per minute | {steady_requests / bots / steady_minutes:.3f} "
        f"({steady_requests:.0f} in {steady_minutes:.1f} min) |",
    ]
    if churn:
        lines.append(
            f"| restart under churn ({len(durations)} bots edited at once): duration p50 / "
            f"p95 / max | {churn['median']:.2f} s / {churn['p95']:.2f} s / "
            f"{churn['max']:.2f} s (all done in {churn_wall:.0f} s) |"
        )
    return "\n".join(lines)
