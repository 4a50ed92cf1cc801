"""Scale against fleet size: the cold start, its floor and the operator's memory for N bots.

For each N (100, 300, 1,000, 3,000, 10,000; `TRADINGBOT_BENCH_SWEEP=100,300` for fewer) a
fresh local control plane stores N TradingBots twice, in two namespaces. The floor
(`benchmarks.scale_floor`) makes the objects of the first N; then the operator starts, with
the chart's identity and settings, for the second N, and is timed until every bot is
`Running`. A stand-in kubelet driven by a watch marks pods Ready (no bot processes run).
Reported per N: floor, cold start and their ratio, RSS after the cold start and its peak, the
operator's requests per bot (a FlowSchema counts its ServiceAccount alone), and, for one
size, the operator's requests by verb and resource (the API server's counter over the cold
start, less what the benchmark and the stand-in kubelet sent). A PNG plots both curves.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, config

from benchmarks.apiserver_requests import RequestCounter, metrics_text, served_by_kind
from benchmarks.report import DOC, write_section
from benchmarks.scale_bench import chart_env, rss_mib, store_bots
from benchmarks.scale_floor import floor_seconds, poll_seconds
from localkube import binaries, product
from localkube.cluster import LocalCluster
from tests.integration.invalid_specs import VALID_BASE_SPEC
from tests.integration.operator.harness import OperatorProcess, WatchKubelet
from tradingbot_api.constants import API_GROUP, PLURAL, VERSION

NAME = "scale-sweep"
TITLE = "Scale against fleet size: cold start, floor and RSS"
SIZES = (100, 300, 1000, 3000, 10000)
NAMESPACE = "sweep"
FLOOR_NAMESPACE = "sweep-floor"
PLOT = DOC.parent / "scale.png"
# The size whose requests are broken down by verb and resource.
BREAKDOWN_SIZE = 1000
COLD_START_LIMIT_SECONDS = 1500
# Goals of the scale issue, drawn on the plot.
GOAL_COLD_SECONDS = {1000: 20.0}
GOAL_RSS_MIB = {1000: 250.0, 10000: 1024.0}


@dataclass
class Point:
    bots: int
    floor: float
    cold: float
    running: int
    rss: float
    peak: float
    requests: float
    # CPU seconds spent over the floor and over the cold start, by process.
    floor_cpu: dict[str, float] = field(default_factory=dict)
    cold_cpu: dict[str, float] = field(default_factory=dict)
    by_kind: Counter[tuple[str, str]] = field(default_factory=Counter)


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a live process has used (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu(pids: dict[str, int]) -> dict[str, float]:
    return {name: cpu_seconds(pid) for name, pid in pids.items()}


def _spent(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {name: after[name] - before.get(name, 0.0) for name in after}


def sizes() -> tuple[int, ...]:
    chosen = os.environ.get("TRADINGBOT_BENCH_SWEEP", "")
    return tuple(int(n) for n in chosen.split(",") if n.strip()) or SIZES


def _running(api: client.ApiClient, namespace: str) -> int:
    """Bots Running, from one LIST read as raw JSON (the benchmark's parsing stays cheap)."""
    response = client.CustomObjectsApi(api).list_namespaced_custom_object(
        API_GROUP, VERSION, namespace, PLURAL, _preload_content=False
    )
    items = json.loads(response.data)["items"]
    return sum((b.get("status") or {}).get("phase") == "Running" for b in items)


def measure(bots: int) -> Point:
    """One size on a control plane of its own."""
    with tempfile.TemporaryDirectory() as tmp, LocalCluster(Path(tmp) / "kube") as cluster:
        api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
        custom = client.CustomObjectsApi(api)
        product.install_crds(api)
        spec: dict[str, Any] = copy.deepcopy(VALID_BASE_SPEC)
        spec["restartPolicy"].update(coalesceSeconds=1, maxRestartsPerHour=100)
        store_bots(api, custom, FLOOR_NAMESPACE, bots, spec)
        assert cluster.state is not None
        plane = {"kube-apiserver": cluster.state.apiserver_pid, "etcd": cluster.state.etcd_pid}
        floor_kubelet = WatchKubelet(api, FLOOR_NAMESPACE)
        floor_kubelet.start()
        try:
            before = _cpu(plane)
            floor = floor_seconds(cluster.kubeconfig, FLOOR_NAMESPACE, bots)
            floor_cpu = _spent(_cpu(plane), before)
        finally:
            floor_kubelet.stop()
            floor_kubelet.join(timeout=30)
        store_bots(api, custom, NAMESPACE, bots, spec)
        kubeconfig = product.operator_kubeconfig(cluster, api, Path(tmp) / "op.kubeconfig")
        requests = RequestCounter(api, product.OPERATOR_NAMESPACE, product.chart_account())
        requests.install()
        operator = OperatorProcess(
            kubeconfig, NAMESPACE, Path(tmp) / "operator.log", extra_env=chart_env("sweep-0")
        )
        kubelet = WatchKubelet(api, NAMESPACE)
        kubelet.start()
        peak = [0.0]
        stop = threading.Event()
        lists = 0
        try:
            time.sleep(2)  # the FlowSchema is in effect once the API server's config syncs
            at_start, served_before = requests.count(), served_by_kind(metrics_text(api))
            cpu_before = _cpu(plane)
            started = time.perf_counter()
            operator.start()
            assert operator.proc is not None
            pid = operator.proc.pid
            plane["operator"] = pid

            def sample() -> None:
                while not stop.wait(0.5):
                    peak[0] = max(peak[0], rss_mib(pid))

            threading.Thread(target=sample, daemon=True).start()
            running = 0
            while time.perf_counter() - started < COLD_START_LIMIT_SECONDS:
                running = _running(api, NAMESPACE)
                lists += 1
                if running == bots:
                    break
                time.sleep(poll_seconds(bots))
            cold = time.perf_counter() - started
            cold_cpu = _spent(_cpu(plane), cpu_before)
            cold_requests = requests.count() - at_start
            served = served_by_kind(metrics_text(api))
            served.subtract(served_before)
            rss = rss_mib(pid)
        finally:
            stop.set()
            operator.stop()
            kubelet.stop()
    # What the benchmark and the stand-in kubelet sent in the window is theirs.
    served.subtract(
        {
            ("LIST", "tradingbots"): lists,
            ("PATCH", "pods/status"): kubelet.reported,
            ("LIST", "pods"): kubelet.lists,
            ("WATCH", "pods"): kubelet.watches,
        }
    )
    # Requests for no resource (our /metrics reads, health checks) are left out.
    by_kind = Counter({k: v for k, v in served.items() if v > 0 and k[1]})
    return Point(
        bots, floor, cold, running, rss, peak[0], cold_requests, floor_cpu, cold_cpu, by_kind
    )


def plot(points: list[Point]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [p.bots for p in points]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    left.plot(ns, [p.cold for p in points], "o-", label="operator: start to all Running")
    left.plot(ns, [p.floor for p in points], "s--", label="floor: same objects, plain script")
    for n, goal in GOAL_COLD_SECONDS.items():
        left.plot([n], [goal], "r*", markersize=12, label=f"goal at {n:,} bots")
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xlabel("bots")
    left.set_ylabel("seconds")
    left.set_title("Cold start")
    left.legend()
    right.plot(ns, [p.rss for p in points], "o-", label="RSS after the cold start")
    right.plot(ns, [p.peak for p in points], "^:", label="peak RSS")
    for n, goal in GOAL_RSS_MIB.items():
        right.plot([n], [goal], "r*", markersize=12)
    right.set_xscale("log")
    right.set_xlabel("bots")
    right.set_ylabel("MiB")
    right.set_title("Operator memory (goals as red stars)")
    right.legend()
    figure.suptitle("One operator, chart settings, 2 cores, stand-in kubelet")
    figure.tight_layout()
    figure.savefig(PLOT, dpi=100)
    plt.close(figure)


def breakdown_table(point: Point) -> list[str]:
    total = sum(point.by_kind.values())
    lines = [
        f"The operator's requests during the cold start of {point.bots:,} bots, by verb and "
        f"resource ({total:,} in all here; the FlowSchema counted {point.requests:,.0f}):",
        "",
        "| verb | resource | requests | per bot |",
        "|---|---|---|---|",
    ]
    for (verb, resource), count in point.by_kind.most_common():
        lines.append(f"| {verb} | {resource or '(none)'} | {count} | {count / point.bots:.2f} |")
    return lines


def run() -> str:
    binaries.ensure()
    points: list[Point] = []
    for bots in sizes():
        print(f"[bench] scale-sweep: {bots} bots", flush=True)
        point = measure(bots)
        print(
            f"[bench] scale-sweep: {bots} bots: floor {point.floor:.0f} s, cold start "
            f"{point.cold:.0f} s, RSS {point.rss:.0f} MiB",
            flush=True,
        )
        points.append(point)
        plot(points)
        write_section(NAME, TITLE, f"python -m benchmarks {NAME}", report(points))
    return report(points)


def report(points: list[Point]) -> str:
    lines = [
        "Each size on a fresh local control plane: the floor first (a plain async script "
        "making the objects the operator makes, `benchmarks.scale_floor`), then the operator "
        "(chart identity, leader election, the fleet switch) for as many other bots; a "
        "stand-in kubelet driven by a watch marks pods Ready (no bot processes run).",
        "",
        "| bots | floor | cold start → all Running | cold start / floor | RSS after / peak "
        "| operator requests per bot | CPU s, floor: API server + etcd | CPU s, cold start: "
        "operator / API server + etcd |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in points:
        plane_floor = p.floor_cpu.get("kube-apiserver", 0) + p.floor_cpu.get("etcd", 0)
        plane_cold = p.cold_cpu.get("kube-apiserver", 0) + p.cold_cpu.get("etcd", 0)
        lines.append(
            f"| {p.bots:,} | {p.floor:.0f} s | {p.cold:.0f} s ({p.running:,} Running) | "
            f"{p.cold / p.floor:.1f} | {p.rss:.0f} MiB / {p.peak:.0f} MiB | "
            f"{p.requests / p.bots:.1f} | {plane_floor:.0f} | "
            f"{p.cold_cpu.get('operator', 0):.0f} / {plane_cold:.0f} |"
        )
    lines += ["", "![cold start and RSS against fleet size](scale.png)", ""]
    chosen = next((p for p in points if p.bots == BREAKDOWN_SIZE), points[-1])
    lines += breakdown_table(chosen)
    return "\n".join(lines)
