"""Validation errors as users read them: one ``<field path>: <message>`` line each, in the
API server's path style (``spec.symbols[1]``, ``spec.strategy.params.window``)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from pydantic import ValidationError

from tradingbot_api.base import SpecModel, StatusModel


def _json_names() -> dict[str, str]:
    """Python field name -> JSON name, for every model here.

    Errors of defaulted fields (``validate_default``) carry the Python name; users know the
    JSON name.
    """
    names: dict[str, str] = {}
    for base in (SpecModel, StatusModel):
        for model in base.__subclasses__():
            for name, field in model.model_fields.items():
                names[name] = field.alias or name
    return names


def _format_loc(loc: Sequence[int | str], prefix: str) -> str:
    names = _json_names()
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            part = names.get(part, part)
            path = f"{path}.{part}" if path else part
    return path


def validation_messages(error: ValidationError, prefix: str = "spec") -> list[str]:
    """One ``<field path>: <message>`` line per error, in the API server's path style.

    For admission responses, Events and logs: a user must see which field to fix.
    """
    return [_message(detail["loc"], detail["msg"], prefix) for detail in error.errors()]


# A validator may name a more precise field than the one it runs on: "symbols[1]: ..." from
# the validator of `symbols`, "strategy.params.window: ..." from the one of `strategy`.
_NAMED_FIELD = re.compile(r"^([A-Za-z][\w]*(?:\.[A-Za-z]\w*|\[\d+\])*): (.*)$", re.DOTALL)


def _message(loc: Sequence[int | str], msg: str, prefix: str) -> str:
    path = _format_loc(loc, prefix)
    text = msg.removeprefix("Value error, ")
    named = _NAMED_FIELD.match(text)
    if named and loc:
        head = _format_loc(loc[:-1], prefix)
        field = named.group(1)
        last = _format_loc(loc[-1:], "")
        if field == last or field.startswith((last + ".", last + "[")):
            return f"{head}.{field}: {named.group(2)}" if head else f"{field}: {named.group(2)}"
    return f"{path}: {text}"
