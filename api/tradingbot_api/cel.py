"""CEL rules the CRD carries for the parameter table, generated from `tradingbot_api.params`.

The API server checks them; `tests/unit/test_crd_models.py` proves that the CRD holds exactly
these rules, so the table, the models and the CRD cannot drift apart.
"""

from __future__ import annotations

from typing import Any

from tradingbot_api.params import CROSS_RULES, PARAM_SPECS, PROFILES, CrossRule, ParamSpec

_PARAMS = "self.strategy.params"
_HAS_PARAMS = f"has(self.strategy) && has({_PARAMS})"


def _literal(spec: ParamSpec) -> str:
    """The default as a CEL literal of the field's type (CEL does not mix int and double)."""
    return repr(float(spec.default)) if spec.kind is float else str(spec.default)


def _value(spec: ParamSpec) -> str:
    return f"(has({_PARAMS}.{spec.name}) ? {_PARAMS}.{spec.name} : {_literal(spec)})"


def profile_only_params() -> dict[str, str]:
    """Parameters that belong to one profile only, with that profile."""
    owners: dict[str, set[str]] = {}
    for profile in PROFILES:
        for spec in PARAM_SPECS[profile]:
            owners.setdefault(spec.name, set()).add(profile)
    return {name: next(iter(p)) for name, p in owners.items() if len(p) == 1}


def _cross_rule(rule: CrossRule) -> dict[str, Any]:
    specs = {s.name: s for s in PARAM_SPECS[rule.profile]}
    left, right = _value(specs[rule.field]), _value(specs[rule.other])
    holds = f"{left} < {right}" if rule.relation == "<" else f"{left} > -{right}"
    bound = f"less than {rule.other}" if rule.relation == "<" else f"greater than -{rule.other}"
    return {
        "rule": f"self.profile != '{rule.profile}' || !({_HAS_PARAMS}) || {holds}",
        "message": (
            f"strategy.params.{rule.field} must be {bound} (omitted parameters take the "
            f"{rule.profile} defaults: {rule.field} {specs[rule.field].default}, "
            f"{rule.other} {specs[rule.other].default})"
        ),
        "fieldPath": f".strategy.params.{rule.field}",
        "reason": "FieldValueInvalid",
    }


def spec_rules() -> list[dict[str, Any]]:
    """Rules on `spec` that the parameter table implies, in a stable order."""
    rules = [
        {
            "rule": f"!({_HAS_PARAMS}) || !has({_PARAMS}.{name}) || self.profile == '{profile}'",
            "message": f"strategy.params.{name} is a parameter of profile {profile} only",
            "fieldPath": f".strategy.params.{name}",
            "reason": "FieldValueForbidden",
        }
        for name, profile in profile_only_params().items()
    ]
    rules += [_cross_rule(rule) for rule in CROSS_RULES]
    return rules
