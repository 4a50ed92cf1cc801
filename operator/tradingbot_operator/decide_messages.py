"""How the change events describe a change: the request in words, field values as an
Event message may show them (secrets masked, long values cut), and the details recorded."""

from __future__ import annotations

from typing import Any

from tradingbot_api.constants import PendingActionKind
from tradingbot_audit.schema import REDACTED, is_secret_key, redact_secrets
from tradingbot_operator.decide_facts import BotFacts
from tradingbot_operator.hashing import bounded_value, canonical_json


def describe_request(kind: PendingActionKind, bot: BotFacts) -> str:
    if kind == PendingActionKind.STOP:
        return "stop requested; waiting for the coalescing window"
    if bot.changes:
        fields = ", ".join(c.path for c in bot.changes)
        return f"config changed ({fields}); restart pending"
    return f"restart requested ({bot.restart_reason or 'restart annotation'}); restart pending"


def shown(path: str, value: Any, limit: int = 60) -> str:
    """A value as an Event message may show it: secrets masked, long values cut."""
    if is_secret_key(path.rsplit(".", 1)[-1]):
        return REDACTED
    value = redact_secrets(value)
    text = value if isinstance(value, str) else canonical_json(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def change_details(bot: BotFacts) -> dict[str, Any]:
    return {
        "changedFields": [c.path for c in bot.changes],
        "old": {c.path: bounded_value(c.old) for c in bot.changes},
        "new": {c.path: bounded_value(c.new) for c in bot.changes},
        "reason": bot.restart_reason,
    }
