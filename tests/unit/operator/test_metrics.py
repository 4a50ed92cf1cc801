"""The operator's metrics endpoint survives a retried start-up."""

from __future__ import annotations

import socket
import urllib.request

from tradingbot_operator.metrics import OperatorMetrics


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serving_twice_serves_once() -> None:
    # kopf runs a failed start-up activity again; its second call must not die on
    # "address already in use" from the first one's server.
    metrics = OperatorMetrics()
    port = free_port()
    metrics.serve(port, "127.0.0.1")
    metrics.serve(port, "127.0.0.1")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        assert b"# TYPE tradingbot_operator_restarts_total counter" in response.read()
