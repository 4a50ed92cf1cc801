"""One strategy per profile: its signal function bound to the profile's parameters.

The parameters themselves (names, types, bounds, defaults) are part of the API and live in
`tradingbot_api.params`, shared with the CRD and the operator.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tradingbot.strategy.signals import (
    Signal,
    breakout_signal,
    crossover_signal,
    mean_reversion_signal,
    momentum_signal,
)
from tradingbot_api.params import (
    resolve_params,
)

__all__ = ["Strategy"]


@dataclass(frozen=True)
class Strategy:
    """A profile's signal function bound to resolved parameters."""

    profile: str
    params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_profile(cls, profile: str, params: Mapping[str, Any] | None = None) -> Strategy:
        return cls(profile, resolve_params(profile, params))

    @property
    def position_fraction(self) -> float:
        return float(self.params["positionFraction"])

    @property
    def min_history(self) -> int:
        """Closes needed before the first signal can be anything but HOLD."""
        p = self.params
        return {
            "stable": lambda: p["window"],
            "medium": lambda: p["slowWindow"] + 1,
            "volatile": lambda: p["lookback"] + 1,
            "meme": lambda: max(p["breakoutWindow"], p["exitWindow"]) + 1,
        }[self.profile]()

    def signal(self, closes: Sequence[float], *, holding: bool) -> Signal:
        return _SIGNALS[self.profile](closes, self.params, holding)


_SIGNALS: dict[str, Callable[[Sequence[float], dict[str, Any], bool], Signal]] = {
    "stable": lambda c, p, h: mean_reversion_signal(
        c, window=p["window"], entry_z=p["entryZ"], exit_z=p["exitZ"], holding=h
    ),
    "medium": lambda c, p, h: crossover_signal(
        c, fast_window=p["fastWindow"], slow_window=p["slowWindow"], holding=h
    ),
    "volatile": lambda c, p, h: momentum_signal(
        c,
        lookback=p["lookback"],
        entry_threshold_pct=p["entryThresholdPct"],
        exit_threshold_pct=p["exitThresholdPct"],
        holding=h,
    ),
    "meme": lambda c, p, h: breakout_signal(
        c,
        breakout_window=p["breakoutWindow"],
        breakout_buffer_pct=p["breakoutBufferPct"],
        exit_window=p["exitWindow"],
        holding=h,
    ),
}
