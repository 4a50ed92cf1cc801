"""Invalid TradingBots are rejected by the API server with the field named; nothing runs."""

from __future__ import annotations

import json

import pytest
from kubernetes import client

from tests.integration.invalid_specs import INVALID_SPECS, VALID_SPECS
from tests.integration.operator.harness import Bots


@pytest.mark.parametrize(
    ("sentence", "spec", "field"), INVALID_SPECS, ids=[case[0] for case in INVALID_SPECS]
)
def test_invalid_spec_is_rejected_naming_the_field(
    bots: Bots, sentence: str, spec: dict, field: str
) -> None:
    with pytest.raises(client.ApiException) as rejected:
        bots.create("bot-invalid", spec)
    assert rejected.value.status == 422, rejected.value.body
    message = json.loads(rejected.value.body)["message"]
    assert field in message, message
    assert bots.pods("bot-invalid") == []


def test_the_table_is_large_enough() -> None:
    assert len(INVALID_SPECS) >= 15


@pytest.mark.parametrize(("sentence", "spec"), VALID_SPECS, ids=[case[0] for case in VALID_SPECS])
def test_valid_spec_is_accepted(bots: Bots, sentence: str, spec: dict) -> None:
    stored = bots.custom.create_namespaced_custom_object(
        "trading.r7.dev",
        "v1alpha1",
        bots.namespace,
        "tradingbots",
        {
            "apiVersion": "trading.r7.dev/v1alpha1",
            "kind": "TradingBot",
            "metadata": {"name": "bot-valid"},
            "spec": spec,
        },
        dry_run="All",
    )
    assert stored["metadata"]["name"] == "bot-valid"
