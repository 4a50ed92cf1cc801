"""Structured JSON logs, one object per line, in the format every program shares."""

from tradingbot_api.logs import JsonFormatter, configure_logging

__all__ = ["JsonFormatter", "configure_logging"]
