"""Strategies per profile and validation of `strategy.params` (no ccxt, no Kubernetes)."""

from tradingbot.strategy.profiles import (
    PARAM_SPECS,
    PROFILES,
    ParamSpec,
    Strategy,
    default_params,
    resolve_params,
    validate_params,
)
from tradingbot.strategy.signals import Signal

__all__ = [
    "PARAM_SPECS",
    "PROFILES",
    "ParamSpec",
    "Signal",
    "Strategy",
    "default_params",
    "resolve_params",
    "validate_params",
]
