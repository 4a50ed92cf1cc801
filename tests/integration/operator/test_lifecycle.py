"""suspend, resume, halt and deletion on the real API server."""

from __future__ import annotations

import time

from tests import kube
from tests.integration.operator.harness import Bots, Kubelet, OperatorProcess, PodCensus
from tests.integration.operator.test_restarts import start_bot


def test_suspend_stops_and_resume_starts_without_counting_restarts(
    bots: Bots, operator: OperatorProcess, kubelet: Kubelet, census: PodCensus
) -> None:
    start_bot(bots, coalesceSeconds=0)
    bots.patch("bot-a", {"spec": {"suspend": True}})
    bots.wait_phase("bot-a", "Stopped")
    assert bots.pods("bot-a") == []
    bots.patch("bot-a", {"spec": {"suspend": False}})
    status = bots.wait_running_with("bot-a")
    assert status.get("restarts", {}).get("total", 0) == 0
    reasons = bots.wait_reason("bot-a", "Resumed")
    assert reasons.index("Stopped") < reasons.index("Resumed")
    assert operator.metric("tradingbot_operator_stops_total", bot="bot-a") == 1


def test_halt_stops_at_once_ignoring_the_coalescing_window(
    bots: Bots, operator: OperatorProcess, kubelet: Kubelet, census: PodCensus
) -> None:
    start_bot(bots, coalesceSeconds=600)
    started = time.monotonic()
    bots.annotate("bot-a", **{"trading.r7.dev/halt": "true"})
    bots.wait_phase("bot-a", "Halted", timeout=10)
    kube.wait_for(lambda: bots.pods("bot-a") == [], timeout=10, message="pod gone")
    assert time.monotonic() - started < 600
    bots.wait_reason("bot-a", "Halted")
    halted = [e for e in bots.events("bot-a") if e.reason == "Halted"]
    assert halted and halted[0].type == "Warning"
    bots.annotate("bot-a", **{"trading.r7.dev/halt": None})
    bots.wait_running_with("bot-a")


def test_deleting_a_bot_stops_it_keeps_its_state_then_releases_the_object(
    bots: Bots, operator: OperatorProcess, kubelet: Kubelet, census: PodCensus
) -> None:
    start_bot(bots)
    assert bots.core.read_namespaced_config_map("bot-a-state", bots.namespace)
    bots.delete("bot-a")

    def gone() -> bool:
        try:
            bots.get("bot-a")
        except Exception:
            return True
        return False

    kube.wait_for(gone, timeout=30, message="TradingBot released by its finalizer")
    assert bots.pods("bot-a") == []
    state = bots.core.read_namespaced_config_map("bot-a-state", bots.namespace)
    assert state.metadata.owner_references is None  # survives garbage collection
    bots.wait_reason("bot-a", "Stopped")
