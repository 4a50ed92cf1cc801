"""The restart protocol on the real API server, with the operator as a separate process."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import pytest

from tests import kube
from tests.integration.invalid_specs import VALID_BASE_SPEC
from tests.integration.operator.harness import Bots, Kubelet, OperatorProcess, PodCensus
from tradingbot_operator.failpoints import POINTS


def base_spec(**restart_policy: int) -> dict:
    spec = copy.deepcopy(VALID_BASE_SPEC)
    spec["restartPolicy"].update(restart_policy)
    return spec


def start_bot(bots: Bots, name: str = "bot-a", **restart_policy: int) -> dict:
    bots.create(name, base_spec(**restart_policy))
    return bots.wait_running_with(name)


def test_first_start_runs_one_pod_with_the_desired_hash(
    bots: Bots, operator: OperatorProcess, kubelet: Kubelet, census: PodCensus
) -> None:
    status = start_bot(bots)
    (pod,) = bots.pods("bot-a")
    assert pod.metadata.annotations["trading.r7.dev/config-hash"] == status["configHash"]
    assert pod.metadata.owner_references[0].kind == "TradingBot"
    assert pod.spec.service_account_name == "tradingbot-bot-a"
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    assert status["observedGeneration"] == 1
    bots.wait_reason("bot-a", "Started")


def test_ten_patches_in_one_second_make_exactly_one_restart(
    bots: Bots, operator: OperatorProcess, kubelet: Kubelet, census: PodCensus
) -> None:
    before = start_bot(bots, coalesceSeconds=2)
    started = time.monotonic()
    for i in range(10):
        bots.patch(
            "bot-a",
            {
                "spec": {
                    "risk": {"maxOpenPositions": 3 + i},
                    "strategy": {"params": {"window": 10 + i}},
                }
            },
        )
        time.sleep(0.08)
    assert time.monotonic() - started < 1.5
    after = kube.wait_for(
        lambda: (
            (s := bots.status("bot-a")).get("restarts", {}).get("total") == 1
            and s.get("phase") == "Running"
            and s
        ),
        timeout=30,
        message="one completed restart",
    )
    time.sleep(3)  # nothing else may follow
    status = bots.status("bot-a")
    assert status["restarts"]["total"] == 1
    assert status["configHash"] != before["configHash"]
    last = after["restarts"]["last"]
    assert last["result"] == "succeeded"
    assert sorted(last["changedFields"]) == [
        "spec.risk.maxOpenPositions",
        "spec.strategy.params.window",
    ]
    assert last["durationSeconds"] >= 0
    reasons = bots.reasons("bot-a")
    assert reasons.count("RestartStarted") == 1
    assert reasons.count("RestartCompleted") == 1
    assert "ConfigChanged" in reasons and "RestartRequested" in reasons
    assert len(census.created["bot-a"]) == 2
    changed = [e for e in bots.events("bot-a") if e.reason == "ConfigChanged"]
    # Each ConfigChanged compares with what the running pod was started with; which
    # intermediate versions the operator observes depends on timing, the last one does not.
    assert all("spec.risk.maxOpenPositions: 2 -> " in e.message for e in changed)
    assert any("spec.risk.maxOpenPositions: 2 -> 12" in e.message for e in changed)
    assert (
        operator.metric("tradingbot_operator_restarts_total", bot="bot-a", result="succeeded") == 1
    )
    # How many intermediate versions the operator saw depends on timing; the metric counts
    # exactly the coalesced changes it recorded.
    assert operator.metric(
        "tradingbot_operator_coalesced_changes_total", bot="bot-a"
    ) == reasons.count("RestartCoalesced")
    assert operator.metric("tradingbot_operator_restart_duration_seconds_count", bot="bot-a") == 1


def test_an_edit_reverted_inside_the_window_restarts_nothing(
    bots: Bots, operator: OperatorProcess, kubelet: Kubelet, census: PodCensus
) -> None:
    start_bot(bots, coalesceSeconds=3)
    bots.patch("bot-a", {"spec": {"symbols": ["BTC/USDT"]}})
    kube.wait_for(lambda: bots.status("bot-a").get("pendingAction"), message="pending")
    bots.patch("bot-a", {"spec": {"symbols": ["BTC/USDT", "ETH/USDT"]}})
    kube.wait_for(
        lambda: not bots.status("bot-a").get("pendingAction"), message="pending cancelled"
    )
    time.sleep(4)
    assert bots.status("bot-a").get("restarts", {}).get("total", 0) == 0
    assert len(census.created["bot-a"]) == 1
    bots.wait_reason("bot-a", "RestartCancelled")


@pytest.mark.parametrize("point", POINTS)
def test_operator_killed_at_each_step_of_a_restart_finishes_it_with_one_pod(
    point: str,
    bots: Bots,
    start_operator: Callable[..., OperatorProcess],
    kubelet: Kubelet,
    census: PodCensus,
) -> None:
    first = start_operator()
    before = start_bot(bots, coalesceSeconds=1)
    first.stop()
    doomed = start_operator(TRADINGBOT_OPERATOR_FAILPOINT=point)
    bots.patch("bot-a", {"spec": {"symbols": ["BTC/USDT", "SOL/USDT"]}})
    kube.wait_for(
        lambda: doomed.exited() is not None, timeout=30, message=f"operator to die at {point}"
    )
    assert doomed.exited() == -9
    start_operator()
    status = bots.wait_running_with("bot-a", timeout=40)
    assert status["configHash"] != before["configHash"]
    pods = bots.pods("bot-a")
    assert len(pods) == 1
    assert pods[0].metadata.annotations["trading.r7.dev/config-hash"] == status["configHash"]
    assert status["restarts"]["total"] == 1


def test_a_kill_at_a_random_moment_during_restarts_never_yields_two_pods(
    bots: Bots,
    start_operator: Callable[..., OperatorProcess],
    kubelet: Kubelet,
    census: PodCensus,
) -> None:
    op = start_operator()
    start_bot(bots, coalesceSeconds=0)
    for i, delay in enumerate((0.0, 0.05, 0.15, 0.3)):
        bots.patch("bot-a", {"spec": {"risk": {"maxOpenPositions": 5 + i}}})
        time.sleep(delay)
        op.kill()
        op = start_operator()
        bots.wait_running_with("bot-a", timeout=40)
        assert len(bots.pods("bot-a")) == 1


def test_the_restart_annotation_restarts_once_and_records_the_reason(
    bots: Bots, operator: OperatorProcess, kubelet: Kubelet, census: PodCensus
) -> None:
    start_bot(bots, coalesceSeconds=1)
    bots.annotate(
        "bot-a",
        **{
            "trading.r7.dev/restartedAt": "2026-11-29T10:00:00Z",
            "trading.r7.dev/restart-reason": "rotate exchange keys",
        },
    )
    status = kube.wait_for(
        lambda: (
            (s := bots.status("bot-a")).get("restarts", {}).get("total") == 1
            and s["phase"] == "Running"
            and s
        ),
        timeout=30,
        message="restart",
    )
    assert status["restarts"]["last"]["reason"] == "rotate exchange keys"
    assert status["restarts"]["last"]["changedFields"] == []
    # The same annotation value again is no new request.
    bots.annotate("bot-a", **{"trading.r7.dev/restartedAt": "2026-11-29T10:00:00Z"})
    time.sleep(3)
    assert bots.status("bot-a")["restarts"]["total"] == 1
    bots.annotate("bot-a", **{"kubectl.kubernetes.io/restartedAt": "2026-11-29T10:05:00Z"})
    kube.wait_for(
        lambda: bots.status("bot-a")["restarts"]["total"] == 2,
        timeout=30,
        message="kubectl rollout-style restart",
    )
    # The reason annotation stays on the bot; it must not label a later config change.
    bots.wait_running_with("bot-a")
    bots.patch("bot-a", {"spec": {"risk": {"maxOpenPositions": 4}}})
    status = kube.wait_for(
        lambda: (s := bots.status("bot-a"))["restarts"]["total"] == 3 and s,
        timeout=30,
        message="config change restart",
    )
    assert status["restarts"]["last"]["reason"] == "config change"


def test_hourly_rate_limit_defers_the_restart_and_says_so(
    bots: Bots, operator: OperatorProcess, kubelet: Kubelet, census: PodCensus
) -> None:
    start_bot(bots, coalesceSeconds=0, maxRestartsPerHour=1)
    bots.patch("bot-a", {"spec": {"risk": {"maxOpenPositions": 3}}})
    kube.wait_for(
        lambda: bots.status("bot-a").get("restarts", {}).get("total") == 1, message="first restart"
    )
    bots.wait_running_with("bot-a")
    bots.patch("bot-a", {"spec": {"risk": {"maxOpenPositions": 4}}})
    pending = kube.wait_for(
        lambda: (bots.status("bot-a").get("pendingAction") or {}).get("notBefore"),
        message="deferred restart",
    )
    assert pending
    bots.wait_reason("bot-a", "RateLimited")
    assert bots.status("bot-a")["restarts"]["total"] == 1
    assert operator.metric("tradingbot_operator_rate_limited_total", bot="bot-a") == 1


def test_a_bot_that_never_becomes_ready_ends_failed_and_degraded(
    bots: Bots,
    start_operator: Callable[..., OperatorProcess],
    kubelet: Kubelet,
    census: PodCensus,
) -> None:
    start_operator("--ready-timeout", "1")
    kubelet.crash = True
    bots.create("bot-a", base_spec(maxAttempts=2))
    status = bots.wait_phase("bot-a", "Failed", timeout=60)
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "AttemptsExhausted"
    # Status is written before the action it records: the delete follows at once.
    kube.wait_for(lambda: bots.pods("bot-a") == [], timeout=10, message="failed pod deleted")
    time.sleep(2)
    assert bots.pods("bot-a") == []  # and no new attempt is started
    kubelet.crash = False
    bots.patch("bot-a", {"spec": {"risk": {"maxOpenPositions": 1}}})
    bots.wait_running_with("bot-a", timeout=30)
