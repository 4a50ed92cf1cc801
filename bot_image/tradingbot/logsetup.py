"""Structured JSON logs on stdout, with credentials redacted before anything is written.

`SecretRedactingFilter` sits on the handler, so every record (ours, ccxt's, urllib3's) passes
through it: each registered secret value is replaced by `***` in the message, its arguments
and extra fields, and fields whose name says "secret" are masked whatever their value. The
formatter runs the same redaction over the final line, which covers tracebacks.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from tradingbot_api.logs import STANDARD_ATTRS, JsonFormatter
from tradingbot_api.logs import configure_logging as shared_configure_logging

__all__ = [
    "REDACTOR",
    "JsonFormatter",
    "SecretRedactingFilter",
    "SecretRedactor",
    "configure_logging",
]

MASK = "***"
SENSITIVE_FIELD_NAMES = (
    "apikey",
    "api_key",
    "secret",
    "password",
    "token",
    "authorization",
    "x-mbx-apikey",
    "signature",
)
# Attributes every LogRecord has; anything else was passed as `extra=`.
_STANDARD_ATTRS = STANDARD_ATTRS
# Short values would be masked everywhere they happen to appear (e.g. "1"), which destroys the
# log without protecting anything real; real keys are long.
MIN_SECRET_LENGTH = 6


class SecretRedactor:
    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._lock = threading.Lock()

    def add(self, *values: str | None) -> None:
        with self._lock:
            self._secrets |= {v for v in values if v and len(v) >= MIN_SECRET_LENGTH}

    def redact(self, text: str) -> str:
        # Longest first, so a secret containing another is masked whole.
        for secret in sorted(self._secrets, key=len, reverse=True):
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def redact_value(self, key: str, value: Any) -> Any:
        if any(name in key.lower() for name in SENSITIVE_FIELD_NAMES):
            return MASK
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, dict):
            return {k: self.redact_value(str(k), v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.redact_value(key, v) for v in value]
        return value


class SecretRedactingFilter(logging.Filter):
    def __init__(self, redactor: SecretRedactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not lose the record
            message = f"{record.msg} {record.args}"
        record.msg = self.redactor.redact(message)
        record.args = ()
        for key, value in list(vars(record).items()):
            if key not in _STANDARD_ATTRS:
                setattr(record, key, self.redactor.redact_value(key, value))
        return True


REDACTOR = SecretRedactor()


def configure_logging(
    level: str = "INFO", *, static: dict[str, Any] | None = None, stream: Any = None
) -> logging.Handler:
    """Route all logging through one redacting JSON handler on stdout (the shared format)."""
    return shared_configure_logging(
        level,
        static=static,
        redact=REDACTOR.redact,
        filters=[SecretRedactingFilter(REDACTOR)],
        quiet=("urllib3", "ccxt", "aiohttp.access"),
        stream=stream,
    )
