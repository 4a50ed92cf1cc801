"""`python -m benchmarks [NAME ...]`: run benchmarks and update docs/benchmarks.md."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any

from benchmarks.report import write_section

# name -> (module, title, positional arguments for its run() -> markdown).
BENCHMARKS: dict[str, tuple[str, str, tuple[Any, ...]]] = {
    "localkube": (
        "benchmarks.localkube_bench",
        "Local control plane start-up (cached binaries)",
        (),
    ),
    "restart": (
        "benchmarks.restart_bench",
        "Restart latency (edit to new bot ready with state restored)",
        (),
    ),
    "restart-compare": (
        "benchmarks.restart_compare",
        "Restart latency against the commit before the redesign, side by side",
        (),
    ),
    "bot": (
        "benchmarks.bot_bench",
        "Bot process start and state checkpoint latency",
        (["--localkube"],),
    ),
    "killswitch": (
        "benchmarks.killswitch_bench",
        "Kill switch with the operator dead, and node-loss takeover",
        (),
    ),
    "transport": (
        "benchmarks.transport_bench",
        "Kubernetes clients for the async access layer",
        (),
    ),
    "takeover": (
        "benchmarks.takeover_bench",
        "Leader takeover between two replicas of one shard",
        (),
    ),
    "scale": ("benchmarks.scale_bench", "Scale: 1,000 TradingBots on one operator", ()),
    "scale-sweep": (
        "benchmarks.scale_sweep",
        "Scale against fleet size: cold start, floor and RSS",
        (),
    ),
    "churn": (
        "benchmarks.churn_bench",
        "Churn: 10 edits/s over random bots of 1,000 for 5 minutes",
        (),
    ),
    "scale-compare": (
        "benchmarks.scale_compare",
        "Scale against the controller before the fleet cache, side by side",
        (),
    ),
    "audit": (
        "benchmarks.audit_bench",
        "Audit log: durable appends, queries and verify on 1,000,000 events",
        (),
    ),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"default: all of {', '.join(BENCHMARKS)}")
    args = parser.parse_args(argv)
    names = args.names or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; known: {list(BENCHMARKS)}")
    for name in names:
        module_name, title, run_args = BENCHMARKS[name]
        module = importlib.import_module(module_name)
        print(f"[bench] {name}: {title}", file=sys.stderr, flush=True)
        body = module.run(*run_args)
        write_section(name, title, f"python -m benchmarks {name}", body)
        print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
