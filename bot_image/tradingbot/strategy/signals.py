"""Pure indicator and signal functions on a history of closing prices (oldest first).

Each signal function answers one question for one symbol: enter, exit or hold, given whether
the bot currently holds a position. They never look at balances or limits; risk.py does that.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from enum import StrEnum


class Signal(StrEnum):
    BUY = "buy"
    SELL = "sell"
    HOLD = "hold"


def sma(values: Sequence[float], window: int) -> float:
    """Simple moving average of the last `window` values."""
    if window <= 0 or len(values) < window:
        raise ValueError(f"need {window} values, have {len(values)}")
    return math.fsum(values[-window:]) / window


def stdev(values: Sequence[float], window: int) -> float:
    """Population standard deviation of the last `window` values."""
    mean = sma(values, window)
    return math.sqrt(math.fsum((v - mean) ** 2 for v in values[-window:]) / window)


def zscore(values: Sequence[float], window: int) -> float:
    """How many standard deviations the last value sits from the window mean (0 when flat)."""
    deviation = stdev(values, window)
    if deviation == 0:
        return 0.0
    return (values[-1] - sma(values, window)) / deviation


def rate_of_change_pct(values: Sequence[float], lookback: int) -> float:
    """Percent change of the last value against the value `lookback` steps earlier."""
    if len(values) <= lookback:
        raise ValueError(f"need {lookback + 1} values, have {len(values)}")
    base = values[-1 - lookback]
    if base == 0:
        return 0.0
    return (values[-1] / base - 1.0) * 100.0


def mean_reversion_signal(
    closes: Sequence[float], *, window: int, entry_z: float, exit_z: float, holding: bool
) -> Signal:
    """Buy a dip of `entry_z` deviations below the mean; sell once back above `exit_z`."""
    if len(closes) < window:
        return Signal.HOLD
    z = zscore(closes, window)
    if not holding and z <= -entry_z:
        return Signal.BUY
    if holding and z >= exit_z:
        return Signal.SELL
    return Signal.HOLD


def crossover_signal(
    closes: Sequence[float], *, fast_window: int, slow_window: int, holding: bool
) -> Signal:
    """Buy when the fast average crosses above the slow one; sell when it crosses below.

    A crossing is judged on the last two closes so that a bot restarted in the middle of a
    trend does not buy late into it.
    """
    if len(closes) < slow_window + 1:
        return Signal.HOLD
    previous = closes[:-1]
    fast_now, slow_now = sma(closes, fast_window), sma(closes, slow_window)
    fast_before, slow_before = sma(previous, fast_window), sma(previous, slow_window)
    if not holding and fast_before <= slow_before and fast_now > slow_now:
        return Signal.BUY
    if holding and fast_now < slow_now:
        return Signal.SELL
    return Signal.HOLD


def momentum_signal(
    closes: Sequence[float],
    *,
    lookback: int,
    entry_threshold_pct: float,
    exit_threshold_pct: float,
    holding: bool,
) -> Signal:
    """Buy when the rate of change over `lookback` exceeds the entry threshold; sell when it
    falls below the exit threshold."""
    if len(closes) <= lookback:
        return Signal.HOLD
    roc = rate_of_change_pct(closes, lookback)
    if not holding and roc >= entry_threshold_pct:
        return Signal.BUY
    if holding and roc <= exit_threshold_pct:
        return Signal.SELL
    return Signal.HOLD


def breakout_signal(
    closes: Sequence[float],
    *,
    breakout_window: int,
    breakout_buffer_pct: float,
    exit_window: int,
    holding: bool,
) -> Signal:
    """Buy a close above the prior `breakout_window` high (plus a buffer); sell a close below
    the prior `exit_window` low (a Donchian channel)."""
    if len(closes) < max(breakout_window, exit_window) + 1:
        return Signal.HOLD
    last = closes[-1]
    prior = closes[:-1]
    if not holding and last > max(prior[-breakout_window:]) * (1 + breakout_buffer_pct / 100):
        return Signal.BUY
    if holding and last < min(prior[-exit_window:]):
        return Signal.SELL
    return Signal.HOLD
