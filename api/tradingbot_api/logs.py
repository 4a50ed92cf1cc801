"""One JSON log line format for every program (operator, audit sidecar, bot, plugin):
`time`, `level`, `logger`, `message`, then the record's own fields (`bot`, `namespace`, …),
`object` for a Kubernetes object a log line is about, and `exception`."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any, TextIO

STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
# Record fields that are plumbing, not information (kopf attaches its settings and its
# object reference to every record).
_DROPPED = frozenset({"settings", "k8s_skip", "k8s_ref"})
_JSON = str | int | float | bool | list | tuple | dict | None


class JsonFormatter(logging.Formatter):
    converter = time.gmtime  # type: ignore[assignment]  # UTC, as the `Z` suffix says

    def __init__(
        self,
        static: dict[str, Any] | None = None,
        redact: Callable[[str], str] | None = None,
    ) -> None:
        super().__init__()
        self.static = static or {}
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **self.static,
        }
        for key, value in vars(record).items():
            if (
                key not in STANDARD_ATTRS
                and key not in _DROPPED
                and key not in entry
                and not key.startswith("_")
                and isinstance(value, _JSON)
            ):
                entry[key] = value
        ref = getattr(record, "k8s_ref", None)
        if isinstance(ref, dict):
            entry["object"] = f"{ref.get('namespace', '')}/{ref.get('name', '')}"
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        line = json.dumps(entry, default=str, ensure_ascii=False)
        return self.redact(line) if self.redact else line


def configure_logging(
    level: str = "INFO",
    *,
    static: dict[str, Any] | None = None,
    redact: Callable[[str], str] | None = None,
    filters: Iterable[logging.Filter] = (),
    quiet: Iterable[str] = ("urllib3", "kubernetes", "aiohttp.access"),
    stream: TextIO | None = None,
) -> logging.Handler:
    """Route all logging through one JSON handler on stdout (replacing any other)."""
    handler = logging.StreamHandler(stream or sys.stdout)
    for log_filter in filters:
        handler.addFilter(log_filter)
    handler.setFormatter(JsonFormatter(static, redact))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in quiet:  # library chatter at INFO would drown the program's own lines
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return handler
