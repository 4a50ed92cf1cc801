"""The config hash: what restarts a bot and what must not."""

from __future__ import annotations

import copy

import pytest

from tests.integration.invalid_specs import VALID_BASE_SPEC
from tradingbot_api.constants import SPEC_DEFAULTS
from tradingbot_operator.hashing import changed_fields, config_hash, restart_token
from tradingbot_operator.reconcile_gather import spec_changes


def h(spec: dict, annotations: dict | None = None) -> str:
    return config_hash(spec, annotations or {}, SPEC_DEFAULTS)


def edited(**paths: object) -> dict:
    spec = copy.deepcopy(VALID_BASE_SPEC)
    for path, value in paths.items():
        node = spec
        *parents, leaf = path.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return spec


@pytest.mark.parametrize(
    "path,value",
    [
        ("profile", "meme"),
        ("symbols", ["BTC/USDT"]),
        ("risk__stopLossPct", 5.0),
        ("strategy__params", {"window": 20}),
        ("image", "registry.example/bot:2"),
        ("restartPolicy__gracePeriodSeconds", 60),
        ("exchange__id", "kraken"),
    ],
)
def test_fields_that_shape_the_pod_change_the_hash(path: str, value: object) -> None:
    assert h(edited(**{path: value})) != h(VALID_BASE_SPEC)


@pytest.mark.parametrize(
    "path,value",
    [
        ("suspend", True),
        ("restartPolicy__coalesceSeconds", 30),
        ("restartPolicy__maxAttempts", 9),
        ("restartPolicy__maxRestartsPerHour", 2),
    ],
)
def test_fields_that_only_tune_the_operator_do_not(path: str, value: object) -> None:
    assert h(edited(**{path: value})) == h(VALID_BASE_SPEC)


def test_spelling_out_a_default_changes_nothing() -> None:
    """A later API version that adds a defaulted field must not restart the fleet."""
    bare = copy.deepcopy(VALID_BASE_SPEC)
    del bare["restartPolicy"]
    del bare["state"]
    bare["exchange"].pop("mode")
    assert h(bare) == h(VALID_BASE_SPEC)


def test_key_order_does_not_matter() -> None:
    reordered = dict(reversed(list(copy.deepcopy(VALID_BASE_SPEC).items())))
    assert h(reordered) == h(VALID_BASE_SPEC)


def test_a_restart_annotation_changes_the_hash_and_the_same_value_does_not_again() -> None:
    first = h(VALID_BASE_SPEC, {"trading.r7.dev/restartedAt": "2026-11-29T10:00:00Z"})
    assert first != h(VALID_BASE_SPEC)
    assert first == h(
        VALID_BASE_SPEC, {"trading.r7.dev/restartedAt": "2026-11-29T10:00:00Z", "unrelated": "x"}
    )
    assert restart_token({"kubectl.kubernetes.io/restartedAt": "t"}) == "|t"


def test_changed_fields_are_leaf_paths() -> None:
    new = edited(risk__stopLossPct=5.0, symbols=["BTC/USDT"])
    assert changed_fields(VALID_BASE_SPEC, new) == ["spec.risk.stopLossPct", "spec.symbols"]
    changes = spec_changes(VALID_BASE_SPEC, new)
    assert [(c.path, c.old, c.new) for c in changes] == [
        ("spec.risk.stopLossPct", 2.0, 5.0),
        ("spec.symbols", ["BTC/USDT", "ETH/USDT"], ["BTC/USDT"]),
    ]
