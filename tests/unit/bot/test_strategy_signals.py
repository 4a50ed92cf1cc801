"""Strategy signals per profile and validation of strategy.params."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tradingbot.strategy import Signal, Strategy
from tradingbot.strategy.signals import (
    breakout_signal,
    crossover_signal,
    mean_reversion_signal,
    momentum_signal,
    rate_of_change_pct,
    sma,
    zscore,
)
from tradingbot_api.params import (
    PARAM_SPECS,
    PROFILES,
    default_params,
    resolve_params,
    validate_params,
)


def test_indicators_on_known_values() -> None:
    assert sma([1, 2, 3, 4], 2) == 3.5
    assert rate_of_change_pct([100, 105, 110], 2) == pytest.approx(10.0)
    assert zscore([1, 1, 1, 1], 4) == 0.0
    assert zscore([1, 2, 3, 4, 5], 5) > 1.0
    with pytest.raises(ValueError):
        sma([1], 2)


def test_mean_reversion_buys_a_dip_and_sells_the_recovery() -> None:
    flat = [100.0] * 19
    dip = [*flat, 95.0]
    assert (
        mean_reversion_signal(dip, window=20, entry_z=1.5, exit_z=0.0, holding=False) == Signal.BUY
    )
    assert (
        mean_reversion_signal(dip, window=20, entry_z=1.5, exit_z=0.0, holding=True) == Signal.HOLD
    )
    recovered = [*flat[:-1], 95.0, 101.0]
    assert (
        mean_reversion_signal(recovered, window=20, entry_z=1.5, exit_z=0.0, holding=True)
        == Signal.SELL
    )
    assert (
        mean_reversion_signal(dip[:5], window=20, entry_z=1.5, exit_z=0.0, holding=False)
        == Signal.HOLD
    )


def test_crossover_buys_only_on_the_cross_and_sells_below() -> None:
    falling_then_rising = [float(x) for x in range(40, 10, -1)] + [60.0]
    assert (
        crossover_signal(falling_then_rising, fast_window=2, slow_window=10, holding=False)
        == Signal.BUY
    )
    already_above = [float(x) for x in range(1, 40)]
    assert (
        crossover_signal(already_above, fast_window=2, slow_window=10, holding=False) == Signal.HOLD
    )  # no fresh cross: no late entry
    falling = [float(x) for x in range(40, 1, -1)]
    assert crossover_signal(falling, fast_window=2, slow_window=10, holding=True) == Signal.SELL


def test_momentum_thresholds() -> None:
    rising = [100.0] * 14 + [103.0]
    assert (
        momentum_signal(
            rising, lookback=14, entry_threshold_pct=2.0, exit_threshold_pct=0.0, holding=False
        )
        == Signal.BUY
    )
    fading = [100.0] * 14 + [99.0]
    assert (
        momentum_signal(
            fading, lookback=14, entry_threshold_pct=2.0, exit_threshold_pct=0.0, holding=True
        )
        == Signal.SELL
    )
    assert (
        momentum_signal(
            rising, lookback=14, entry_threshold_pct=5.0, exit_threshold_pct=0.0, holding=False
        )
        == Signal.HOLD
    )


def test_breakout_channel() -> None:
    base = [100.0, 101.0, 99.0] * 7
    assert (
        breakout_signal(
            [*base, 103.0],
            breakout_window=20,
            breakout_buffer_pct=0.5,
            exit_window=10,
            holding=False,
        )
        == Signal.BUY
    )
    assert (
        breakout_signal(
            [*base, 101.2],
            breakout_window=20,
            breakout_buffer_pct=0.5,
            exit_window=10,
            holding=False,
        )
        == Signal.HOLD
    )
    assert (
        breakout_signal(
            [*base, 98.0], breakout_window=20, breakout_buffer_pct=0.5, exit_window=10, holding=True
        )
        == Signal.SELL
    )


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_has_documented_defaults_that_validate(profile: str) -> None:
    defaults = default_params(profile)
    assert validate_params(profile, defaults) == []
    assert validate_params(profile, {}) == []
    assert {"timeframe", "positionFraction"} <= set(defaults)
    strategy = Strategy.for_profile(profile)
    assert 0 < strategy.position_fraction <= 1
    assert strategy.signal([100.0] * (strategy.min_history - 1), holding=False) == Signal.HOLD
    assert all(spec.doc for spec in PARAM_SPECS[profile])


def test_params_override_defaults() -> None:
    resolved = resolve_params("medium", {"fastWindow": 5, "slowWindow": 50.0})
    assert resolved["fastWindow"] == 5 and resolved["slowWindow"] == 50
    assert isinstance(resolved["slowWindow"], int)
    assert resolved["timeframe"] == "5m"


@pytest.mark.parametrize(
    ("profile", "params", "expected"),
    [
        ("stable", {"windw": 10}, "spec.strategy.params.windw: unknown parameter"),
        ("stable", {"window": "20"}, "spec.strategy.params.window: must be a number"),
        ("stable", {"window": True}, "spec.strategy.params.window: must be a number"),
        ("stable", {"window": 2}, "spec.strategy.params.window: must be >= 5"),
        ("stable", {"window": 20.5}, "spec.strategy.params.window: must be an integer"),
        ("stable", {"exitZ": -3.0, "entryZ": 2.0}, "spec.strategy.params.exitZ: must be greater"),
        (
            "medium",
            {"fastWindow": 30, "slowWindow": 20},
            "spec.strategy.params.fastWindow: must be less than slowWindow",
        ),
        (
            "volatile",
            {"exitThresholdPct": 3.5},
            "spec.strategy.params.exitThresholdPct: must be less than entryThresholdPct",
        ),
        ("meme", {"positionFraction": 0}, "spec.strategy.params.positionFraction: must be > 0"),
        ("meme", {"positionFraction": 1.5}, "spec.strategy.params.positionFraction: must be"),
        ("meme", {"timeframe": "2m"}, "spec.strategy.params.timeframe: must be one of"),
        ("meme", {"priceFeed": "kraken"}, "spec.strategy.params.priceFeed: must be one of"),
        ("meme", {"seed": float("nan")}, "spec.strategy.params.seed: must be a finite number"),
        ("crypto", {}, "spec.profile: must be one of"),
    ],
)
def test_invalid_params_are_reported_by_field(profile: str, params: dict, expected: str) -> None:
    errors = validate_params(profile, params)
    assert any(e.startswith(expected) for e in errors), errors


def test_all_problems_are_reported_at_once() -> None:
    errors = validate_params("stable", {"window": 1, "entryZ": -1, "bogus": 1})
    assert len(errors) == 3


def test_resolve_rejects_invalid() -> None:
    with pytest.raises(ValueError, match="window"):
        resolve_params("stable", {"window": 1})


def test_strategy_and_risk_import_without_ccxt_or_kubernetes() -> None:
    # The operator's webhook imports these; they must stay light.
    code = (
        "import sys, tradingbot.strategy, tradingbot.risk; "
        "heavy = [m for m in ('ccxt', 'kubernetes', 'aiohttp') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
