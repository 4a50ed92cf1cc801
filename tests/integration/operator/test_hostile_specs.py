"""A hostile editor (the chart's trader role, no access to Secrets or pods) submits TradingBots:
each is refused naming the field, or accepted and then running. No operator traceback, and
the valid bots keep running throughout."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client

from tests.integration.invalid_specs import _REMOVE, spec_with
from tests.integration.operator.harness import Bots, Kubelet, OperatorProcess, create_as
from tradingbot_api.constants import (
    ANNOTATION_CHANGED_BY,
    ANNOTATION_HALT,
    ANNOTATION_RESTART_REASON,
    ANNOTATION_RESTARTED_AT,
)

RUNNING = "running"
MIB = 1024 * 1024

# (sentence, spec changes from the base spec, annotations, outcome: RUNNING or the field the
# refusal must name)
HOSTILE: list[tuple[str, dict[str, Any], dict[str, str], str]] = [
    # Secrets, images and the kill switch: what a namespace editor must not reach.
    (
        "a Secret the editor may not read",
        {"exchange.mode": "live", "exchange.credentialsSecretRef": {"name": "exchange-keys"}},
        {},
        "spec.exchange.credentialsSecretRef.name",
    ),
    (
        "a Secret in paper mode",
        {"exchange.credentialsSecretRef": {"name": "exchange-keys"}},
        {},
        "spec.exchange.credentialsSecretRef.name",
    ),
    ("an image of the attacker's choice", {"image": "attacker.example/miner:1"}, {}, "spec.image"),
    (
        "the allowed image, without create on pods",
        {"image": "ghcr.io/r7/tradingbot:0.1.0"},
        {},
        "spec.image",
    ),
    ("created already halted", {}, {ANNOTATION_HALT: "true"}, "tradingbots/halt"),
    ("a kill switch value nobody defined", {}, {ANNOTATION_HALT: "maybe"}, "tradingbots/halt"),
    ("a restart reason of 2,000 characters", {}, {ANNOTATION_RESTART_REASON: "x" * 2000}, "1024"),
    ("a restartedAt of 2,000 characters", {}, {ANNOTATION_RESTARTED_AT: "9" * 2000}, "1024"),
    # Strategy parameters: a closed, typed, bounded set per profile.
    (
        "a parameter no profile knows",
        {"strategy.params": {"fast": 9}},
        {},
        "spec.strategy.params.fast",
    ),
    (
        "a parameter of another profile",
        {"strategy.params": {"slowWindow": 9}},
        {},
        "spec.strategy.params.slowWindow",
    ),
    (
        "a megabyte in a known parameter",
        {"strategy.params": {"timeframe": "x" * MIB}},
        {},
        "spec.strategy.params.timeframe",
    ),
    (
        "a megabyte in an unknown parameter",
        {"strategy.params": {"blob": "x" * MIB}},
        {},
        "spec.strategy.params",
    ),
    (
        "a nested object as a parameter",
        {"strategy.params": {"window": {"a": 1}}},
        {},
        "spec.strategy.params.window",
    ),
    ("a list as the parameters", {"strategy.params": [1, 2]}, {}, "spec.strategy.params"),
    (
        "a fraction of zero",
        {"strategy.params": {"positionFraction": 0}},
        {},
        "spec.strategy.params.positionFraction",
    ),
    (
        "a fraction above one",
        {"strategy.params": {"positionFraction": 1.01}},
        {},
        "spec.strategy.params.positionFraction",
    ),
    ("a window too short", {"strategy.params": {"window": 4}}, {}, "spec.strategy.params.window"),
    (
        "an exit below -entryZ",
        {"strategy.params": {"entryZ": 1.0, "exitZ": -1.5}},
        {},
        "spec.strategy.params.exitZ",
    ),
    (
        "a fee of ten percent",
        {"strategy.params": {"feeRate": 0.1}},
        {},
        "spec.strategy.params.feeRate",
    ),
    ("a negative seed", {"strategy.params": {"seed": -1}}, {}, "spec.strategy.params.seed"),
    # Exchange and symbols.
    ("an exchange ccxt does not know", {"exchange.id": "notanexchange"}, {}, "spec.exchange.id"),
    ("a 41-character exchange id", {"exchange.id": "a" * 41}, {}, "spec.exchange.id"),
    ("a mode that does not exist", {"exchange.mode": "real"}, {}, "spec.exchange.mode"),
    (
        "live mode without credentials",
        {"exchange.mode": "live"},
        {},
        "spec.exchange.credentialsSecretRef",
    ),
    ("twenty-one symbols", {"symbols": [f"C{i}/USDT" for i in range(21)]}, {}, "spec.symbols"),
    (
        "a symbol with a 100-character base",
        {"symbols": ["B" * 100 + "/USDT"]},
        {},
        "spec.symbols[0]",
    ),
    ("the same symbol twice", {"symbols": ["BTC/USDT", "BTC/USDT"]}, {}, "spec.symbols"),
    ("two quote currencies", {"symbols": ["BTC/USDT", "BTC/EUR"]}, {}, "spec.symbols"),
    ("no symbols", {"symbols": []}, {}, "spec.symbols"),
    # Risk and restart policy.
    ("a negative stop-loss", {"risk.stopLossPct": -5}, {}, "spec.risk.stopLossPct"),
    (
        "a thousand open positions",
        {"risk.maxOpenPositions": 1000},
        {},
        "spec.risk.maxOpenPositions",
    ),
    (
        "a notional of a trillion",
        {"risk.maxPositionNotional": 1e12},
        {},
        "spec.risk.maxPositionNotional",
    ),
    (
        "a daily loss above 100 percent",
        {"risk.maxDailyLossPct": 101},
        {},
        "spec.risk.maxDailyLossPct",
    ),
    (
        "a negative coalescing window",
        {"restartPolicy.coalesceSeconds": -1},
        {},
        "spec.restartPolicy.coalesceSeconds",
    ),
    (
        "a grace period of zero",
        {"restartPolicy.gracePeriodSeconds": 0},
        {},
        "spec.restartPolicy.gracePeriodSeconds",
    ),
    (
        "a hundred thousand restarts an hour",
        {"restartPolicy.maxRestartsPerHour": 100000},
        {},
        "spec.restartPolicy.maxRestartsPerHour",
    ),
    ("suspend as a string", {"suspend": "yes"}, {}, "spec.suspend"),
    # Pod overrides and state.
    (
        "thirty-three node selector labels",
        {"nodeSelector": {f"k{i}": "v" for i in range(33)}},
        {},
        "spec.nodeSelector",
    ),
    (
        "a 64-character node selector value",
        {"nodeSelector": {"pool": "v" * 64}},
        {},
        "spec.nodeSelector",
    ),
    (
        "thirty-three tolerations",
        {"tolerations": [{"operator": "Exists"}] * 33},
        {},
        "spec.tolerations",
    ),
    (
        "a resource quantity that is a word",
        {"resources": {"limits": {"memory": "lots"}}},
        {},
        "spec.resources.limits",
    ),
    ("a state backend that does not exist", {"state.backend": "etcd"}, {}, "spec.state.backend"),
    (
        "a volume of a petabyte",
        {"state.backend": "pvc", "state.pvc": {"size": "1000000Ti"}},
        {},
        "spec.state.pvc.size",
    ),
    ("no profile", {"profile": _REMOVE}, {}, "spec.profile"),
    # Accepted, and then running.
    (
        "the smallest spec",
        {"risk": _REMOVE, "strategy": _REMOVE, "restartPolicy": _REMOVE, "state": _REMOVE},
        {},
        RUNNING,
    ),
    (
        "every stable parameter at a bound",
        {
            "strategy.params": {
                "window": 500,
                "entryZ": 10,
                "exitZ": -9.99,
                "positionFraction": 1,
                "feeRate": 0.05,
                "seed": 2**53 - 1,
            }
        },
        {},
        RUNNING,
    ),
    ("twenty symbols", {"symbols": [f"C{i}/USDT" for i in range(20)]}, {}, RUNNING),
    ("a restart reason of 1,024 characters", {}, {ANNOTATION_RESTART_REASON: "r" * 1024}, RUNNING),
    (
        "a reason in several scripts",
        {},
        {ANNOTATION_RESTART_REASON: "Ölpreis ↑ — 价格 🚀"},
        RUNNING,
    ),
    (
        "a change stamp claiming to be the admin",
        {},
        {ANNOTATION_CHANGED_BY: "localkube-admin"},
        RUNNING,
    ),
    (
        "pod overrides at their bounds",
        {
            "nodeSelector": {f"example.com/k{i}": "v" * 63 for i in range(32)},
            "tolerations": [{"key": "example.com/" + "k" * 63, "operator": "Exists"}] * 32,
            "resources": {"limits": {"cpu": "2", "memory": "1Gi"}, "requests": {"cpu": "2"}},
        },
        {},
        RUNNING,
    ),
    # What the CRD once allowed and the pod API refuses.
    (
        "a toleration key the pod API refuses",
        {"tolerations": [{"key": "k" * 317, "operator": "Exists"}]},
        {},
        "spec.tolerations[0].key",
    ),
    (
        "a node selector key with a space",
        {"nodeSelector": {"bad key": "v"}},
        {},
        "spec.nodeSelector",
    ),
    (
        "a node selector value with a slash",
        {"nodeSelector": {"pool": "a/b"}},
        {},
        "spec.nodeSelector",
    ),
    (
        "a request above its limit",
        {"resources": {"limits": {"cpu": "1"}, "requests": {"cpu": "2"}}},
        {},
        "spec.resources.requests",
    ),
    (
        "a GPU for a trading bot",
        {"resources": {"limits": {"nvidia.com/gpu": 1}}},
        {},
        "spec.resources.limits",
    ),
]


def test_the_table_is_large_enough() -> None:
    assert len(HOSTILE) >= 40
    assert sum(outcome == RUNNING for *_, outcome in HOSTILE) >= 5


@pytest.fixture
def steady_bot(operator: OperatorProcess, bots: Bots, kubelet: Kubelet) -> str:
    """A valid bot that must keep running (same pod) whatever the editor submits."""
    bots.create("steady", spec_with({}))
    bots.wait_running_with("steady")
    return str(bots.pods("steady")[0].metadata.uid)


def test_every_hostile_spec_is_refused_naming_the_field_or_runs(
    steady_bot: str,
    operator: OperatorProcess,
    subject: Callable[[str], tuple[client.ApiClient, str]],
    core_api: client.CoreV1Api,
    bots: Bots,
    namespace: str,
) -> None:
    core_api.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="exchange-keys"),
            string_data={"apiKey": "k", "secret": "s"},
        ),
    )
    trader, user = subject("trader")
    running = []
    for i, (sentence, changes, extra, outcome) in enumerate(HOSTILE):
        name = f"hostile-{i}"
        spec = spec_with(changes)
        if outcome == RUNNING:
            created = create_as(trader, namespace, name, spec, **extra)
            assert created["metadata"]["annotations"][ANNOTATION_CHANGED_BY] == user, sentence
            running.append(name)
            continue
        with pytest.raises(client.ApiException) as refused:
            create_as(trader, namespace, name, spec, **extra)
        assert refused.value.status in (403, 422), (sentence, refused.value.status)
        message = json.loads(refused.value.body)["message"]
        assert outcome in message, (sentence, message[:500])
        assert bots.pods(name) == []
    for name in running:
        bots.wait_running_with(name, timeout=60)
    assert [p.metadata.uid for p in bots.pods("steady")] == [steady_bot]
    assert bots.status("steady")["phase"] == "Running"
    assert operator.metric("tradingbot_operator_reconcile_errors_total") == 0
    assert "Traceback" not in operator.logs()
