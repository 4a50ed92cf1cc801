"""Bot runtime benchmarks: process start to first decision, state checkpoint latency.

    python benchmarks/bot_bench.py                      # offline parts only
    python benchmarks/bot_bench.py --localkube          # plus a throwaway local API server
    python benchmarks/bot_bench.py --kubeconfig PATH    # plus an existing cluster

Offline parts: `python -m tradingbot`'s start path in a fresh interpreter against an in-memory
API (imports, config, lease, restore, price warm-up, first decision), and the PVC backend
(`FileStateStore`, fsync on). Cluster parts: the real process against a real API server (its
own namespace, the objects the operator would create, the admin kubeconfig), and the
ConfigMap backend. Prints a markdown section; `--output FILE` also writes it there.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

REPO_ROOT = Path(__file__).resolve().parent.parent
BOT = "bench"
GROUP_VERSION = "trading.r7.dev/v1alpha1"
SPEC: dict[str, Any] = {
    "profile": "medium",
    "exchange": {"id": "binance", "mode": "paper"},
    "symbols": ["BTC/USDT", "ETH/USDT", "SOL/USDT"],
    "strategy": {"params": {"priceFeed": "seeded"}},
}


# A typical day, and a journal at its bound (MAX_JOURNAL_ENTRIES).
JOURNAL_SIZES = (100, 500)


@dataclass
class Row:
    what: str
    samples: list[float]
    unit: str  # "s" or "ms"
    note: str = ""

    def cells(self) -> list[str]:
        scale = 1000.0 if self.unit == "ms" else 1.0
        values = sorted(v * scale for v in self.samples)
        p95 = values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]
        fmt = "{:.2f} " + self.unit if self.unit == "s" else "{:.1f} " + self.unit
        return [
            self.what,
            str(len(values)),
            fmt.format(statistics.median(values)),
            fmt.format(p95),
            self.note,
        ]


# ------------------------------------------------------------------ state fixtures


def realistic_state(fills: int) -> Any:
    """Three positions and a journal of `fills` fills, like a bot after a busy day."""
    from tradingbot.ledger import Execution, apply_fill
    from tradingbot.state import StateCheckpoint

    state = StateCheckpoint(balances={"USDT": 10_000.0})
    symbols = ["BTC/USDT", "ETH/USDT", "SOL/USDT"]
    for i in range(fills):
        symbol = symbols[i % 3]
        side = "buy" if (i // 3) % 2 == 0 or i >= fills - 3 else "sell"
        state, _ = apply_fill(
            state,
            Execution(
                symbol,
                side,
                0.01,
                100.0 + i,
                1.0 + i / 100,
                0.001,
                "USDT",
                f"order-{i}",
                f"tb{uuid.uuid4().hex[:30]}",
                "2026-03-01T12:00:00.000Z",
            ),
        )
    return state


async def time_saves(store: Any, state: Any, iterations: int) -> list[float]:
    samples = []
    for _ in range(iterations):
        state = state.next(reason="fill", writer_pod="bench-pod")
        started = time.perf_counter()
        state = await store.save(state)
        samples.append(time.perf_counter() - started)
    return samples


def document_size(state: Any, max_bytes: int | None = None) -> str:
    from tradingbot.state import encode_state

    text, _ = encode_state(state, max_bytes=max_bytes)
    return f"{len(text.encode()) / 1024:.0f} KiB document"


def bench_file_store(iterations: int, directory: Path) -> list[Row]:
    from tradingbot.state import FileStateStore

    rows = []
    for fills in JOURNAL_SIZES:
        state = realistic_state(fills)
        store = FileStateStore(directory / f"fills-{fills}")
        samples = asyncio.run(time_saves(store, state, iterations))
        rows.append(
            Row(
                f"checkpoint, file store (fsync), {len(state.journal)}-fill journal",
                samples,
                "ms",
                document_size(state),
            )
        )
    return rows


def bench_configmap_store(iterations: int, kubeconfig: Path, namespace: str) -> list[Row]:
    from tradingbot.constants import CONFIGMAP_DOCUMENT_BUDGET_BYTES

    from tradingbot.kube import KubeClient
    from tradingbot.state import ConfigMapStateStore

    api = KubeClient.from_environment(str(kubeconfig))
    rows = []
    try:
        for fills in JOURNAL_SIZES:
            state = realistic_state(fills)
            store = ConfigMapStateStore(api, namespace, f"{BOT}-cm{fills}")
            asyncio.run(store.load())
            samples = asyncio.run(time_saves(store, state, iterations))
            rows.append(
                Row(
                    f"checkpoint, ConfigMap store, {len(state.journal)}-fill journal",
                    samples,
                    "ms",
                    document_size(state, CONFIGMAP_DOCUMENT_BUDGET_BYTES) + ", both keys",
                )
            )
    finally:
        api.close()
    return rows


# ------------------------------------------------------------------ start to first decision


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def offline_child(state_dir: str) -> None:
    """Run the bot in this interpreter against an in-memory API (for `--child-offline`)."""
    from tests.unit.bot.fakekube import FakeKube
    from tradingbot.__main__ import main as bot_main
    from tradingbot.kube import KubeClient

    fake = FakeKube()
    fake.put_object(
        GROUP_VERSION,
        "bench",
        "tradingbots",
        {
            "apiVersion": GROUP_VERSION,
            "kind": "TradingBot",
            "metadata": {"name": BOT, "namespace": "bench"},
            "spec": {**SPEC, "state": {"backend": "pvc", "pvc": {"size": "1Gi"}}},
        },
    )
    # The process is the real entry point; only the API client is swapped for memory.
    KubeClient.from_environment = classmethod(lambda cls, kubeconfig=None: fake)  # type: ignore[method-assign,assignment]
    os.environ.update({"STATE_DIR": state_dir})
    sys.exit(bot_main())


def time_to_first_decision(
    cmd: list[str], env: dict[str, str], timeout: float = 120.0
) -> tuple[float, float]:
    """Seconds from spawn to the `first decision` log line, and SIGTERM to exit."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO_ROOT
    )
    assert proc.stdout is not None
    first = None
    deadline = time.monotonic() + timeout
    try:
        for raw in proc.stdout:
            if time.monotonic() > deadline:
                break
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            if line.get("message") == "first decision":
                first = time.perf_counter() - started
                break
        if first is None:
            raise RuntimeError(f"no first decision from {cmd} (exit {proc.poll()})")
        stopping = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        proc.stdout.read()
        code = proc.wait(timeout=60)
        stop = time.perf_counter() - stopping
        if code != 0:
            raise RuntimeError(f"bot exited {code} after SIGTERM")
        return first, stop
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def bot_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    env.update(
        {
            "BOT_NAME": BOT,
            "POD_NAMESPACE": "bench",
            "POD_NAME": "bench-pod",
            "POD_IP": "127.0.0.1",
            "METRICS_PORT": str(free_port()),
            "TICK_SECONDS": "0.2",
            "PRICE_FEED": "seeded",
            "LOG_LEVEL": "INFO",
        }
    )
    env.update(extra)
    return env


def bench_start_offline(runs: int, directory: Path) -> list[Row]:
    starts, stops = [], []
    for i in range(runs):
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child-offline",
            str(directory / f"start-{i % 2}"),
        ]
        first, stop = time_to_first_decision(cmd, bot_env())
        starts.append(first)
        stops.append(stop)
    return [
        Row(
            "process start → first decision (in-memory API)",
            starts,
            "s",
            "imports, config, lease, restore, warm-up",
        ),
        Row("SIGTERM → exit 0 (in-memory API)", stops, "s", "shutdown checkpoint, release"),
    ]


def bench_start_cluster(runs: int, kubeconfig: Path, namespace: str) -> list[Row]:
    starts, stops = [], []
    for _ in range(runs):
        env = bot_env(KUBECONFIG=str(kubeconfig), POD_NAMESPACE=namespace)
        first, stop = time_to_first_decision([sys.executable, "-m", "tradingbot"], env)
        starts.append(first)
        stops.append(stop)
    return [
        Row(
            "process start → first decision (real API server)",
            starts,
            "s",
            "plus API reads, Lease, ConfigMap restore",
        ),
        Row("SIGTERM → exit 0 (real API server)", stops, "s", "shutdown checkpoint, Lease release"),
    ]


# ------------------------------------------------------------------ cluster set-up


@contextmanager
def cluster_namespace(kubeconfig: Path) -> Iterator[str]:
    """A fresh namespace with the CRD, a TradingBot and the objects the operator creates."""
    import yaml
    from kubernetes import client, config
    from kubernetes.dynamic import DynamicClient

    from tradingbot_operator.render import BotRef, render_bot_objects

    api = config.new_client_from_config(config_file=str(kubeconfig))
    dynamic = DynamicClient(api)

    def apply(obj: dict[str, Any], namespace: str | None = None) -> Any:
        resource = dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        kwargs: dict[str, Any] = {"body": obj, "field_manager": "bot-bench", "force": True}
        if resource.namespaced:
            kwargs["namespace"] = namespace
        return resource.server_side_apply(**kwargs)

    for path in sorted((REPO_ROOT / "crds").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                apply(doc)
    ext = client.ApiextensionsV1Api(api)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = ext.read_custom_resource_definition("tradingbots.trading.r7.dev").status
        conditions = (status.conditions if status else None) or []
        if any(c.type == "Established" and c.status == "True" for c in conditions):
            break
        time.sleep(0.2)
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    try:
        created = cast(
            dict[str, Any],
            client.CustomObjectsApi(api).create_namespaced_custom_object(
                "trading.r7.dev",
                "v1alpha1",
                namespace,
                "tradingbots",
                {
                    "apiVersion": GROUP_VERSION,
                    "kind": "TradingBot",
                    "metadata": {"name": BOT, "namespace": namespace},
                    "spec": SPEC,
                },
            ),
        )
        ref = BotRef(namespace=namespace, name=BOT, uid=created["metadata"]["uid"])
        for obj in render_bot_objects(ref, created["spec"]):
            apply(obj, namespace)
        yield namespace
    finally:
        try:
            core.delete_namespace(namespace)
        finally:
            api.close()


@contextmanager
def local_cluster() -> Iterator[Path]:
    from localkube.cluster import LocalCluster

    with (
        tempfile.TemporaryDirectory(prefix="bot-bench-kube-") as data_dir,
        LocalCluster(Path(data_dir), die_with_parent=True) as cluster,
    ):
        yield cluster.kubeconfig


# ------------------------------------------------------------------ report


def render(rows: list[Row], command: str, skipped: list[str]) -> str:
    lines = [
        "## Bot runtime",
        "",
        f"Command: `{command}`  ",
        f"Machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}",
        "",
        "| measurement | n | median | p95 | notes |",
        "|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    if skipped:
        lines += ["", *(f"- not measured: {reason}" for reason in skipped)]
    return "\n".join(lines) + "\n"


def run(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", type=Path, help="cluster for the cluster parts")
    parser.add_argument(
        "--localkube",
        action="store_true",
        help="start a throwaway local API server for the cluster parts",
    )
    parser.add_argument("--iterations", type=int, default=200, help="checkpoints per case")
    parser.add_argument("--runs", type=int, default=5, help="process starts per case")
    parser.add_argument("--output", type=Path, help="also write the markdown here")
    parser.add_argument("--child-offline", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_offline:
        offline_child(args.child_offline)
    command = "python benchmarks/bot_bench.py " + " ".join(
        a for a in (argv if argv is not None else sys.argv[1:])
    )
    rows: list[Row] = []
    skipped: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bot-bench-") as tmp:
        rows += bench_start_offline(args.runs, Path(tmp))
        rows += bench_file_store(args.iterations, Path(tmp))

    def cluster_parts(kubeconfig: Path) -> None:
        with cluster_namespace(kubeconfig) as namespace:
            rows.extend(bench_start_cluster(args.runs, kubeconfig, namespace))
            rows.extend(bench_configmap_store(max(20, args.iterations // 2), kubeconfig, namespace))

    cluster: Callable[[], Any] | None = None
    if args.kubeconfig:
        cluster = lambda: cluster_parts(args.kubeconfig)  # noqa: E731
    elif args.localkube:

        def cluster() -> None:
            with local_cluster() as kubeconfig:
                cluster_parts(kubeconfig)

    if cluster is None:
        skipped.append("ConfigMap store and real-API start (pass --localkube or --kubeconfig)")
    else:
        cluster()
    report = render(rows, command.strip(), skipped)
    if args.output:
        args.output.write_text(report)
    return report


def main() -> None:
    print(run(), end="")


if __name__ == "__main__":
    main()
