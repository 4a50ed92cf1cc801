"""Risk limits and the entry chain run before every order."""

from __future__ import annotations

import pytest

from tradingbot.risk import (
    DEFAULT_LIMITS,
    EntryRequest,
    Portfolio,
    RiskLimits,
    check_entry,
    check_exit,
    daily_loss_pct,
    size_entry,
    validate_risk,
)

LIMITS = RiskLimits(
    max_position_notional=1000.0,
    max_open_positions=2,
    stop_loss_pct=2.0,
    take_profit_pct=4.0,
    max_daily_loss_pct=5.0,
)


def pf(**overrides: object) -> Portfolio:
    base: dict = {
        "position_notional": {},
        "free_quote": 10_000.0,
        "equity": 10_000.0,
        "daily_loss_pct": 0.0,
        "fee_rate": 0.001,
    }
    base.update(overrides)
    return Portfolio(**base)


def test_profile_defaults_and_overrides() -> None:
    limits = RiskLimits.for_profile("meme", {"maxOpenPositions": 7, "stopLossPct": None})
    assert limits.max_open_positions == 7
    assert limits.stop_loss_pct == DEFAULT_LIMITS["meme"]["stopLossPct"]
    assert (
        RiskLimits.for_profile("stable").stop_loss_pct
        < RiskLimits.for_profile("meme").stop_loss_pct
    )
    with pytest.raises(ValueError, match=r"spec\.risk\.maxDailyLossPct"):
        RiskLimits.for_profile("stable", {"maxDailyLossPct": 0})


def test_validate_risk_names_fields() -> None:
    assert validate_risk({"maxOpenPositions": 3, "stopLossPct": 1.5}) == []
    errors = validate_risk(
        {
            "maxOpenPositions": 0,
            "stopLossPct": "x",
            "maxPos": 1,
            "takeProfitPct": 2.5,
            "maxPositionNotional": True,
        }
    )
    assert any(e.startswith("spec.risk.maxOpenPositions:") for e in errors)
    assert any(e.startswith("spec.risk.stopLossPct: must be a number") for e in errors)
    assert any(e.startswith("spec.risk.maxPos: unknown") for e in errors)
    assert any(e.startswith("spec.risk.maxPositionNotional: must be a number") for e in errors)
    assert not any("takeProfitPct" in e for e in errors)


def test_entry_allowed_within_limits() -> None:
    decision = check_entry(EntryRequest("BTC/USDT", 500.0, 100.0), pf(), LIMITS)
    assert decision.allowed


@pytest.mark.parametrize(
    ("request_", "portfolio", "check"),
    [
        (EntryRequest("BTC/USDT", 500.0, 100.0), pf(daily_loss_pct=5.0), "daily_loss"),
        (
            EntryRequest("SOL/USDT", 500.0, 100.0),
            pf(position_notional={"BTC/USDT": 10.0, "ETH/USDT": 10.0}),
            "max_open_positions",
        ),
        (
            EntryRequest("BTC/USDT", 600.0, 100.0),
            pf(position_notional={"BTC/USDT": 500.0}),
            "max_position_notional",
        ),
        (EntryRequest("BTC/USDT", 5.0, 100.0), pf(), "min_notional"),
        (EntryRequest("BTC/USDT", 500.0, 100.0), pf(free_quote=400.0), "funds"),
    ],
)
def test_each_check_refuses_with_its_name(
    request_: EntryRequest, portfolio: Portfolio, check: str
) -> None:
    decision = check_entry(request_, portfolio, LIMITS)
    assert not decision.allowed
    assert decision.check == check
    assert decision.message


def test_first_violation_wins() -> None:
    decision = check_entry(
        EntryRequest("X/USDT", 5000.0, 1.0), pf(daily_loss_pct=9.0, free_quote=0.0), LIMITS
    )
    assert decision.check == "daily_loss"


def test_adding_to_an_open_symbol_does_not_count_as_a_new_position() -> None:
    portfolio = pf(position_notional={"BTC/USDT": 100.0, "ETH/USDT": 100.0})
    assert check_entry(EntryRequest("BTC/USDT", 100.0, 1.0), portfolio, LIMITS).allowed


def test_size_entry_caps_by_fraction_limit_and_funds() -> None:
    assert size_entry("BTC/USDT", 100.0, 0.05, pf(), LIMITS).notional == pytest.approx(500.0)
    assert size_entry("BTC/USDT", 100.0, 0.5, pf(), LIMITS).notional == pytest.approx(1000.0)
    capped = size_entry("BTC/USDT", 100.0, 0.5, pf(position_notional={"BTC/USDT": 900.0}), LIMITS)
    assert capped.notional == pytest.approx(100.0)
    poor = size_entry("BTC/USDT", 100.0, 0.5, pf(free_quote=300.0), LIMITS)
    assert poor.notional == pytest.approx(300.0 / 1.001)
    assert check_entry(poor, pf(free_quote=300.0), LIMITS).allowed


def test_exit_on_stop_loss_and_take_profit() -> None:
    assert check_exit(100.0, 98.0, LIMITS) == "stop_loss"
    assert check_exit(100.0, 97.0, LIMITS) == "stop_loss"
    assert check_exit(100.0, 104.0, LIMITS) == "take_profit"
    assert check_exit(100.0, 101.0, LIMITS) is None
    assert check_exit(0.0, 1.0, LIMITS) is None


def test_daily_loss_counts_realized_and_open_losses_only() -> None:
    assert daily_loss_pct(100.0, 50.0, 10_000.0) == 0.0
    assert daily_loss_pct(-500.0, 0.0, 9_500.0) == pytest.approx(5.0)
    assert daily_loss_pct(0.0, -500.0, 9_500.0) == pytest.approx(5.0)
    # Open gains do not offset realized losses.
    assert daily_loss_pct(-500.0, 400.0, 9_900.0) == pytest.approx(500 / 10_400 * 100)
