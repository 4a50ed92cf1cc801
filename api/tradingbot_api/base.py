"""Model bases shared by the spec and status models of the TradingBot API.

* Spec models forbid unknown fields and use strict scalar types: the API server would reject
  ``"5"`` for an integer or ``"yes"`` for a boolean, so the models do too.
* Status models ignore unknown fields: status is written by the operator and the bot, and an
  older reader must not fail on a newer writer's extra field.
* JSON names are camelCase aliases; Python code uses snake_case (both are accepted as input).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

# ---------------------------------------------------------------------------------------------
# shared configuration


class SpecModel(BaseModel):
    """Base of spec models: unknown fields are errors, so a typo never silently does nothing."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class StatusModel(BaseModel):
    """Base of status models: tolerant of fields added by newer writers."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


def plain(value: Any) -> Any:
    """Deep-copy mappings and sequences into dicts and lists (kopf hands out views)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [plain(v) for v in value]
    return value
