"""Restart latency of this checkout against an earlier commit, measured in one run.

The earlier commit is checked out into a temporary git worktree with its own virtualenv
(`uv sync --frozen --offline`, so its pods run its own code), and both run their own
`benchmarks.restart_bench` in the order A B B A, so that a drift of the machine during the
run weighs on both alike. The table keeps each run's percentiles; the verdict compares the
median of the runs' p50s.

`RESTART_BASE` names the commit (default: the last one before the shared async Kubernetes
layer and the split packages).
"""

from __future__ import annotations

import os
import re
import statistics
import sys
from pathlib import Path

from benchmarks.worktree import checkout, head_rev, run_in
from localkube import binaries

BASE = os.environ.get("RESTART_BASE", "5078407")
PHASES = ("restart", "total", "stop", "start", "ready")
ROW = re.compile(r"^\| (?P<phase>[a-z]+) \| (?P<p50>[\d.]+) s \| (?P<p95>[\d.]+) s \|")

Percentiles = dict[str, tuple[float, float]]


def parse_table(markdown: str) -> Percentiles:
    """The phase rows of restart_bench's table: phase -> (p50, p95) in seconds."""
    found: Percentiles = {}
    for line in markdown.splitlines():
        match = ROW.match(line)
        if match and match["phase"] in PHASES:
            found[match["phase"]] = (float(match["p50"]), float(match["p95"]))
    missing = [p for p in PHASES if p not in found]
    if missing:
        raise RuntimeError(f"no {missing} rows in the restart benchmark's output:\n{markdown}")
    return found


def _run_in(tree: Path, python: str) -> Percentiles:
    code = "from benchmarks import restart_bench; print(restart_bench.run())"
    return parse_table(run_in(tree, python, code, "restart benchmark"))


def verdict(base: list[Percentiles], head: list[Percentiles]) -> tuple[float, float, float]:
    """Median of the runs' restart p50 for each side, and head / base."""
    base_p50 = statistics.median(r["restart"][0] for r in base)
    head_p50 = statistics.median(r["restart"][0] for r in head)
    return base_p50, head_p50, head_p50 / base_p50


def run() -> str:
    binaries.ensure()
    head = head_rev()
    runs: list[tuple[str, Percentiles]] = []
    with checkout(BASE, "restart-compare") as (base_tree, base_python):
        sides = {BASE: (base_tree, base_python), head: (binaries.REPO_ROOT, sys.executable)}
        for rev in (BASE, head, head, BASE):
            print(f"[bench] restart-compare: {rev}", file=sys.stderr, flush=True)
            tree, python = sides[rev]
            runs.append((rev, _run_in(tree, python)))
    rows = [
        "| run | commit | restart p50 | restart p95 | total p50 | stop p50 | start p50 | "
        "ready p50 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for index, (rev, result) in enumerate(runs, 1):
        rows.append(
            f"| {index} | {rev} | {result['restart'][0]:.2f} s | {result['restart'][1]:.2f} s | "
            f"{result['total'][0]:.2f} s | {result['stop'][0]:.2f} s | "
            f"{result['start'][0]:.2f} s | {result['ready'][0]:.2f} s |"
        )
    base_p50, head_p50, ratio = verdict(
        [r for rev, r in runs if rev == BASE], [r for rev, r in runs if rev == head]
    )
    rows += [
        "",
        f"Each run is `benchmarks.restart_bench` (20 restarts) in its own checkout and "
        f"virtualenv, in the order A B B A. Median of the runs' restart p50: {BASE} "
        f"{base_p50:.2f} s, {head} {head_p50:.2f} s, ratio {ratio:.2f} "
        f"({'within' if ratio <= 1.10 else 'outside'} 10 %).",
    ]
    return "\n".join(rows)
