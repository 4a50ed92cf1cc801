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
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from localkube import binaries

BASE = os.environ.get("RESTART_BASE", "5078407")
PHASES = ("restart", "total", "stop", "start", "ready")
ROW = re.compile(r"^\| (?P<phase>[a-z]+) \| (?P<p50>[\d.]+) s \| (?P<p95>[\d.]+) s \|")
RUN_TIMEOUT_SECONDS = 1800

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


def _uv() -> str:
    found = shutil.which("uv") or str(Path.home() / ".local/bin/uv")
    if not Path(found).exists():
        raise RuntimeError("uv not found (make setup installs it)")
    return found


def _base_tree(tmp: Path) -> Path:
    tree = tmp / "base"
    repo = binaries.REPO_ROOT
    subprocess.run(
        ["git", "-C", str(repo), "worktree", "add", "--detach", "--quiet", str(tree), BASE],
        check=True,
    )
    print(f"[bench] restart-compare: virtualenv for {BASE}", file=sys.stderr, flush=True)
    subprocess.run(
        [_uv(), "sync", "--frozen", "--offline", "--quiet", "--python", sys.executable],
        cwd=tree,
        check=True,
        env={k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"},
    )
    return tree


def _run_in(tree: Path, python: str) -> Percentiles:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    out = subprocess.run(
        [python, "-c", "from benchmarks import restart_bench; print(restart_bench.run())"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_SECONDS,
    )
    if out.returncode != 0:
        raise RuntimeError(f"restart benchmark in {tree} failed:\n{out.stderr[-3000:]}")
    return parse_table(out.stdout)


def verdict(base: list[Percentiles], head: list[Percentiles]) -> tuple[float, float, float]:
    """Median of the runs' restart p50 for each side, and head / base."""
    base_p50 = statistics.median(r["restart"][0] for r in base)
    head_p50 = statistics.median(r["restart"][0] for r in head)
    return base_p50, head_p50, head_p50 / base_p50


def run() -> str:
    binaries.ensure()
    head_tree = binaries.REPO_ROOT
    head_rev = subprocess.run(
        ["git", "-C", str(head_tree), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    runs: list[tuple[str, Percentiles]] = []
    with tempfile.TemporaryDirectory() as tmp:
        base_tree = _base_tree(Path(tmp))
        try:
            sides = {
                BASE: (base_tree, str(base_tree / ".venv/bin/python")),
                head_rev: (head_tree, sys.executable),
            }
            for rev in (BASE, head_rev, head_rev, BASE):
                print(f"[bench] restart-compare: {rev}", file=sys.stderr, flush=True)
                tree, python = sides[rev]
                runs.append((rev, _run_in(tree, python)))
        finally:
            subprocess.run(
                ["git", "-C", str(head_tree), "worktree", "remove", "--force", str(base_tree)],
                check=False,
            )
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
        [r for rev, r in runs if rev == BASE], [r for rev, r in runs if rev == head_rev]
    )
    rows += [
        "",
        f"Each run is `benchmarks.restart_bench` (20 restarts) in its own checkout and "
        f"virtualenv, in the order A B B A. Median of the runs' restart p50: {BASE} "
        f"{base_p50:.2f} s, {head_rev} {head_p50:.2f} s, ratio {ratio:.2f} "
        f"({'within' if ratio <= 1.10 else 'outside'} 10 %).",
    ]
    return "\n".join(rows)
