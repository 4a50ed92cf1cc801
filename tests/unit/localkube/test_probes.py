"""Readiness probes: the kubelet's thresholds, and a frozen target failing on time."""

from __future__ import annotations

import http.server
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from localkube.probes import Prober, ProbeSpec, Readiness, after_probe, probe_spec

SPEC = ProbeSpec(url="http://127.0.0.1:1/", success_threshold=2, failure_threshold=3)


@pytest.mark.parametrize(
    ("start", "results", "ready"),
    [
        (Readiness(), [True], False),  # one success of two needed
        (Readiness(), [True, True], True),
        (Readiness(), [True, False, True], False),  # successes must be in a row
        (Readiness(ready=True), [False, False], True),  # two failures of three tolerated
        (Readiness(ready=True), [False, False, False], False),
        (Readiness(ready=True), [False, False, True, False, False], True),
        (Readiness(), [False] * 10, False),
    ],
)
def test_after_probe_applies_the_thresholds(
    start: Readiness, results: list[bool], ready: bool
) -> None:
    state = start
    for ok in results:
        state = after_probe(state, ok, SPEC)
    assert state.ready is ready


def test_probe_spec_resolves_a_named_port_and_defaults() -> None:
    spec = probe_spec(
        {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 1},
        "127.0.0.9",
        [{"name": "http", "containerPort": 8080}],
    )
    assert spec == ProbeSpec(url="http://127.0.0.9:8080/readyz", period=1.0)
    assert probe_spec(None, "127.0.0.9", []) is None
    unnamed = probe_spec({"httpGet": {"port": "nope"}}, "127.0.0.9", [])
    assert unnamed is not None and unnamed.url is None  # never passes


@pytest.fixture
def frozen_port() -> Iterator[int]:
    """A listening socket that never accepts: connections complete in the kernel's backlog
    and no byte ever comes back, as with a SIGSTOPped server."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    yield sock.getsockname()[1]
    sock.close()


@pytest.fixture
def live_port() -> Iterator[int]:
    class Ok(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Ok)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def verdict(prober: Prober, spec: ProbeSpec, limit: float = 5.0) -> tuple[bool, float]:
    started = time.monotonic()
    flight = prober.submit(spec, started)
    while (result := prober.collect(flight, time.monotonic())) is None:
        assert time.monotonic() - started < limit
        time.sleep(0.01)
    return result, time.monotonic() - started


def test_a_frozen_target_fails_within_its_timeout_and_a_live_one_passes(
    frozen_port: int, live_port: int
) -> None:
    prober = Prober()
    try:
        ok, took = verdict(prober, ProbeSpec(url=f"http://127.0.0.1:{frozen_port}/", timeout=0.3))
        assert not ok and took < 1.5
        ok, _ = verdict(prober, ProbeSpec(url=f"http://127.0.0.1:{live_port}/", timeout=2))
        assert ok
        ok, _ = verdict(prober, ProbeSpec(url=None))
        assert not ok
    finally:
        prober.close()
