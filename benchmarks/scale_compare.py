"""Fleet scale of this checkout against an earlier commit, measured in one run.

Each side runs its own `benchmarks.scale_bench` (its operator, its harness) in its own
checkout and virtualenv (see `benchmarks.worktree`), for each fleet size, base first. The
table keeps what each run measured: cold start until every bot is Running, the operator's
RSS after it, and the restarts of 50 bots edited at once.

`SCALE_BASE` names the earlier commit (default: the controller that read every bot and its
pods from the API server on each pass); `SCALE_SIZES` the fleet sizes (default 300,1000).
"""

from __future__ import annotations

import os
import re
import sys

from benchmarks.worktree import checkout, head_rev, run_in
from localkube import binaries

BASE = os.environ.get("SCALE_BASE", "e29c737")
SIZES = tuple(int(n) for n in os.environ.get("SCALE_SIZES", "300,1000").split(","))

COLD = re.compile(r"\| cold start: [^|]*\| (?P<s>[\d.]+) s \((?P<running>\d+) Running\)")
RSS = re.compile(
    r"\| operator RSS after cold start / peak \| (?P<after>[\d.]+) MiB / (?P<peak>[\d.]+)"
)
FLOOR = re.compile(r"\| floor: [^|]*\| (?P<floor>[\d.]+) s \|")
CHURN = re.compile(
    r"duration p50 / p95 / max \| (?P<p50>[\d.]+) s / (?P<p95>[\d.]+) s / [\d.]+ s "
    r"\(all done in (?P<all>[\d.]+) s\)"
)


def parse(markdown: str) -> dict[str, float]:
    """The figures of one scale_bench table."""
    found: dict[str, float] = {}
    for pattern in (COLD, RSS, CHURN):
        match = pattern.search(markdown)
        if match is None:
            raise RuntimeError(
                f"no {pattern.pattern!r} in the scale benchmark's output:\n{markdown}"
            )
        found.update({k: float(v) for k, v in match.groupdict().items()})
    floor = FLOOR.search(markdown)  # measured by the newer benchmarks only
    if floor is not None:
        found["floor"] = float(floor["floor"])
    return found


def run() -> str:
    binaries.ensure()
    head = head_rev()
    rows = [
        "| bots | commit | cold start → all Running | floor (same run) | RSS after | "
        "50 edits: restart p50 / p95 | all 50 done |",
        "|---|---|---|---|---|---|---|",
    ]
    with checkout(BASE, "scale-compare") as (base_tree, base_python):
        sides = ((BASE, base_tree, base_python), (head, binaries.REPO_ROOT, sys.executable))
        for bots in SIZES:
            for rev, tree, python in sides:
                print(f"[bench] scale-compare: {bots} bots, {rev}", file=sys.stderr, flush=True)
                code = f"from benchmarks import scale_bench; print(scale_bench.run({bots}))"
                got = parse(run_in(tree, python, code, "scale benchmark"))
                floor = f"{got['floor']:.0f} s" if "floor" in got else "not measured"
                rows.append(
                    f"| {bots} | {rev} | {got['s']:.0f} s ({got['running']:.0f} Running) | "
                    f"{floor} | {got['after']:.0f} MiB | {got['p50']:.2f} s / "
                    f"{got['p95']:.2f} s | {got['all']:.0f} s |"
                )
    rows += [
        "",
        f"Each row is `benchmarks.scale_bench` run in its own checkout and virtualenv, {BASE} "
        f"then {head} for each size, a stand-in kubelet marking pods Ready (no bot processes).",
    ]
    return "\n".join(rows)
