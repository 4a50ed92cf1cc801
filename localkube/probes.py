"""Readiness probes that cannot stall the node: each runs on a worker thread with a deadline.

A frozen container (SIGSTOP, a stuck event loop) accepts TCP connections in the kernel and
never answers; probed inline, it would hold up the node's sync loop for `timeoutSeconds` per
probe, per container. Here a probe that has not answered within its timeout counts as failed
at once, whatever the worker is still doing, so readiness falls within the probe's failure
window: about `periodSeconds * failureThreshold + timeoutSeconds`.
"""

from __future__ import annotations

import concurrent.futures
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

MAX_WORKERS = 16
# A worker's result later than this past its timeout is ignored (it was counted as failed).
LATE_SECONDS = 0.5


@dataclass(frozen=True)
class ProbeSpec:
    url: str | None  # None: no HTTP target (the container is ready while it runs)
    initial_delay: float = 0.0
    period: float = 10.0
    timeout: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3


def probe_spec(
    probe: Mapping[str, Any] | None, ip: str, ports: list[Mapping[str, Any]]
) -> ProbeSpec | None:
    """The container's readinessProbe (API form) against its pod IP; None: no probe."""
    if not probe:
        return None
    get = probe.get("httpGet") or {}
    port = get.get("port")
    if isinstance(port, str):
        port = next((p.get("containerPort") for p in ports if p.get("name") == port), None)
    url = f"http://{ip}:{port}{get.get('path', '/')}" if port else None
    return ProbeSpec(
        url=url,
        initial_delay=float(probe.get("initialDelaySeconds", 0)),
        period=max(float(probe.get("periodSeconds", 10)), 0.1),
        timeout=max(float(probe.get("timeoutSeconds", 1)), 0.1),
        success_threshold=max(int(probe.get("successThreshold", 1)), 1),
        failure_threshold=max(int(probe.get("failureThreshold", 3)), 1),
    )


@dataclass(frozen=True)
class Readiness:
    ready: bool = False
    successes: int = 0
    failures: int = 0


def after_probe(state: Readiness, ok: bool, spec: ProbeSpec) -> Readiness:
    """The kubelet's thresholds: ready after successThreshold successes in a row, not ready
    after failureThreshold failures in a row; in between, the previous verdict stands."""
    if ok:
        successes = state.successes + 1
        ready = state.ready or successes >= spec.success_threshold
        return replace(state, ready=ready, successes=successes, failures=0)
    failures = state.failures + 1
    ready = state.ready and failures < spec.failure_threshold
    return replace(state, ready=ready, successes=0, failures=failures)


def http_get(url: str | None, timeout: float) -> bool:
    if url is None:
        return False
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return bool(200 <= response.status < 400)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _timed_get(url: str | None, timeout: float) -> tuple[bool, float]:
    return http_get(url, timeout), time.monotonic()


@dataclass
class InFlight:
    future: concurrent.futures.Future[tuple[bool, float]]
    deadline: float


class Prober:
    """Runs probes on a bounded pool; the caller polls for results with `collect`."""

    def __init__(self, on_done: Callable[[], None] | None = None) -> None:
        self.pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=MAX_WORKERS, thread_name_prefix="node-probe"
        )
        # Called when a probe answers, so the sync loop reports readiness at once instead of
        # on its next tick (a restarted bot counts as ready as soon as its probe passes).
        self.on_done = on_done

    def submit(self, spec: ProbeSpec, now: float) -> InFlight:
        future = self.pool.submit(_timed_get, spec.url, spec.timeout)
        if self.on_done is not None:
            done = self.on_done
            future.add_done_callback(lambda _f: done())
        return InFlight(future, now + spec.timeout)

    @staticmethod
    def collect(flight: InFlight, now: float) -> bool | None:
        """True/False once the probe has a verdict, None while it may still answer in time."""
        if flight.future.done():
            try:
                ok, finished = flight.future.result()
            except Exception:
                return False
            return ok and finished <= flight.deadline + LATE_SECONDS
        if now > flight.deadline:
            return False  # the worker may still be stuck in a read: do not wait for it
        return None

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
