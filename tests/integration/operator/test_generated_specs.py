"""1,000 generated specs against the real API server: whatever it accepts, the operator's
shared validator and the bot's config parser accept too (so nothing the API server lets
through can stop a healthy bot or crash-loop a new one).

Specs are built near every boundary the API states (bounds, enums, per-profile parameters,
cross-parameter rules, quote currencies) plus plain junk, and sent as server-side dry runs
through the CRD schema and the chart's admission policies. The stored form the API server
returns is what the operator and the bot would read.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes import client
from pydantic import ValidationError

from tests.integration.operator.harness import Bots, bot_manifest
from tradingbot.config import ConfigError, parse_tradingbot
from tradingbot_api.constants import API_GROUP, PLURAL, VERSION
from tradingbot_api.models import TradingBotSpec, validation_messages
from tradingbot_api.params import PROFILES, all_param_specs, param_names
from tradingbot_api.risk import _RISK_BOUNDS

EXAMPLES = 1000


def _around(low: float | None, high: float | None, integer: bool) -> st.SearchStrategy[Any]:
    """Mostly values inside the bounds; also on, just outside and plain junk."""
    edges: list[Any] = []
    for bound in (low, high):
        if bound is not None:
            step = 1 if integer else 1e-6
            edges += [bound, bound - step, bound + step]
    lo = -(10**6) if low is None else low
    hi = 10**6 if high is None else min(high, 10**12)
    if integer:
        edges = [int(e) for e in edges if abs(e) < 2**62]
        inside: st.SearchStrategy[Any] = st.integers(int(lo), int(hi))
    else:
        inside = st.floats(lo, hi, allow_nan=False, allow_infinity=False)
    junk = st.sampled_from(["1", True, None, -1])
    return st.one_of(inside, inside, inside, st.sampled_from(edges or [0]), junk)


PARAMS = all_param_specs()


def _param_value(name: str) -> st.SearchStrategy[Any]:
    spec = PARAMS.get(name)
    if spec is None:
        return st.one_of(st.integers(0, 10), st.text(max_size=5))
    if spec.kind is str:
        return st.one_of(
            st.sampled_from(spec.choices), st.sampled_from(spec.choices), st.text(max_size=20)
        )
    return _around(spec.minimum, spec.maximum, spec.kind is int)


def _params(profile: str) -> st.SearchStrategy[dict[str, Any]]:
    own = list(param_names(profile)) if profile in PROFILES else []
    names = st.lists(
        st.sampled_from(own * 6 + [*PARAMS, "fast"]) if own else st.sampled_from([*PARAMS]),
        max_size=5,
        unique=True,
    )
    return names.flatmap(lambda chosen: st.fixed_dictionaries({n: _param_value(n) for n in chosen}))


def _risk() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {},
        optional={
            name: _around(low, high, kind is int)
            for name, (kind, low, high) in _RISK_BOUNDS.items()
        },
    )


GOOD_SYMBOLS = ["BTC/USDT", "ETH/USDT", "DOGE/USDT", "SOL/USDT"]
BAD_SYMBOLS = ["ETH/EUR", "btc/usdt", "USDT/USDT", "BTCUSDT"]


def _often(good: list[Any], bad: list[Any]) -> st.SearchStrategy[Any]:
    return st.sampled_from(good * 6 + bad)


@st.composite
def specs(draw: st.DrawFn) -> dict[str, Any]:
    profile = draw(_often(list(PROFILES), ["yolo"]))
    mode = draw(_often(["paper", "paper", None, "sandbox"], ["live", "real"]))
    exchange: dict[str, Any] = {
        "id": draw(_often(["binance", "kraken"], ["notanexchange", "Binance"]))
    }
    if mode is not None:
        exchange["mode"] = mode
    if mode in ("sandbox", "live") or draw(st.integers(0, 9)) == 0:
        exchange["credentialsSecretRef"] = {"name": draw(_often(["keys"], ["Bad_Name"]))}
    symbols = draw(st.lists(_often(GOOD_SYMBOLS, BAD_SYMBOLS), min_size=1, max_size=4))
    if draw(st.integers(0, 9)) > 0:
        symbols = list(dict.fromkeys(symbols))
    spec: dict[str, Any] = {"profile": profile, "exchange": exchange, "symbols": symbols}
    if draw(st.booleans()):
        spec["strategy"] = {"params": draw(_params(profile))}
    if draw(st.booleans()):
        spec["risk"] = draw(_risk())
    if draw(st.booleans()):
        spec["restartPolicy"] = draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "coalesceSeconds": _around(0, 3600, True),
                    "maxAttempts": _around(1, 100, True),
                    "gracePeriodSeconds": _around(1, 3600, True),
                    "maxRestartsPerHour": _around(1, 3600, True),
                },
            )
        )
    if draw(st.integers(0, 3)) == 0:
        spec["suspend"] = draw(_often([True, False], ["yes"]))
    return spec


def test_whatever_the_api_server_accepts_the_operator_and_the_bot_accept(
    bots: Bots, core_api: client.CoreV1Api
) -> None:
    core_api.create_namespaced_secret(
        bots.namespace,
        client.V1Secret(metadata=client.V1ObjectMeta(name="keys"), string_data={"apiKey": "a"}),
    )
    outcomes = {"accepted": 0, "rejected": 0}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(spec=specs())
    def check(spec: dict[str, Any]) -> None:
        try:
            stored = bots.custom.create_namespaced_custom_object(
                API_GROUP,
                VERSION,
                bots.namespace,
                PLURAL,
                bot_manifest("generated", spec),
                dry_run="All",
            )
        except client.ApiException as err:
            assert err.status in (403, 422), err.body  # refused, never a server error
            outcomes["rejected"] += 1
            return
        outcomes["accepted"] += 1
        try:
            TradingBotSpec.from_dict(stored["spec"])
        except ValidationError as exc:
            pytest.fail(f"the API server stored {stored['spec']} but: {validation_messages(exc)}")
        try:
            parse_tradingbot(stored)
        except ConfigError as exc:
            pytest.fail(f"the API server stored {stored['spec']} but the bot says: {exc}")

    check()
    # Both sides of the boundary were exercised, not just one.
    assert outcomes["accepted"] >= EXAMPLES // 20, outcomes
    assert outcomes["rejected"] >= EXAMPLES // 20, outcomes
