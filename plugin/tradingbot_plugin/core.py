"""What every part of `kubectl tradingbot` shares: its name, the exit codes, the one error
type commands report, the User-Agent of its requests, the clock, RFC 3339 time, and tolerant
readers of API JSON (a status not written yet reads as empty, not as an error).

Exit codes: 0 success; 1 failure (API error, verification failed, nothing matched);
2 usage error; 3 not allowed (authentication or RBAC); 4 TradingBot not found;
130 interrupted.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from datetime import datetime
from enum import IntEnum
from importlib import metadata
from typing import Any, Final

# -- names and exit codes ----------------------------------------------------------------------

PROG: Final = "kubectl tradingbot"
USER_AGENT_PRODUCT: Final = "kubectl-tradingbot"


class ExitCode(IntEnum):
    """What the plugin exits with (`kubectl tradingbot --help` lists them)."""

    OK = 0
    FAILED = 1
    USAGE = 2
    FORBIDDEN = 3  # RBAC or credentials
    NOT_FOUND = 4  # the tradingbot
    INTERRUPTED = 130


def plugin_version() -> str:
    try:
        return metadata.version("tradingbot-operator")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def user_agent() -> str:
    """The HTTP User-Agent of every request; the webhook keys the `plugin` source on its prefix."""
    return f"{USER_AGENT_PRODUCT}/{plugin_version()} (python)"


class PluginError(Exception):
    """A failure to report as one line on stderr with a given exit code."""

    def __init__(self, message: str, code: int = ExitCode.FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


Clock = Callable[[], datetime]


# -- API JSON -------------------------------------------------------------------------------


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _number(value: object) -> float:
    if isinstance(value, bool):
        return 0.0
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return 0.0
