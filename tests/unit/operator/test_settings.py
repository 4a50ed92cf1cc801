"""Operator settings from TRADINGBOT_OPERATOR_* variables: defaults, parsing, failing fast."""

from __future__ import annotations

import pytest

from tradingbot_operator.settings import OperatorSettings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("TRADINGBOT_OPERATOR_"):
            monkeypatch.delenv(name)


def test_defaults() -> None:
    settings = OperatorSettings.from_env()
    assert settings.namespace is None
    assert settings.bot_command == ("python", "-m", "tradingbot")
    assert settings.images == ("ghcr.io/r7/tradingbot:0.1.0",)


def test_environment_values_and_space_separated_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRADINGBOT_OPERATOR_NAMESPACE", "trading")
    monkeypatch.setenv("TRADINGBOT_OPERATOR_METRICS_PORT", "9100")
    monkeypatch.setenv("TRADINGBOT_OPERATOR_ALLOWED_IMAGES", "img:a  img:b")
    monkeypatch.setenv("TRADINGBOT_OPERATOR_BOT_ENV", "TICK_SECONDS=0.1 A=b")
    monkeypatch.setenv("TRADINGBOT_OPERATOR_NODE_HEARTBEATS", "false")
    settings = OperatorSettings.from_env()
    assert settings.namespace == "trading"
    assert settings.metrics_port == 9100
    assert settings.allowed_images == ("img:a", "img:b")
    assert settings.bot_env == ("TICK_SECONDS=0.1", "A=b")
    assert settings.node_heartbeats is False


def test_flags_win_over_the_environment_and_none_means_not_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TRADINGBOT_OPERATOR_NAMESPACE", "from-env")
    assert OperatorSettings.from_env(namespace="from-flag").namespace == "from-flag"
    assert OperatorSettings.from_env(namespace=None).namespace == "from-env"


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("TRADINGBOT_OPERATOR_METRICS_PORT", "70000", "metrics_port"),
        ("TRADINGBOT_OPERATOR_READY_TIMEOUT_SECONDS", "soon", "ready_timeout_seconds"),
        ("TRADINGBOT_OPERATOR_BOT_ENV", "NOEQUALS", "KEY=VALUE"),
        ("TRADINGBOT_OPERATOR_FLEET_SWITCH", "not a ref", "fleet_switch"),
    ],
)
def test_a_bad_value_fails_fast_naming_it(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, words: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit, match=words):
        OperatorSettings.from_env()


def test_an_unknown_setting_variable_is_ignored_but_an_unknown_override_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TRADINGBOT_OPERATOR_NO_SUCH_THING", "1")
    OperatorSettings.from_env()
    with pytest.raises(SystemExit, match="no_such_thing"):
        OperatorSettings.from_env(no_such_thing=1)
