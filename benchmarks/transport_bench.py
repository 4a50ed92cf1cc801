"""Which Kubernetes client for the async access layer: RSS after import, and latency of 1,000
GETs and 1,000 status patches of one TradingBot against localkube, per candidate, measured
side by side in one run (each candidate in a fresh process, so RSS is its own):

- `official`: the synchronous official client through `asyncio.to_thread` (what the operator
  did until now);
- `kubernetes_asyncio`: the official client's async port;
- `lightkube`: a small typed async client;
- `aiohttp`: raw JSON over one aiohttp session (aiohttp is already a dependency).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from kubernetes import client, config

from localkube import binaries, product
from localkube.cluster import LocalCluster

CANDIDATES = ("official", "kubernetes_asyncio", "lightkube", "aiohttp")
CALLS = 1000
NAMESPACE = "bench-transport"


def _measure(candidate: str, kubeconfig: Path) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.transport_probe",
            candidate,
            str(kubeconfig),
            NAMESPACE,
            str(CALLS),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=binaries.REPO_ROOT,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{candidate}: {out.stderr[-2000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _p(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))] * 1000


def run() -> str:
    binaries.ensure()
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp, LocalCluster(Path(tmp) / "kube") as cluster:
        api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
        product.install_crds(api)
        product.ensure_namespace(api, NAMESPACE)
        client.CustomObjectsApi(api).create_namespaced_custom_object(
            "trading.r7.dev",
            "v1alpha1",
            NAMESPACE,
            "tradingbots",
            {
                "apiVersion": "trading.r7.dev/v1alpha1",
                "kind": "TradingBot",
                "metadata": {"name": "bench"},
                "spec": {
                    "profile": "stable",
                    "exchange": {"id": "binance"},
                    "symbols": ["BTC/USDT"],
                },
            },
        )
        for candidate in CANDIDATES:
            results[candidate] = _measure(candidate, cluster.kubeconfig)
    base = results["official"]
    rows = [
        "| client | RSS after import | GET p50 | GET p95 | status patch p50 | patch p95 |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        rows.append(
            f"| {name} | {r['rss']:.0f} MiB | {_p(r['gets'], 50):.2f} ms | "
            f"{_p(r['gets'], 95):.2f} ms | {_p(r['patches'], 50):.2f} ms | "
            f"{_p(r['patches'], 95):.2f} ms |"
        )
    ratio = _p(results["aiohttp"]["gets"], 50) / _p(base["gets"], 50)
    rows += [
        "",
        f"{CALLS} sequential GETs and {CALLS} merge-patches of `status` of one TradingBot per "
        "client, each client in a fresh interpreter (RSS measured right after import and "
        f"client setup). Raw aiohttp vs the official client through threads, GET p50: "
        f"{ratio:.2f}x.",
    ]
    return "\n".join(rows)
