"""The trading bot runtime: one process per TradingBot, started as `python -m tradingbot`.

The package keeps decisions (strategy signals, risk checks, state encoding, lease arithmetic)
in plain functions and does I/O (exchange, Kubernetes API, HTTP) in thin adapters around them.
Importing the package is cheap: ccxt and the Kubernetes client load only where used.
"""

__version__ = "0.1.0"
