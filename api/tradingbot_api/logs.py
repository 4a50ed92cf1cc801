"""One JSON log line format for every program (operator, audit sidecar, bot, plugin), on
python-json-logger: `time` (UTC, milliseconds), `level`, `logger`, `message`, then the
record's own fields (`bot`, `namespace`, …), `object` for a Kubernetes object a log line is
about, and `exception`."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any, TextIO

from pythonjsonlogger.json import JsonFormatter as _LibraryJsonFormatter

STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
# Record fields that are plumbing, not information (kopf attaches its settings and its
# object reference to every record).
_DROPPED = frozenset({"settings", "k8s_skip", "k8s_ref"})
_JSON = str | int | float | bool | list | tuple | dict | None
# The record attributes every line starts with, and the keys they have in it.
_FIELDS = {"asctime": "time", "levelname": "level", "name": "logger", "message": "message"}


class JsonFormatter(_LibraryJsonFormatter):
    """python-json-logger with this project's keys, UTC times and a last redaction pass."""

    def __init__(
        self,
        static: dict[str, Any] | None = None,
        redact: Callable[[str], str] | None = None,
    ) -> None:
        super().__init__(
            list(_FIELDS),
            rename_fields={**_FIELDS, "exc_info": "exception", "stack_info": "stack"},
            static_fields=static or {},
            reserved_attrs=sorted(STANDARD_ATTRS | _DROPPED),
            json_default=str,
            json_ensure_ascii=False,
        )
        self.redact = redact

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        record.asctime = self.formatTime(record)
        super().add_fields(log_data, record, message_dict)
        for key in [k for k, v in log_data.items() if not isinstance(v, _JSON)]:
            del log_data[key]  # objects have no place in a log line (their repr may hold secrets)
        # A record's own field never replaces the line's time, level, logger or message.
        log_data.update(
            time=record.asctime,
            level=record.levelname.lower(),
            logger=record.name,
            message=record.message,
        )
        ref = getattr(record, "k8s_ref", None)
        if isinstance(ref, dict):
            log_data["object"] = f"{ref.get('namespace', '')}/{ref.get('name', '')}"

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
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
