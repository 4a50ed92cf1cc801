"""Strategy parameters per profile: the closed set of names, their types, bounds and defaults.

| profile  | strategy                  | timeframe | positionFraction | signal defaults      |
|----------|---------------------------|-----------|------------------|----------------------|
| stable   | mean reversion (z-score)  | 15m       | 0.10             | window 20,           |
|          |                           |           |                  | entryZ 1.5, exitZ 0  |
| medium   | moving-average crossover  | 5m        | 0.08             | fastWindow 10,       |
|          |                           |           |                  | slowWindow 30        |
| volatile | momentum (rate of change) | 1m        | 0.05             | lookback 14, entry   |
|          |                           |           |                  | 3 %, exit -1 %       |
| meme     | breakout (Donchian)       | 1m        | 0.02             | breakoutWindow 20,   |
|          |                           |           |                  | buffer 2 %, exit-    |
|          |                           |           |                  | Window 10            |

Parameters shared by every profile: `timeframe`, `positionFraction` (share of equity per
entry), and the paper-trading knobs `priceFeed` (`seeded` | `live` | `auto`), `seed`,
`startingBalance` (quote currency), `feeRate` (fraction per fill) and `slippagePct`.
Stop-loss and take-profit are risk limits (`spec.risk`, see `tradingbot_api.risk`).

One table serves the CRD schema (`strategy.params` is typed from it, tested), the operator's
check before it stops a running bot, and the bot's own check at start: the API server, the
operator and the bot cannot disagree on what a valid parameter is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tradingbot_api.constants import Profile

PROFILES = tuple(p.value for p in Profile)
TIMEFRAMES = ("1m", "5m", "15m", "30m", "1h", "4h", "1d")
PRICE_FEEDS = ("seeded", "live", "auto")


@dataclass(frozen=True)
class ParamSpec:
    """One tunable parameter: its type, bounds and default."""

    name: str
    kind: type  # int, float or str
    default: Any
    doc: str
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    choices: tuple[str, ...] = ()

    def check(self, value: Any) -> str | None:
        """Return an error message (without the field path) or None when the value is valid."""
        if self.kind is str:
            if not isinstance(value, str):
                return f"must be a string, got {value!r}"
            if self.choices and value not in self.choices:
                return f"must be one of {', '.join(self.choices)}, got {value!r}"
            return None
        # bool is an int in Python; a YAML `true` is never a valid number here.
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"must be a number, got {value!r}"
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be a finite number, got {value!r}"
        if self.kind is int and isinstance(value, float) and not value.is_integer():
            return f"must be an integer, got {value!r}"
        low, high = self.minimum, self.maximum
        too_low = low is not None and (value <= low if self.exclusive_minimum else value < low)
        too_high = high is not None and value > high
        if too_low or too_high:
            lower = "" if low is None else f"{'>' if self.exclusive_minimum else '>='} {low:g}"
            upper = "" if high is None else f"<= {high:g}"
            bounds = " and ".join(b for b in (lower, upper) if b)
            return f"must be {bounds}, got {value!r}"
        return None

    def coerce(self, value: Any) -> Any:
        if self.kind is int:
            return int(value)
        if self.kind is float:
            return float(value)
        return value


def _common(timeframe: str, position_fraction: float) -> list[ParamSpec]:
    return [
        ParamSpec(
            "timeframe",
            str,
            timeframe,
            "candle period the signals are computed on",
            choices=TIMEFRAMES,
        ),
        ParamSpec(
            "positionFraction",
            float,
            position_fraction,
            "share of equity committed per entry",
            minimum=0.0,
            maximum=1.0,
            exclusive_minimum=True,
        ),
        ParamSpec(
            "priceFeed",
            str,
            "seeded",
            "paper price source: seeded random walk, live ccxt tickers, or live with "
            "fallback to seeded",
            choices=PRICE_FEEDS,
        ),
        ParamSpec(
            "seed",
            int,
            0,
            "seed of the deterministic paper price feed",
            minimum=0,
            maximum=2**53 - 1,  # exact in a float64, as the API server holds bounds
        ),
        ParamSpec(
            "startingBalance",
            float,
            10_000.0,
            "paper wallet in the quote currency",
            minimum=0.0,
            maximum=1e12,
            exclusive_minimum=True,
        ),
        ParamSpec(
            "feeRate",
            float,
            0.001,
            "paper fee per fill as a fraction of its cost",
            minimum=0.0,
            maximum=0.05,
        ),
        ParamSpec(
            "slippagePct",
            float,
            0.05,
            "paper slippage against the market price, in %",
            minimum=0.0,
            maximum=5.0,
        ),
    ]


PARAM_SPECS: dict[str, list[ParamSpec]] = {
    "stable": [
        *_common("15m", 0.10),
        ParamSpec("window", int, 20, "mean/deviation window in candles", minimum=5, maximum=500),
        ParamSpec(
            "entryZ",
            float,
            1.5,
            "buy when this many deviations below the mean",
            minimum=0.0,
            maximum=10.0,
            exclusive_minimum=True,
        ),
        ParamSpec(
            "exitZ", float, 0.0, "sell when back above this z-score", minimum=-10.0, maximum=10.0
        ),
    ],
    "medium": [
        *_common("5m", 0.08),
        ParamSpec("fastWindow", int, 10, "fast moving average in candles", minimum=2, maximum=200),
        ParamSpec("slowWindow", int, 30, "slow moving average in candles", minimum=3, maximum=500),
    ],
    "volatile": [
        *_common("1m", 0.05),
        ParamSpec(
            "lookback", int, 14, "rate-of-change lookback in candles", minimum=2, maximum=200
        ),
        ParamSpec(
            "entryThresholdPct",
            float,
            3.0,
            "buy when the rate of change reaches this %",
            minimum=0.0,
            maximum=100.0,
            exclusive_minimum=True,
        ),
        ParamSpec(
            "exitThresholdPct",
            float,
            -1.0,
            "sell when the rate of change falls to this %",
            minimum=-100.0,
            maximum=100.0,
        ),
    ],
    "meme": [
        *_common("1m", 0.02),
        ParamSpec(
            "breakoutWindow", int, 20, "candles whose high must be broken", minimum=5, maximum=500
        ),
        ParamSpec(
            "breakoutBufferPct",
            float,
            2.0,
            "extra % above the high to confirm",
            minimum=0.0,
            maximum=50.0,
        ),
        ParamSpec(
            "exitWindow", int, 10, "sell below the low of this many candles", minimum=2, maximum=500
        ),
    ],
}

PARAMS_PATH = "spec.strategy.params"


@dataclass(frozen=True)
class CrossRule:
    """A rule between two parameters of one profile, checked once each is valid alone.

    Omitted parameters take the profile's default, so a rule can fail on one set value.
    The same rule is a CEL rule in the CRD (see `tradingbot_api.schema`).
    """

    profile: str
    field: str  # the parameter the error names
    other: str
    relation: str  # "<": field < other; ">-": field > -other

    def holds(self, params: Mapping[str, Any]) -> bool:
        left, right = params[self.field], params[self.other]
        return bool(left < right) if self.relation == "<" else bool(left > -right)

    def message(self, params: Mapping[str, Any]) -> str:
        if self.relation == "<":
            bound = f"less than {self.other} ({_number(params[self.other])})"
        else:
            bound = f"greater than -{self.other} ({_number(-params[self.other])})"
        return f"{PARAMS_PATH}.{self.field}: must be {bound}, got {params[self.field]!r}"


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


CROSS_RULES: tuple[CrossRule, ...] = (
    CrossRule("stable", "exitZ", "entryZ", ">-"),
    CrossRule("medium", "fastWindow", "slowWindow", "<"),
    CrossRule("volatile", "exitThresholdPct", "entryThresholdPct", "<"),
)


def _cross_checks(profile: str, params: Mapping[str, Any]) -> list[str]:
    return [r.message(params) for r in CROSS_RULES if r.profile == profile and not r.holds(params)]


def param_names(profile: str) -> tuple[str, ...]:
    """The closed set of parameters a profile accepts, in table order."""
    return tuple(spec.name for spec in PARAM_SPECS[profile])


def all_param_specs() -> dict[str, ParamSpec]:
    """Every parameter of any profile by name; a name means the same in every profile."""
    specs: dict[str, ParamSpec] = {}
    for profile_specs in PARAM_SPECS.values():
        for spec in profile_specs:
            specs.setdefault(spec.name, spec)
    return specs


def validate_params(profile: str, params: Mapping[str, Any] | None) -> list[str]:
    """Every problem with `strategy.params` for `profile`, each message naming the field.

    An empty list means valid. Unknown names are errors: a typo must not silently fall back
    to a default while real money is at stake.
    """
    if profile not in PARAM_SPECS:
        return [f"spec.profile: must be one of {', '.join(PROFILES)}, got {profile!r}"]
    if params is None:
        return []
    if not isinstance(params, Mapping):
        return [f"{PARAMS_PATH}: must be a map, got {type(params).__name__}"]
    specs = {spec.name: spec for spec in PARAM_SPECS[profile]}
    errors: list[str] = []
    for name in sorted(params, key=str):
        spec = specs.get(name) if isinstance(name, str) else None
        if spec is None:
            errors.append(
                f"{PARAMS_PATH}.{name}: unknown parameter for profile {profile} "
                f"(known: {', '.join(sorted(specs))})"
            )
            continue
        problem = spec.check(params[name])
        if problem:
            errors.append(f"{PARAMS_PATH}.{name}: {problem}")
    if not errors:
        errors.extend(_cross_checks(profile, resolve_params(profile, params, validate=False)))
    return errors


def default_params(profile: str) -> dict[str, Any]:
    if profile not in PARAM_SPECS:
        raise ValueError(f"unknown profile {profile!r}")
    return {spec.name: spec.default for spec in PARAM_SPECS[profile]}


def resolve_params(
    profile: str, params: Mapping[str, Any] | None, *, validate: bool = True
) -> dict[str, Any]:
    """Defaults for `profile` overlaid with `params`; ValueError listing every problem."""
    if validate:
        errors = validate_params(profile, params)
        if errors:
            raise ValueError("; ".join(errors))
    resolved = default_params(profile)
    specs = {spec.name: spec for spec in PARAM_SPECS[profile]}
    for name, value in (params or {}).items():
        resolved[name] = specs[name].coerce(value)
    return resolved
