"""Churn: a steady stream of edits over random bots of a large fleet, for minutes.

N TradingBots (1,000) run on one operator (chart identity, `maxConcurrentRestarts`
unlimited, `maxRestartsPerHour` 3,600 so the rate limit decides nothing, coalesceSeconds 1)
with a stand-in kubelet. Then, for CHURN_SECONDS, RATE edits per second go to bots picked at
random (a seeded generator). A watch on the TradingBots records every restart's
`restarts.last` as it completes; every few seconds a LIST counts the backlog, bots whose
running config is not the one asked for. Reported: edits sent, restarts done (coalescing
folds an edit that lands while a restart of the same bot is pending), restart duration
percentiles, and the backlog over time, first minute against last (growth means the
operator does not keep up), with a PNG plot.
"""

from __future__ import annotations

import copy
import random
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch

from benchmarks.report import summarize
from benchmarks.scale_bench import NAMESPACE, bot_phases, store_bots
from localkube import binaries, product
from localkube.cluster import LocalCluster
from tests.integration.invalid_specs import VALID_BASE_SPEC
from tests.integration.operator.harness import Kubelet, OperatorProcess

BOTS = 1000
RATE = 10.0
CHURN_SECONDS = 300.0
BACKLOG_EVERY = 5.0
DRAIN_SECONDS = 180.0
PLOT = Path(__file__).resolve().parent.parent / "docs" / "churn.png"


class RestartLog(threading.Thread):
    """Every completed restart, from a watch: (completed at, bot, duration seconds)."""

    def __init__(self, api: client.ApiClient) -> None:
        super().__init__(daemon=True)
        self.custom = client.CustomObjectsApi(api)
        self.seen: dict[str, int] = {}
        self.restarts: list[tuple[float, str, float]] = []
        self._stop = threading.Event()
        self._watch = watch.Watch()

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                for event in self._watch.stream(
                    self.custom.list_namespaced_custom_object,
                    "trading.r7.dev",
                    "v1alpha1",
                    NAMESPACE,
                    "tradingbots",
                    timeout_seconds=60,
                ):
                    self._record(event["object"])
                    if self._stop.is_set():
                        return
            except Exception:  # a dropped watch: open another (the totals dedupe)
                time.sleep(0.5)

    def _record(self, bot: dict[str, Any]) -> None:
        restarts = (bot.get("status") or {}).get("restarts") or {}
        total, last = int(restarts.get("total") or 0), restarts.get("last") or {}
        name = bot["metadata"]["name"]
        if total > self.seen.get(name, 0) and last.get("result") == "succeeded":
            self.seen[name] = total
            self.restarts.append((time.time(), name, float(last["durationSeconds"])))

    def stop(self) -> None:
        self._stop.set()
        self._watch.stop()


def backlog(custom: client.CustomObjectsApi) -> int:
    """Bots not yet running the config asked for."""
    items = custom.list_namespaced_custom_object(
        "trading.r7.dev", "v1alpha1", NAMESPACE, "tradingbots"
    )["items"]
    behind = 0
    for bot in items:
        status = bot.get("status") or {}
        if status.get("phase") != "Running" or status.get("configHash") != status.get(
            "desiredConfigHash"
        ):
            behind += 1
    return behind


def mean(values: list[int]) -> float:
    return sum(values) / len(values) if values else float("nan")


def plot(samples: list[tuple[float, int]], restarts: list[tuple[float, float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    top.plot([t for t, _ in samples], [b for _, b in samples], color="tab:red")
    top.set_ylabel("bots behind their spec")
    top.set_title(f"Churn: {RATE:.0f} edits/s over {BOTS} bots, one operator, 2 cores")
    bottom.scatter([t for t, _ in restarts], [d for _, d in restarts], s=4)
    bottom.set_ylabel("restart duration (s)")
    bottom.set_xlabel("seconds since the churn began")
    figure.tight_layout()
    figure.savefig(PLOT, dpi=100)
    plt.close(figure)


def run(bots: int = BOTS) -> str:
    binaries.ensure()
    rng = random.Random(13)
    with tempfile.TemporaryDirectory() as tmp, LocalCluster(Path(tmp) / "kube") as cluster:
        api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
        custom = client.CustomObjectsApi(api)
        product.install_crds(api)
        spec: dict[str, Any] = copy.deepcopy(VALID_BASE_SPEC)
        spec["restartPolicy"].update(coalesceSeconds=1, maxRestartsPerHour=3600)
        store_bots(api, custom, NAMESPACE, bots, spec)
        kubelet = Kubelet(api, NAMESPACE, delay=0.0, poll=0.5)
        kubelet.start()
        kubeconfig = product.operator_kubeconfig(cluster, api, Path(tmp) / "op.kubeconfig")
        operator = OperatorProcess(
            kubeconfig,
            NAMESPACE,
            Path(tmp) / "operator.log",
            extra_env={"TRADINGBOT_OPERATOR_MAX_CONCURRENT_RESTARTS": "0"},
        )
        log = RestartLog(api)
        samples: list[tuple[float, int]] = []
        edits = 0
        try:
            operator.start()
            deadline = time.perf_counter() + 1800
            while time.perf_counter() < deadline:
                if sum(p == "Running" for p in bot_phases(custom).values()) == bots:
                    break
                time.sleep(1)
            log.start()
            began = time.time()
            stop = threading.Event()

            def sample() -> None:
                while not stop.wait(BACKLOG_EVERY):
                    samples.append((time.time() - began, backlog(custom)))

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            values = [3, 4, 5, 6]
            next_at = time.perf_counter()
            end = next_at + CHURN_SECONDS
            while next_at < end:
                name = f"bot-{rng.randrange(bots):04d}"
                custom.patch_namespaced_custom_object(
                    "trading.r7.dev",
                    "v1alpha1",
                    NAMESPACE,
                    "tradingbots",
                    name,
                    {"spec": {"risk": {"maxOpenPositions": values[edits % len(values)]}}},
                )
                edits += 1
                next_at += 1 / RATE
                time.sleep(max(0.0, next_at - time.perf_counter()))
            churn_wall = time.time() - began
            drained = None
            drain_deadline = time.perf_counter() + DRAIN_SECONDS
            while time.perf_counter() < drain_deadline:
                if backlog(custom) == 0:
                    drained = time.time() - began - churn_wall
                    break
                time.sleep(1)
            stop.set()
            sampler.join(timeout=30)
        finally:
            log.stop()
            operator.stop()
            kubelet.stop()
    during = [(t - began, d) for t, _, d in log.restarts if t - began <= churn_wall]
    if not during:
        raise RuntimeError(
            f"no restart completed during the churn; operator log: {operator.logs()}"
        )
    durations = summarize([d for _, d in during])
    first = [b for t, b in samples if t <= 60]
    last = [b for t, b in samples if churn_wall - 60 < t <= churn_wall]
    plot(samples, [(t, d) for t, d in during])
    return "\n".join(
        [
            f"{bots} TradingBots on one operator (chart identity, maxConcurrentRestarts "
            "unlimited, maxRestartsPerHour 3600, coalesceSeconds 1), stand-in kubelet marking "
            f"pods Ready within 0.5 s; {RATE:.0f} edits/s to random bots (seeded) for "
            f"{CHURN_SECONDS:.0f} s.",
            "",
            "| measurement | result |",
            "|---|---|",
            f"| edits sent, over, rate achieved | {edits} in {churn_wall:.0f} s "
            f"({edits / churn_wall:.1f}/s; one synchronous sender) |",
            f"| restarts completed while the edits went on | {len(during)} |",
            f"| restart duration p50 / p95 / p99 / max | {durations['median']:.2f} s / "
            f"{durations['p95']:.2f} s / {durations['p99']:.2f} s / {durations['max']:.2f} s |",
            f"| backlog (bots behind their spec), mean in the first minute / the last minute "
            f"/ max | {mean(first):.1f} / {mean(last):.1f} / "
            f"{max((b for _, b in samples), default=0)} |",
            "| backlog gone after the edits stopped | "
            + ("not within 180 s" if drained is None else f"{drained:.0f} s")
            + " |",
            "",
            "![backlog and restart durations under churn](churn.png)",
        ]
    )
