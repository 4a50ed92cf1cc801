"""Writes one benchmark's section of docs/benchmarks.md, leaving the others as they were.

Each section sits between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->`, so one benchmark
can be re-run alone and the document keeps every other result with the command behind it.
"""

from __future__ import annotations

import os
import platform
import re
import statistics
import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
HEADER = """# Benchmarks

Produced by `make bench` (all) or `python -m benchmarks NAME` (one section). Each section
names the command that produced it, the machine and the date. Timings on shared 2-core
machines are noisy: read medians and percentiles, and compare ratios rather than absolutes.
"""


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} CPU ({cpu}), {mem_gib:.0f} GiB RAM, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}"
    )


def go_version() -> str:
    try:
        return subprocess.run(
            ["go", "version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except OSError:
        return "go: not found"


def percentile(values: Sequence[float], pct: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * pct / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summarize(values: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "median": statistics.median(values),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "min": min(values),
        "max": max(values),
    }


def write_section(name: str, title: str, command: str, body: str) -> None:
    # A benchmark's own title/command/machine lines would repeat the section's.
    lines = body.strip().splitlines()
    while lines and (lines[0].startswith(("## ", "Command:", "Machine:")) or not lines[0]):
        lines.pop(0)
    body = "\n".join(lines)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = (
        f"<!-- bench:{name} -->\n## {title}\n\n"
        f"Command: `{command}` — {stamp}\n\nMachine: {machine()}\n\n"
        f"{body.strip()}\n<!-- /bench:{name} -->"
    )
    text = DOC.read_text() if DOC.exists() else HEADER
    pattern = re.compile(
        rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.S
    )
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)
