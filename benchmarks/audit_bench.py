"""Audit log benchmark (SPEC §10): durable append rate, query latency and verify time.

    python -m benchmarks.audit_bench [--events 1000000] [--dir DIR] [--keep]

Measures, on a scratch directory (the system temp dir unless --dir):

* append throughput with durability: every event fsync-acknowledged, one `append` per event,
  and `append_many` batches (one fsync per batch);
* a log of `--events` events (default 1,000,000) with a realistic mix of types, bots and
  users, then on it: writer open time (crash recovery and dedup window rebuild), query
  latency for the 100 most recent events of a type (median and p95 of repeated queries,
  warm page cache), summary time, and the time of a full `verify`.

`run()` returns the markdown table (the `python -m benchmarks` convention, with TITLE);
`run(results)` also stores the raw numbers under `results["audit"]`.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tradingbot_audit import (
    AuditFilter,
    open_writer,
    query,
    summary,
    verify_log,
)

TITLE = "Audit log: durable appends, queries and verify on 1,000,000 events"
QUERY_GOAL_MS = 100.0
QUERY_REPEATS = 30
BATCH_FOR_BULK_LOAD = 10_000

# Share of each event type in the generated log: trading dominates, control actions are rare.
EVENT_MIX: tuple[tuple[str, float], ...] = (
    ("trade", 0.60),
    ("position_change", 0.25),
    ("error", 0.04),
    ("config_change", 0.03),
    ("restart", 0.03),
    ("rate_limited", 0.029),
    ("stop", 0.01),
    ("resume", 0.01),
    ("halt", 0.001),
)
BOTS = [f"bot-{i:03d}" for i in range(50)]
USERS = ["alice@example.com", "bob@example.com", "system:serviceaccount:argocd:argocd"]
SYMBOLS = ["BTC/USDT", "ETH/USDT", "SOL/USDT", "DOGE/USDT", "PEPE/USDT"]


def _percentile(samples: list[float], share: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def synthetic_events(
    count: int, start: datetime, step: timedelta, seed: int = 7
) -> Iterator[dict[str, Any]]:
    """Deterministic events shaped like the operator's and the bots' (sizes included)."""
    rng = random.Random(seed)
    types = [name for name, _share in EVENT_MIX]
    weights = [share for _name, share in EVENT_MIX]
    for i in range(count):
        kind = rng.choices(types, weights)[0]
        bot = rng.choice(BOTS)
        moment = start + step * i
        event: dict[str, Any] = {
            "timestamp": moment.isoformat(),
            "event_type": kind,
            "severity": "info",
            "target": bot,
            "namespace": "trading",
        }
        if kind in ("trade", "position_change"):
            symbol = rng.choice(SYMBOLS)
            event.update(
                source="bot",
                action="fill" if kind == "trade" else "position_opened",
                dedup_key=f"{bot}:{kind}:{i}",
                details={
                    "symbol": symbol,
                    "side": rng.choice(("buy", "sell")),
                    "qty": round(rng.uniform(0.001, 2.0), 6),
                    "price": round(rng.uniform(0.1, 70_000.0), 2),
                    "fee": round(rng.uniform(0.01, 5.0), 4),
                    "orderId": f"{rng.getrandbits(48):012x}",
                },
            )
        elif kind in ("config_change", "stop", "resume", "halt"):
            event.update(
                source=rng.choice(("kubectl", "gitops", "plugin")),
                action=kind,
                user_id=rng.choice(USERS),
                dedup_key=f"{bot}:{kind}:{i}",
                severity="critical" if kind == "halt" else "warning",
                details={
                    "changedFields": ["spec.risk.stopLossPct", "spec.symbols"],
                    "old": {"risk": {"stopLossPct": 2.0}, "symbols": ["BTC/USDT"]},
                    "new": {"risk": {"stopLossPct": 1.5}, "symbols": ["BTC/USDT", "ETH/USDT"]},
                },
            )
        else:
            event.update(
                source="operator",
                action=kind,
                severity="warning",
                details={"reason": "restart requested", "attempt": rng.randint(1, 5)},
            )
        yield event


class StepClock:
    """Writer clock that follows the generated timestamps, so day rotation happens."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


def _timed(action: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    value = action()
    return time.perf_counter() - started, value


def bench_append(work: Path) -> dict[str, float]:
    """Durable append rates: one fsync per event, then one per batch of 100 and 1,000."""
    out: dict[str, float] = {}
    events = list(synthetic_events(20_000, datetime(2025, 1, 1, tzinfo=UTC), timedelta(seconds=1)))

    log_dir = work / "append-single"
    with open_writer(log_dir) as writer:
        latencies = []
        deadline = time.perf_counter() + 5.0
        count = 0
        started = time.perf_counter()
        while count < 5_000 and time.perf_counter() < deadline:
            t0 = time.perf_counter()
            writer.append(events[count])
            latencies.append(time.perf_counter() - t0)
            count += 1
        elapsed = time.perf_counter() - started
    out["single_events_per_s"] = count / elapsed
    out["single_p50_ms"] = statistics.median(latencies) * 1000
    out["single_p99_ms"] = _percentile(latencies, 0.99) * 1000

    for batch in (100, 1_000):
        log_dir = work / f"append-batch-{batch}"
        with open_writer(log_dir) as writer:
            started = time.perf_counter()
            for offset in range(0, len(events), batch):
                writer.append_many(events[offset : offset + batch])
            elapsed = time.perf_counter() - started
        out[f"batch{batch}_events_per_s"] = len(events) / elapsed

    log_dir = work / "append-nofsync"
    with open_writer(log_dir, fsync=False) as writer:
        started = time.perf_counter()
        for item in events[:5_000]:
            writer.append(item)
        out["nofsync_events_per_s"] = 5_000 / (time.perf_counter() - started)
    return out


def build_log(log_dir: Path, events: int) -> dict[str, float]:
    start = datetime(2025, 1, 1, tzinfo=UTC)
    step = timedelta(days=7) / events  # a week of audit traffic: several day rotations
    clock = StepClock(start)
    stream = synthetic_events(events, start, step)
    started = time.perf_counter()
    with open_writer(log_dir, clock=clock) as writer:
        written = 0
        while written < events:
            size = min(BATCH_FOR_BULK_LOAD, events - written)
            batch = [next(stream) for _ in range(size)]
            clock.now = start + step * written
            writer.append_many(batch)
            written += size
    elapsed = time.perf_counter() - started
    size_bytes = sum(p.stat().st_size for p in log_dir.glob("audit-*.jsonl"))
    return {
        "load_s": elapsed,
        "load_events_per_s": events / elapsed,
        "log_mib": size_bytes / 2**20,
        "files": float(len(list(log_dir.glob("audit-*.jsonl")))),
    }


def bench_queries(log_dir: Path) -> dict[str, dict[str, float]]:
    out = {}
    for kind in ("trade", "config_change", "halt"):
        flt = AuditFilter.build(event_type=kind)
        query(log_dir, flt, limit=100)  # warm the page cache: we measure the code, not the disk
        samples = []
        found = 0
        for _ in range(QUERY_REPEATS):
            started = time.perf_counter()
            found = len(query(log_dir, flt, limit=100))
            samples.append((time.perf_counter() - started) * 1000)
        out[kind] = {
            "median_ms": statistics.median(samples),
            "p95_ms": _percentile(samples, 0.95),
            "returned": float(found),
        }
    return out


def run(
    results: dict[str, Any] | None = None,
    *,
    events: int = 1_000_000,
    work_dir: Path | None = None,
    keep: bool = False,
) -> str:
    """Run the audit benchmark; store numbers in results["audit"]; return the markdown."""
    base = Path(tempfile.mkdtemp(prefix="audit-bench-", dir=work_dir))
    try:
        append = bench_append(base)
        log_dir = base / "log"
        load = build_log(log_dir, events)
        open_s, _ = _timed(lambda: open_writer(log_dir).close())
        queries = bench_queries(log_dir)
        summary_s, _ = _timed(lambda: summary(log_dir))
        verify_s, verdict = _timed(lambda: verify_log(log_dir))
        if not verdict.ok:
            raise RuntimeError(f"verify failed on the generated log: {verdict.summary()}")
        jobs = os.cpu_count() or 1
        verify_parallel_s, verdict = _timed(lambda: verify_log(log_dir, jobs=jobs))
        if not verdict.ok:
            raise RuntimeError(f"verify --jobs failed on the generated log: {verdict.summary()}")
    finally:
        if not keep:
            shutil.rmtree(base, ignore_errors=True)

    audit = {
        "events": events,
        "append": append,
        "load": load,
        "writer_open_s": open_s,
        "query_latest_100": queries,
        "summary_s": summary_s,
        "verify_s": verify_s,
        "verify_events_per_s": events / verify_s,
        "verify_jobs": jobs,
        "verify_parallel_s": verify_parallel_s,
    }
    if results is not None:
        results["audit"] = audit
    return to_markdown(audit, base)


def to_markdown(audit: dict[str, Any], base: Path) -> str:
    append, load, queries = audit["append"], audit["load"], audit["query_latest_100"]
    events = audit["events"]
    rows = [
        (
            "append, 1 event per fsync",
            f"{append['single_events_per_s']:,.0f} events/s "
            f"(p50 {append['single_p50_ms']:.2f} ms, p99 {append['single_p99_ms']:.2f} ms)",
        ),
        ("append_many, 100 per fsync", f"{append['batch100_events_per_s']:,.0f} events/s"),
        ("append_many, 1,000 per fsync", f"{append['batch1000_events_per_s']:,.0f} events/s"),
        (
            "append, 1 event per call, no fsync (reference only)",
            f"{append['nofsync_events_per_s']:,.0f} events/s",
        ),
        (
            f"bulk load of {events:,} events (10,000 per fsync)",
            f"{load['load_s']:.1f} s ({load['load_events_per_s']:,.0f} events/s), "
            f"{load['log_mib']:.0f} MiB in {load['files']:.0f} files",
        ),
        (
            "writer open on that log (recovery + dedup window)",
            f"{audit['writer_open_s'] * 1000:.0f} ms",
        ),
    ]
    for kind, share in (("trade", "60%"), ("config_change", "3%"), ("halt", "0.1%")):
        q = queries[kind]
        verdict = "ok" if q["p95_ms"] < QUERY_GOAL_MS else f"over the {QUERY_GOAL_MS:.0f} ms goal"
        rows.append(
            (
                f"query 100 most recent `{kind}` ({share} of events)",
                f"median {q['median_ms']:.1f} ms, p95 {q['p95_ms']:.1f} ms ({verdict})",
            )
        )
    rows += [
        ("summary (all events)", f"{audit['summary_s'] * 1000:.0f} ms"),
        (
            f"verify {events:,} events, 1 process",
            f"{audit['verify_s']:.1f} s ({audit['verify_events_per_s']:,.0f} events/s)",
        ),
        (
            f"verify {events:,} events, {audit['verify_jobs']} processes (`--jobs`)",
            f"{audit['verify_parallel_s']:.1f} s",
        ),
    ]
    lines = ["| audit log | result |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    lines.append("")
    lines.append(
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs, scratch dir {base.parent} "
        f"({_filesystem(base.parent)}); queries {QUERY_REPEATS}x each on a warm page cache."
    )
    return "\n".join(lines)


def _filesystem(path: Path) -> str:
    """Filesystem type of `path`, from /proc/mounts (fsync cost depends on it)."""
    best, fs = "", "unknown filesystem"
    try:
        resolved = str(path.resolve())
        for entry in Path("/proc/mounts").read_text().splitlines():
            fields = entry.split()
            mount = fields[1]
            if resolved.startswith(mount) and len(mount) > len(best):
                best, fs = mount, fields[2]
    except OSError:
        pass
    return fs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--dir", type=Path, default=None, help="scratch parent directory")
    parser.add_argument("--keep", action="store_true", help="keep the generated logs")
    args = parser.parse_args(argv)
    print(run(events=args.events, work_dir=args.dir, keep=args.keep))
    return 0


if __name__ == "__main__":
    sys.exit(main())
