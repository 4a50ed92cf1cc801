"""`make run` twice: the four sample bots trade, stop gracefully, and resume their ledgers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from kubernetes import client, config

from localkube.cluster import LocalCluster
from tests import kube
from tradingbot_audit import AuditFilter, query, verify_log

BOTS = ("bot-estavel", "bot-medio", "bot-volatil", "bot-meme")


def run_product(data_dir: Path, seconds: int) -> str:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "localkube",
            "run",
            "--data-dir",
            str(data_dir),
            "--duration",
            str(seconds),
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 240,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


def states(data_dir: Path) -> dict[str, dict[str, Any]]:
    """The bots' state ConfigMaps, read with only the control plane up (no bot running)."""
    with LocalCluster(data_dir, die_with_parent=True) as cluster:
        core = client.CoreV1Api(config.new_client_from_config(str(cluster.kubeconfig)))
        return {
            bot: json.loads(
                core.read_namespaced_config_map(f"{bot}-state", "trading").data["state.json"]
            )
            for bot in BOTS
        }


def last_table(stdout: str) -> dict[str, dict[str, str]]:
    """The last status table `make run` printed (not a terminal: one table per change)."""
    tables = [t for t in stdout.split("\n\n") if t.strip().startswith("NAME")]
    header, *lines = tables[-1].strip().splitlines()
    columns = header.split()
    rows = [dict(zip(columns, line.split(), strict=False)) for line in lines if line.strip()]
    return {row["NAME"]: row for row in rows}


def edit_as_the_tour_does(data_dir: Path) -> None:
    """`kubectl patch tb bot-medio --type merge -p ...` between two runs (README tour)."""
    with LocalCluster(data_dir, die_with_parent=True) as cluster:
        api = client.CustomObjectsApi(config.new_client_from_config(str(cluster.kubeconfig)))

        def patched() -> bool:
            try:
                api.patch_namespaced_custom_object(
                    "trading.r7.dev",
                    "v1alpha1",
                    "trading",
                    "tradingbots",
                    "bot-medio",
                    {"spec": {"risk": {"maxOpenPositions": 4}}},
                    field_manager="kubectl-patch",
                )
            except client.ApiException as err:
                if err.status != 503:  # a restarted API server serves CRDs a moment later
                    raise
                return False
            return True

        kube.wait_for(patched, timeout=30, message="the API server to serve TradingBots")


def test_make_run_twice_resumes_every_bot_with_its_positions(tmp_path: Path) -> None:
    data_dir = tmp_path / "local"
    first = run_product(data_dir, 40)
    table = last_table(first)
    assert set(table) == set(BOTS)
    assert all(row["PHASE"] == "Running" for row in table.values()), table
    after_first = states(data_dir)
    for bot, state in after_first.items():
        assert state["reason"] == "shutdown", (bot, state["reason"])  # Ctrl-C was graceful
    assert sum(s["stats"]["totalTrades"] for s in after_first.values()) > 0

    edit_as_the_tour_does(data_dir)
    run_product(data_dir, 25)
    after_second = states(data_dir)
    with LocalCluster(data_dir, die_with_parent=True) as cluster:
        api = client.CustomObjectsApi(config.new_client_from_config(str(cluster.kubeconfig)))
        medio = api.get_namespaced_custom_object(
            "trading.r7.dev", "v1alpha1", "trading", "tradingbots", "bot-medio"
        )
    assert medio["spec"]["risk"]["maxOpenPositions"] == 4  # the user's edit survived
    for bot in BOTS:
        before, after = after_first[bot], after_second[bot]
        assert after["checkpointSeq"] > before["checkpointSeq"]
        assert after["stats"]["totalTrades"] >= before["stats"]["totalTrades"]
        # Every fill recorded before the stop is still in the journal (delivery flags aside).
        kept = {f["orderId"] for f in after["journal"]}
        missing = [f["orderId"] for f in before["journal"] if f["orderId"] not in kept]
        assert missing == [], (bot, missing)
    # One chain, written as the chart runs the sidecar: no unauthenticated ingest, the
    # operator's events posted with its audience-bound token, the bots' fills with theirs.
    log_dir = data_dir / "audit"
    assert verify_log(log_dir).ok
    records = list(query(log_dir, AuditFilter.build(), limit=None))
    sources = {r["source"] for r in records}
    assert {"operator", "bot"} <= sources, sources
    assert {r["event_type"] for r in records if r["source"] == "operator"} >= {"start"}
