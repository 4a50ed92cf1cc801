"""Structured JSON logs, one object per line."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
_DROPPED = {"settings", "k8s_skip", "k8s_ref"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            # Scalars only: kopf attaches its whole settings object to every record.
            if (
                key not in _STANDARD
                and key not in _DROPPED
                and not key.startswith("_")
                and isinstance(value, str | int | float | bool)
            ):
                entry[key] = value
        ref = getattr(record, "k8s_ref", None)
        if isinstance(ref, dict):
            entry["object"] = f"{ref.get('namespace', '')}/{ref.get('name', '')}"
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    logging.Formatter.converter = __import__("time").gmtime
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
