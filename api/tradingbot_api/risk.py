"""Risk limits as the API states them: per-profile presets and bounds of `spec.risk`.

Shared by the CRD (tested to state the same bounds), the operator (which checks a spec before
it stops a running bot) and the bot (which enforces the limits before every order).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

RISK_PATH = "spec.risk"

# Defaults per profile, in the quote currency and percent. Tighter for calm markets, wider
# stops and smaller exposure where prices swing.
DEFAULT_LIMITS: dict[str, dict[str, float]] = {
    "stable": {
        "maxPositionNotional": 5000.0,
        "maxOpenPositions": 5,
        "stopLossPct": 1.0,
        "takeProfitPct": 1.5,
        "maxDailyLossPct": 2.0,
    },
    "medium": {
        "maxPositionNotional": 3000.0,
        "maxOpenPositions": 4,
        "stopLossPct": 3.0,
        "takeProfitPct": 5.0,
        "maxDailyLossPct": 4.0,
    },
    "volatile": {
        "maxPositionNotional": 2000.0,
        "maxOpenPositions": 3,
        "stopLossPct": 5.0,
        "takeProfitPct": 10.0,
        "maxDailyLossPct": 6.0,
    },
    "meme": {
        "maxPositionNotional": 500.0,
        "maxOpenPositions": 2,
        "stopLossPct": 8.0,
        "takeProfitPct": 20.0,
        "maxDailyLossPct": 10.0,
    },
}


# (type, exclusive lower bound, inclusive upper bound)
_RISK_BOUNDS: dict[str, tuple[type, float, float]] = {
    "maxPositionNotional": (float, 0.0, 1e12),
    "maxOpenPositions": (int, 0, 100),
    "stopLossPct": (float, 0.0, 100.0),
    "takeProfitPct": (float, 0.0, 1000.0),
    "maxDailyLossPct": (float, 0.0, 100.0),
}


def validate_risk(risk: Mapping[str, Any] | None) -> list[str]:
    """Problems with `spec.risk`, each naming the field; unknown fields are errors."""
    errors: list[str] = []
    for name, value in (risk or {}).items():
        if value is None:
            continue
        if name not in _RISK_BOUNDS:
            errors.append(f"{RISK_PATH}.{name}: unknown field")
            continue
        kind, low, high = _RISK_BOUNDS[name]
        is_number = isinstance(value, int | float) and not isinstance(value, bool)
        if not is_number or (isinstance(value, float) and not math.isfinite(value)):
            errors.append(f"{RISK_PATH}.{name}: must be a number, got {value!r}")
        elif kind is int and isinstance(value, float) and not value.is_integer():
            errors.append(f"{RISK_PATH}.{name}: must be an integer, got {value!r}")
        elif not low < value <= high:
            errors.append(f"{RISK_PATH}.{name}: must be > {low:g} and <= {high:g}, got {value!r}")
    return errors
