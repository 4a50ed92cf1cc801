"""Local control plane start-up: how long until the API server answers /readyz.

Two cases, five runs each: a fresh data dir (certificates generated, etcd initialised) and a
restart on an existing data dir (what a second `make run` does). Binaries are cached.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from benchmarks.report import go_version, summarize, write_section
from localkube import binaries
from localkube.cluster import LocalCluster

NAME = "localkube"
TITLE = "Local control plane start-up (cached binaries)"
RUNS = 5


def _time_start(data_dir: Path) -> float:
    cluster = LocalCluster(data_dir, die_with_parent=True)
    started = time.perf_counter()
    cluster.start(timeout=120)
    elapsed = time.perf_counter() - started
    cluster.stop()
    return elapsed


def run() -> str:
    binaries.ensure(["etcd", "kubernetes"])
    fresh, restart = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(RUNS):
            fresh.append(_time_start(Path(tmp) / f"fresh-{i}"))
        reused = Path(tmp) / "reused"
        _time_start(reused)
        for _ in range(RUNS):
            restart.append(_time_start(reused))
    rows = []
    for label, values in (("fresh data dir", fresh), ("existing data dir", restart)):
        s = summarize(values)
        rows.append(
            f"| {label} | {s['n']} | {s['median']:.2f} s | {s['min']:.2f} s | {s['max']:.2f} s |"
        )
    versions = binaries.read_versions()
    return "\n".join(
        [
            f"kube-apiserver v{versions['KUBERNETES_VERSION']}, etcd v{versions['ETCD_VERSION']}; "
            f"{go_version()}. Goal: cached control plane ready in under 5 s.",
            "",
            "| case | runs | median | min | max |",
            "|---|---|---|---|---|",
            *rows,
        ]
    )


def main() -> None:
    body = run()
    write_section(NAME, TITLE, "python -m benchmarks localkube", body)
    print(body)


if __name__ == "__main__":
    main()
