"""Which Kubernetes client for the async access layer: RSS after import, and latency of 1,000
GETs and 1,000 status patches of one TradingBot against localkube, per candidate, measured
side by side in one run (each candidate in a fresh process, so RSS is its own):

- `official`: the synchronous official client through `asyncio.to_thread` (what the operator
  did until now);
- `kubernetes_asyncio`: the official client's async port;
- `lightkube`: a small typed async client;
- `aiohttp`: raw JSON over one aiohttp session (aiohttp is already a dependency);
- `shared layer`: what the programs use, `tradingbot_api.kubeclient.KubeClient` (aiohttp).

The same for the audit sidecar's one HTTP client: 1,000 single-event POSTs to a real sidecar's
ingest listener (each answered after fsync) by `tradingbot_api.audit_http.AuditClient`, by
httpx2, and by urllib through a thread.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from kubernetes import client, config

from localkube import binaries, product
from localkube.cluster import LocalCluster

CANDIDATES = ("official", "kubernetes_asyncio", "lightkube", "aiohttp", "shared layer")
AUDIT_CANDIDATES = ("AuditClient (aiohttp)", "httpx2", "urllib in a thread")
CALLS = 1000
NAMESPACE = "bench-transport"


def _measure(candidate: str, kubeconfig: Path) -> dict[str, Any]:
    return _probe([candidate, str(kubeconfig), NAMESPACE, str(CALLS)])


def _probe(args: list[str]) -> dict[str, Any]:
    candidate = args[0] if args[0] != "audit" else args[1]
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.transport_probe", *args],
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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _audit_results(kubeconfig: Path, log_dir: Path) -> dict[str, dict[str, Any]]:
    ingest, api = _free_port(), _free_port()
    sidecar = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tradingbot_audit",
            "--log-dir",
            str(log_dir),
            "serve",
            "--kubeconfig",
            str(kubeconfig),
            "--listen",
            f"127.0.0.1:{api}",
            "--ingest-listen",
            f"127.0.0.1:{ingest}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    base = f"http://127.0.0.1:{ingest}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{base}/healthz", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline or sidecar.poll() is not None:
                    raise RuntimeError("the audit sidecar did not start") from None
                time.sleep(0.2)
        return {
            name: _probe(["audit", name, f"{base}/v1/events", str(CALLS)])
            for name in AUDIT_CANDIDATES
        }
    finally:
        sidecar.terminate()
        sidecar.wait(timeout=30)


def run() -> str:
    binaries.ensure()
    results: dict[str, dict[str, Any]] = {}
    audit: dict[str, dict[str, Any]] = {}
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
        audit = _audit_results(cluster.kubeconfig, Path(tmp) / "audit")
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
    shared = results["shared layer"]
    shared_get = _p(shared["gets"], 50) / _p(base["gets"], 50)
    shared_patch = _p(shared["patches"], 50) / _p(base["patches"], 50)
    rows += [
        "",
        f"{CALLS} sequential GETs and {CALLS} merge-patches of `status` of one TradingBot per "
        "client, each client in a fresh interpreter (RSS measured right after import and "
        f"client setup). Raw aiohttp vs the official client through threads, GET p50: "
        f"{ratio:.2f}x; the shared layer vs the official client: GET p50 {shared_get:.2f}x, "
        f"status patch p50 {shared_patch:.2f}x.",
        "",
        "| audit client | RSS after import | POST p50 | POST p95 | POST p99 |",
        "|---|---|---|---|---|",
    ]
    for name, r in audit.items():
        rows.append(
            f"| {name} | {r['rss']:.0f} MiB | {_p(r['posts'], 50):.2f} ms | "
            f"{_p(r['posts'], 95):.2f} ms | {_p(r['posts'], 99):.2f} ms |"
        )
    first = audit[AUDIT_CANDIDATES[0]]
    rows += [
        "",
        f"{CALLS} sequential single-event POSTs to one real sidecar's ingest listener (each "
        "answered after fsync), each client in a fresh interpreter. AuditClient vs urllib in a "
        f"thread, POST p50: "
        f"{_p(first['posts'], 50) / _p(audit['urllib in a thread']['posts'], 50):.2f}x.",
    ]
    return "\n".join(rows)
