"""The audit log as a table: one line per event, the same columns wherever it is shown (the
audit CLI, `kubectl tradingbot audit`)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Final

from tradingbot_api.tables import render_table

AUDIT_COLUMNS: Final = (
    ("SEQ", "seq"),
    ("TIMESTAMP", "timestamp"),
    ("SEVERITY", "severity"),
    ("TYPE", "event_type"),
    ("SOURCE", "source"),
    ("TARGET", "target"),
    ("USER", "user_id"),
    ("ACTION", "action"),
)
# Cells longer than this are cut with an ellipsis so rows stay one line.
MAX_CELL: Final = 60


def audit_cell(value: object) -> str:
    if value is None or value == "":
        return "-"
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def audit_table(events: Sequence[Mapping[str, Any]]) -> str:
    rows = [[audit_cell(event.get(key)) for _title, key in AUDIT_COLUMNS] for event in events]
    return render_table([title for title, _key in AUDIT_COLUMNS], rows)


def count_table(title: str, counts: Mapping[str, Any]) -> str:
    return render_table((title, "COUNT"), [[str(name), str(n)] for name, n in counts.items()])
