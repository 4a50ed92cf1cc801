"""Specs the API server must reject, and the field its error must name.

Each entry of :data:`INVALID_SPECS` is ``(sentence_name, spec, expected_field)``: creating a
TradingBot with that ``spec`` must fail (HTTP 422) with an error message containing
``expected_field``, the path the API server reports (``spec.exchange.credentialsSecretRef``,
``spec.symbols[0]``...). Every spec differs from :data:`VALID_BASE_SPEC` in exactly one way, so
a failure points at one rule of the CRD.

:data:`INVALID_UPDATES` holds edits that are only wrong as edits (immutable fields, shrinking
storage): create with ``old_spec``, then updating to ``new_spec`` must fail naming the field.
:data:`VALID_SPECS` holds edge cases that must be accepted, so that the rules are not stricter
than intended.

The unit tests also run every entry through the pydantic models, which must reject (or
accept) them the same way.
"""

from __future__ import annotations

import copy
from typing import Any

Spec = dict[str, Any]

VALID_BASE_SPEC: Spec = {
    "profile": "stable",
    "exchange": {"id": "binance", "mode": "paper"},
    "symbols": ["BTC/USDT", "ETH/USDT"],
    "strategy": {"params": {}},
    "risk": {
        "maxPositionNotional": 1000,
        "maxOpenPositions": 2,
        "stopLossPct": 2.0,
        "takeProfitPct": 3.0,
        "maxDailyLossPct": 3.0,
    },
    "suspend": False,
    "state": {"backend": "configmap"},
    "restartPolicy": {
        "coalesceSeconds": 2,
        "maxAttempts": 5,
        "gracePeriodSeconds": 30,
        "maxRestartsPerHour": 10,
    },
}

_REMOVE = object()


def spec_with(changes: dict[str, Any], base: Spec = VALID_BASE_SPEC) -> Spec:
    """A deep copy of ``base`` with dotted paths set (or removed when the value is ``_REMOVE``).

    Intermediate objects are created as needed: ``{"state.pvc.size": "1Gi"}``.
    """
    spec = copy.deepcopy(base)
    for path, value in changes.items():
        *parents, leaf = path.split(".")
        node = spec
        for key in parents:
            node = node.setdefault(key, {})
        if value is _REMOVE:
            node.pop(leaf, None)
        else:
            node[leaf] = copy.deepcopy(value)
    return spec


def _live() -> dict[str, Any]:
    return {"exchange.mode": "live", "exchange.credentialsSecretRef": {"name": "binance-keys"}}


INVALID_SPECS: list[tuple[str, Spec, str]] = [
    # profile
    ("a spec without a profile", spec_with({"profile": _REMOVE}), "spec.profile"),
    ("an unknown profile", spec_with({"profile": "yolo"}), "spec.profile"),
    ("a profile in upper case", spec_with({"profile": "Stable"}), "spec.profile"),
    # exchange
    ("a spec without an exchange", spec_with({"exchange": _REMOVE}), "spec.exchange"),
    ("an exchange without an id", spec_with({"exchange.id": _REMOVE}), "spec.exchange.id"),
    ("an exchange id in upper case", spec_with({"exchange.id": "Binance"}), "spec.exchange.id"),
    ("an exchange id with a space", spec_with({"exchange.id": "bin ance"}), "spec.exchange.id"),
    ("an unknown exchange mode", spec_with({"exchange.mode": "real"}), "spec.exchange.mode"),
    (
        "live mode without credentials",
        spec_with({"exchange.mode": "live"}),
        "spec.exchange.credentialsSecretRef",
    ),
    (
        "sandbox mode without credentials",
        spec_with({"exchange.mode": "sandbox"}),
        "spec.exchange.credentialsSecretRef",
    ),
    (
        "a credentials reference without a name",
        spec_with({**_live(), "exchange.credentialsSecretRef": {}}),
        "spec.exchange.credentialsSecretRef.name",
    ),
    (
        "a credentials secret name that is not a DNS name",
        spec_with({**_live(), "exchange.credentialsSecretRef": {"name": "Binance_Keys"}}),
        "spec.exchange.credentialsSecretRef.name",
    ),
    # symbols
    ("a spec without symbols", spec_with({"symbols": _REMOVE}), "spec.symbols"),
    ("an empty symbol list", spec_with({"symbols": []}), "spec.symbols"),
    (
        "more than twenty symbols",
        spec_with({"symbols": [f"C{i}/USDT" for i in range(21)]}),
        "spec.symbols",
    ),
    ("a duplicated symbol", spec_with({"symbols": ["BTC/USDT", "BTC/USDT"]}), "spec.symbols"),
    ("a symbol without a quote currency", spec_with({"symbols": ["BTCUSDT"]}), "spec.symbols[0]"),
    ("a symbol in lower case", spec_with({"symbols": ["btc/usdt"]}), "spec.symbols[0]"),
    ("a symbol with an empty base", spec_with({"symbols": ["/USDT"]}), "spec.symbols[0]"),
    (
        "a symbol whose base and quote are the same",
        spec_with({"symbols": ["ETH/USDT", "USDT/USDT"]}),
        "spec.symbols[1]",
    ),
    ("a symbol that is not a string", spec_with({"symbols": [42]}), "spec.symbols[0]"),
    # strategy
    (
        "strategy params that are a list",
        spec_with({"strategy.params": ["fast", "slow"]}),
        "spec.strategy.params",
    ),
    (
        "a strategy parameter no profile knows",
        spec_with({"strategy.params": {"fast": 9}}),
        "spec.strategy.params",
    ),
    (
        "a parameter of another profile",
        spec_with({"strategy.params": {"fastWindow": 9}}),
        "spec.strategy.params.fastWindow",
    ),
    (
        "a nested object as a parameter",
        spec_with({"strategy.params": {"window": {"size": 20}}}),
        "spec.strategy.params.window",
    ),
    (
        "a megabyte of strategy parameter",
        spec_with({"strategy.params": {"timeframe": "1m" * 550_000}}),
        "spec.strategy.params.timeframe",
    ),
    (
        "a timeframe that does not exist",
        spec_with({"strategy.params": {"timeframe": "7m"}}),
        "spec.strategy.params.timeframe",
    ),
    (
        "a position fraction above one",
        spec_with({"strategy.params": {"positionFraction": 1.5}}),
        "spec.strategy.params.positionFraction",
    ),
    (
        "an integer parameter given as a string",
        spec_with({"strategy.params": {"window": "20"}}),
        "spec.strategy.params.window",
    ),
    (
        "an exit above the entry deviation",
        spec_with({"strategy.params": {"entryZ": 1.0, "exitZ": -2.0}}),
        "spec.strategy.params.exitZ",
    ),
    (
        "a fast window not below the default slow window",
        spec_with({"profile": "medium", "strategy.params": {"fastWindow": 40}}),
        "spec.strategy.params.fastWindow",
    ),
    (
        "an exit threshold above the entry threshold",
        spec_with({"profile": "volatile", "strategy.params": {"exitThresholdPct": 5.0}}),
        "spec.strategy.params.exitThresholdPct",
    ),
    # exchange ids come from ccxt's list
    (
        "an exchange ccxt does not know",
        spec_with({"exchange.id": "notanexchange"}),
        "spec.exchange.id",
    ),
    (
        "symbols in two quote currencies",
        spec_with({"symbols": ["BTC/USDT", "ETH/EUR"]}),
        "spec.symbols",
    ),
    # risk
    (
        "a zero take-profit",
        spec_with({"risk.takeProfitPct": 0}),
        "spec.risk.takeProfitPct",
    ),
    (
        "a negative take-profit",
        spec_with({"risk.takeProfitPct": -5}),
        "spec.risk.takeProfitPct",
    ),
    (
        "a take-profit over 1000 percent",
        spec_with({"risk.takeProfitPct": 1000.5}),
        "spec.risk.takeProfitPct",
    ),
    ("a 100 percent stop-loss", spec_with({"risk.stopLossPct": 100}), "spec.risk.stopLossPct"),
    ("a zero stop-loss", spec_with({"risk.stopLossPct": 0}), "spec.risk.stopLossPct"),
    (
        "a daily loss limit over 100 percent",
        spec_with({"risk.maxDailyLossPct": 150}),
        "spec.risk.maxDailyLossPct",
    ),
    (
        "a zero daily loss limit",
        spec_with({"risk.maxDailyLossPct": 0}),
        "spec.risk.maxDailyLossPct",
    ),
    (
        "zero open positions allowed",
        spec_with({"risk.maxOpenPositions": 0}),
        "spec.risk.maxOpenPositions",
    ),
    (
        "a fractional number of open positions",
        spec_with({"risk.maxOpenPositions": 1.5}),
        "spec.risk.maxOpenPositions",
    ),
    (
        "a zero position notional",
        spec_with({"risk.maxPositionNotional": 0}),
        "spec.risk.maxPositionNotional",
    ),
    (
        "a position notional given as a string",
        spec_with({"risk.maxPositionNotional": "1000"}),
        "spec.risk.maxPositionNotional",
    ),
    # suspend and pod overrides
    ("suspend given as a string", spec_with({"suspend": "yes"}), "spec.suspend"),
    ("an image with a space", spec_with({"image": "tradingbot :1.0"}), "spec.image"),
    (
        "a resource limit that is not a quantity",
        spec_with({"resources": {"limits": {"cpu": "lots"}}}),
        "spec.resources.limits.cpu",
    ),
    (
        "a negative resource request",
        spec_with({"resources": {"requests": {"memory": -1}}}),
        "spec.resources.requests.memory",
    ),
    (
        "a node selector value longer than a label value",
        spec_with({"nodeSelector": {"pool": "x" * 64}}),
        "spec.nodeSelector.pool",
    ),
    (
        "a toleration with an unknown operator",
        spec_with({"tolerations": [{"key": "dedicated", "operator": "In"}]}),
        "spec.tolerations[0].operator",
    ),
    (
        "a toleration with a value and operator Exists",
        spec_with({"tolerations": [{"key": "dedicated", "operator": "Exists", "value": "x"}]}),
        "spec.tolerations[0].value",
    ),
    (
        "a toleration without a key and operator Equal",
        spec_with({"tolerations": [{"operator": "Equal", "value": "x"}]}),
        "spec.tolerations[0].operator",
    ),
    (
        "a toleration with seconds but not NoExecute",
        spec_with(
            {
                "tolerations": [
                    {"key": "k", "value": "v", "effect": "NoSchedule", "tolerationSeconds": 5}
                ]
            }
        ),
        "spec.tolerations[0].tolerationSeconds",
    ),
    # state
    ("an unknown state backend", spec_with({"state.backend": "s3"}), "spec.state.backend"),
    (
        "a pvc section with the configmap backend",
        spec_with({"state.pvc": {"size": "1Gi"}}),
        "spec.state.pvc",
    ),
    ("the pvc backend without a pvc", spec_with({"state.backend": "pvc"}), "spec.state.pvc"),
    (
        "a pvc without a size",
        spec_with({"state.backend": "pvc", "state.pvc": {"storageClassName": "fast"}}),
        "spec.state.pvc.size",
    ),
    (
        "a pvc size without a unit",
        spec_with({"state.backend": "pvc", "state.pvc": {"size": "10"}}),
        "spec.state.pvc.size",
    ),
    (
        "a zero pvc size",
        spec_with({"state.backend": "pvc", "state.pvc": {"size": "0Gi"}}),
        "spec.state.pvc.size",
    ),
    (
        "a storage class that is not a DNS name",
        spec_with(
            {"state.backend": "pvc", "state.pvc": {"size": "1Gi", "storageClassName": "Fast_SSD"}}
        ),
        "spec.state.pvc.storageClassName",
    ),
    # restart policy
    (
        "a negative coalescing window",
        spec_with({"restartPolicy.coalesceSeconds": -1}),
        "spec.restartPolicy.coalesceSeconds",
    ),
    (
        "a coalescing window over an hour",
        spec_with({"restartPolicy.coalesceSeconds": 3601}),
        "spec.restartPolicy.coalesceSeconds",
    ),
    (
        "zero restart attempts",
        spec_with({"restartPolicy.maxAttempts": 0}),
        "spec.restartPolicy.maxAttempts",
    ),
    (
        "a zero grace period",
        spec_with({"restartPolicy.gracePeriodSeconds": 0}),
        "spec.restartPolicy.gracePeriodSeconds",
    ),
    (
        "zero restarts per hour",
        spec_with({"restartPolicy.maxRestartsPerHour": 0}),
        "spec.restartPolicy.maxRestartsPerHour",
    ),
    (
        "a grace period given as a string",
        spec_with({"restartPolicy.gracePeriodSeconds": "30"}),
        "spec.restartPolicy.gracePeriodSeconds",
    ),
]

_PVC_SPEC = spec_with(
    {"state.backend": "pvc", "state.pvc": {"size": "2Gi", "storageClassName": "standard"}}
)

INVALID_UPDATES: list[tuple[str, Spec, Spec, str]] = [
    (
        "changing the exchange",
        VALID_BASE_SPEC,
        spec_with({"exchange.id": "kraken"}),
        "spec.exchange.id",
    ),
    (
        "switching from paper to live",
        VALID_BASE_SPEC,
        spec_with(_live()),
        "spec.exchange.mode",
    ),
    (
        "switching the state backend",
        VALID_BASE_SPEC,
        spec_with({"state.backend": "pvc", "state.pvc": {"size": "1Gi"}}),
        "spec.state.backend",
    ),
    (
        "changing the storage class",
        _PVC_SPEC,
        spec_with({"state.pvc.storageClassName": "fast"}, base=_PVC_SPEC),
        "spec.state.pvc.storageClassName",
    ),
    (
        "shrinking the state volume",
        _PVC_SPEC,
        spec_with({"state.pvc.size": "1Gi"}, base=_PVC_SPEC),
        "spec.state.pvc.size",
    ),
]

VALID_SPECS: list[tuple[str, Spec]] = [
    ("the base spec", VALID_BASE_SPEC),
    (
        "the smallest spec",
        {"profile": "meme", "exchange": {"id": "binance"}, "symbols": ["DOGE/USDT"]},
    ),
    ("twenty symbols", spec_with({"symbols": [f"C{i}/USDT" for i in range(20)]})),
    ("live mode with credentials", spec_with(_live())),
    (
        "paper mode with credentials",
        spec_with({"exchange.credentialsSecretRef": {"name": "binance-keys"}}),
    ),
    ("a stop-loss just under 100 percent", spec_with({"risk.stopLossPct": 99.9})),
    ("integer percentages", spec_with({"risk.takeProfitPct": 1000, "risk.maxDailyLossPct": 100})),
    ("no risk section", spec_with({"risk": _REMOVE})),
    ("a coalescing window of zero", spec_with({"restartPolicy.coalesceSeconds": 0})),
    ("the pvc backend", _PVC_SPEC),
    ("a pvc without a storage class", spec_with({"state.backend": "pvc", "state.pvc.size": "1Gi"})),
    (
        "pod overrides",
        spec_with(
            {
                "image": "ghcr.io/r7/tradingbot:0.1.0",  # the allowed image (admission policy)
                "resources": {
                    "limits": {"cpu": "500m", "memory": "256Mi"},
                    "requests": {"cpu": "250m"},
                },
                "nodeSelector": {"kubernetes.io/os": "linux"},
                "tolerations": [
                    {"key": "dedicated", "operator": "Equal", "value": "bots"},
                    {"operator": "Exists"},
                    {
                        "key": "node.kubernetes.io/unreachable",
                        "operator": "Exists",
                        "effect": "NoExecute",
                        "tolerationSeconds": 30,
                    },
                ],
            }
        ),
    ),
    (
        "every stable parameter",
        spec_with(
            {
                "strategy.params": {
                    "timeframe": "1h",
                    "positionFraction": 1,
                    "priceFeed": "auto",
                    "seed": 2**53 - 1,
                    "startingBalance": 5e11,
                    "feeRate": 0,
                    "slippagePct": 5,
                    "window": 500,
                    "entryZ": 10,
                    "exitZ": -9.5,
                }
            }
        ),
    ),
    (
        "medium windows at their bounds",
        spec_with({"profile": "medium", "strategy.params": {"fastWindow": 199, "slowWindow": 200}}),
    ),
    (
        "volatile thresholds crossing zero",
        spec_with(
            {
                "profile": "volatile",
                "strategy.params": {"entryThresholdPct": 0.5, "exitThresholdPct": -100},
            }
        ),
    ),
    (
        "meme breakout parameters",
        spec_with({"profile": "meme", "strategy.params": {"breakoutWindow": 5, "exitWindow": 500}}),
    ),
]
