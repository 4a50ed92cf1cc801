"""Strategies per profile (no ccxt, no Kubernetes). Their parameters (names, types, bounds,
defaults, validation) are part of the API: `tradingbot_api.params`."""

from tradingbot.strategy.profiles import Strategy
from tradingbot.strategy.signals import Signal

__all__ = ["Signal", "Strategy"]
