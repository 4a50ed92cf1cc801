"""The CRD and the pydantic models describe the same API, and the samples are valid.

The comparison walks the CRD's openAPIV3Schema and the models' JSON schema (by alias) side by
side and reports every difference: field names, types, required fields, enums, defaults and
bounds. Bounds must match exactly in ``spec`` (the models enforce what the API server
enforces); in ``status`` the CRD may be stricter, but where both state a bound it must agree.
The comparator itself is tested against deliberate drift on either side.
"""

from __future__ import annotations

import copy
import importlib.util
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError, create_model
from pydantic.json_schema import GenerateJsonSchema, NoDefault
from pydantic_core import core_schema

from tradingbot_api import constants, models
from tradingbot_api.constants import (
    ConditionStatus,
    ConditionType,
    ExchangeMode,
    Phase,
    Profile,
    StateBackend,
)
from tradingbot_api.models import (
    RestartPolicySpec,
    RiskSpec,
    TradingBot,
    TradingBotSpec,
    TradingBotStatus,
    validation_messages,
)

REPO = Path(__file__).resolve().parents[2]
CRD_PATH = REPO / "crds" / "tradingbots.trading.r7.dev.yaml"
SAMPLES_DIR = REPO / "config" / "samples"
TABLE_PATH = REPO / "tests" / "integration" / "invalid_specs.py"

SAMPLE_PROFILES = {
    "bot-estavel": Profile.STABLE,
    "bot-medio": Profile.MEDIUM,
    "bot-volatil": Profile.VOLATILE,
    "bot-meme": Profile.MEME,
}

Node = dict[str, Any]

# Keys that bound a value; compared between the two schemas.
BOUND_KEYS = (
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "pattern",
    "format",
)


# ---------------------------------------------------------------------------------------------
# loading


def load_crd() -> dict[str, Any]:
    data = yaml.safe_load(CRD_PATH.read_text())
    assert isinstance(data, dict)
    return data


def crd_root_schema(crd: dict[str, Any]) -> dict[str, Any]:
    (version,) = crd["spec"]["versions"]
    schema = version["schema"]["openAPIV3Schema"]
    assert isinstance(schema, dict)
    return schema


def load_table() -> ModuleType:
    """Load the integration table by path: it must not need a cluster or a package layout."""
    spec = importlib.util.spec_from_file_location("invalid_specs", TABLE_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_samples() -> dict[str, dict[str, Any]]:
    samples = {}
    for path in sorted(SAMPLES_DIR.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        obj = yaml.safe_load(path.read_text())
        samples[path.name] = obj
    return samples


class _FactoryDefaults(GenerateJsonSchema):
    """JSON schema generator that also reports ``default_factory`` defaults.

    Pydantic leaves them out; without them a nested default (``restartPolicy: {}`` in the CRD)
    could not be compared.
    """

    def get_default_value(self, schema: core_schema.WithDefaultSchema) -> Any:
        factory = schema.get("default_factory")
        if factory is not None and not schema.get("default_factory_takes_data"):
            return factory()  # type: ignore[call-arg]
        return schema.get("default", NoDefault)


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema(by_alias=True, schema_generator=_FactoryDefaults)


# ---------------------------------------------------------------------------------------------
# normalisation: both schemas become the same small tree of nodes


def _is_empty(value: Any) -> bool:
    return value is None or value == {} or value == []


def _drop_empty(value: Any) -> Any:
    """Absent, null and empty mean the same in a default (a merge patch cannot tell them apart
    and readers treat them alike), so they compare equal."""
    if isinstance(value, dict):
        pruned = {k: _drop_empty(v) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if not _is_empty(v)}
    if isinstance(value, list):
        return [_drop_empty(v) for v in value]
    return value


def _bounds(schema: dict[str, Any]) -> dict[str, Any]:
    bounds = {k: schema[k] for k in BOUND_KEYS if k in schema}
    if bounds.get("format") not in (None, "date-time"):
        bounds.pop("format")  # int64 and friends are encodings, not constraints
    # JSON schema 2020-12 (pydantic) says exclusiveMinimum: 0; OpenAPI v3 (CRD) says
    # minimum: 0 plus exclusiveMinimum: true.
    for key, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        value = bounds.get(key)
        if value is False:
            bounds.pop(key)
        elif value is not True and value is not None:
            bounds[plain] = value
            bounds[key] = True
    return bounds


def normalize_crd(schema: dict[str, Any]) -> Node:
    node: Node = {"bounds": _bounds(schema)}
    if "enum" in schema:
        node["enum"] = sorted(schema["enum"])
    if "default" in schema:
        node["default"] = schema["default"]
    if schema.get("x-kubernetes-int-or-string"):
        node["kind"] = "int-or-string"
        return node
    kind = schema.get("type")
    if kind == "object":
        if "properties" in schema:
            node["kind"] = "object"
            node["properties"] = {k: normalize_crd(v) for k, v in schema["properties"].items()}
            node["required"] = sorted(schema.get("required", []))
        elif "additionalProperties" in schema:
            node["kind"] = "map"
            node["values"] = normalize_crd(schema["additionalProperties"])
        elif schema.get("x-kubernetes-preserve-unknown-fields"):
            node["kind"] = "free-form"
        else:
            node["kind"] = "object"
            node["properties"] = {}
            node["required"] = []
    elif kind == "array":
        node["kind"] = "array"
        node["items"] = normalize_crd(schema["items"])
        node["set"] = schema.get("x-kubernetes-list-type") == "set"
    else:
        node["kind"] = kind
    return node


class ModelSchemaWalker:
    """Turns a pydantic JSON schema into the same node tree as :func:`normalize_crd`."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self.defs: dict[str, Any] = schema.get("$defs", {})
        self.root = schema

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        if "$ref" in schema:
            target = self.defs[schema["$ref"].rsplit("/", 1)[-1]]
            merged = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
            return self.resolve(merged)
        if "allOf" in schema and len(schema["allOf"]) == 1:
            inner = self.resolve(schema["allOf"][0])
            return {**inner, **{k: v for k, v in schema.items() if k != "allOf"}}
        if "anyOf" in schema:
            options = [o for o in schema["anyOf"] if o != {"type": "null"}]
            outer = {k: v for k, v in schema.items() if k != "anyOf"}
            if len(options) == 1:
                return {**self.resolve(options[0]), **outer}
            return {**outer, "anyOf": [self.resolve(o) for o in options]}
        return schema

    def normalize(self, raw: dict[str, Any], *, spec: bool) -> Node:
        schema = self.resolve(raw)
        node: Node = {"bounds": _bounds(schema)}
        if "enum" in schema:
            node["enum"] = sorted(schema["enum"])
        elif "const" in schema:
            node["enum"] = [schema["const"]]
        if "default" in schema:
            node["default"] = schema["default"]
        if "anyOf" in schema:
            types = sorted(o.get("type") for o in schema["anyOf"])
            assert types == ["integer", "string"], f"unsupported union {types}"
            node["kind"] = "int-or-string"
            for option in schema["anyOf"]:
                node["bounds"].update(_bounds(option))
            return node
        kind = schema.get("type")
        if kind == "object":
            extra = schema.get("additionalProperties")
            if "properties" in schema:
                node["kind"] = "object"
                node["properties"] = {
                    k: self.normalize(v, spec=spec) for k, v in schema["properties"].items()
                }
                node["required"] = sorted(schema.get("required", []))
                node["closed"] = extra is False
            elif isinstance(extra, dict) and extra:
                node["kind"] = "map"
                node["values"] = self.normalize(extra, spec=spec)
            else:
                node["kind"] = "free-form"
        elif kind == "array":
            node["kind"] = "array"
            node["items"] = self.normalize(schema["items"], spec=spec)
            node["set"] = bool(schema.get("uniqueItems"))
        else:
            node["kind"] = kind
        return node


def model_tree(model: type[BaseModel], *, spec: bool) -> Node:
    schema = model_schema(model)
    return ModelSchemaWalker(schema).normalize(schema, spec=spec)


def _effective_default(node: Node) -> Any:
    """A CRD default with the defaults of its children applied, as the API server does."""
    if "default" not in node:
        return None
    return apply_crd_defaults(node, copy.deepcopy(node["default"]))


def apply_crd_defaults(node: Node, value: Any) -> Any:
    """Structural defaulting of ``value`` by a normalised CRD node (objects only)."""
    if node["kind"] == "object" and isinstance(value, dict):
        for name, child in node["properties"].items():
            if name not in value and "default" in child:
                value[name] = copy.deepcopy(child["default"])
            if name in value:
                value[name] = apply_crd_defaults(child, value[name])
    elif node["kind"] == "array" and isinstance(value, list):
        value = [apply_crd_defaults(node["items"], v) for v in value]
    elif node["kind"] == "map" and isinstance(value, dict):
        value = {k: apply_crd_defaults(node["values"], v) for k, v in value.items()}
    return value


def compare(crd: Node, model: Node, path: str, *, strict_bounds: bool) -> list[str]:
    """Every difference between a CRD node and a model node, as ``path: what`` lines."""
    diffs: list[str] = []
    if crd["kind"] != model["kind"]:
        return [f"{path}: CRD type {crd['kind']} but model type {model['kind']}"]
    if crd.get("enum") != model.get("enum"):
        diffs.append(f"{path}: CRD enum {crd.get('enum')} but model enum {model.get('enum')}")
    crd_default = _drop_empty(_effective_default(crd))
    model_default = _drop_empty(model.get("default"))
    if not (_is_empty(crd_default) and _is_empty(model_default)) and crd_default != model_default:
        diffs.append(f"{path}: CRD default {crd_default!r} but model default {model_default!r}")
    crd_bounds, model_bounds = crd["bounds"], model["bounds"]
    keys = set(crd_bounds) | set(model_bounds)
    if not strict_bounds:
        keys = set(crd_bounds) & set(model_bounds)
    for key in sorted(keys):
        if crd_bounds.get(key) != model_bounds.get(key):
            diffs.append(
                f"{path}: CRD {key}={crd_bounds.get(key)!r} but model {key}="
                f"{model_bounds.get(key)!r}"
            )
    if crd["kind"] == "object":
        crd_props, model_props = crd["properties"], model["properties"]
        for name in sorted(set(crd_props) - set(model_props)):
            diffs.append(f"{path}.{name}: only in the CRD")
        for name in sorted(set(model_props) - set(crd_props)):
            diffs.append(f"{path}.{name}: only in the model")
        if crd["required"] != model["required"]:
            diffs.append(
                f"{path}: CRD requires {crd['required']} but model requires {model['required']}"
            )
        if strict_bounds and not model["closed"]:
            diffs.append(f"{path}: model accepts unknown fields (extra must be 'forbid')")
        for name in sorted(set(crd_props) & set(model_props)):
            diffs += compare(
                crd_props[name], model_props[name], f"{path}.{name}", strict_bounds=strict_bounds
            )
    elif crd["kind"] == "array":
        if crd["set"] != model["set"]:
            diffs.append(f"{path}: CRD list-type set={crd['set']} but model unique={model['set']}")
        diffs += compare(crd["items"], model["items"], f"{path}[]", strict_bounds=strict_bounds)
    elif crd["kind"] == "map":
        diffs += compare(crd["values"], model["values"], f"{path}{{}}", strict_bounds=strict_bounds)
    return diffs


def spec_diffs(crd_schema: dict[str, Any], model: type[BaseModel] = TradingBotSpec) -> list[str]:
    crd = normalize_crd(crd_schema["properties"]["spec"])
    return compare(crd, model_tree(model, spec=True), "spec", strict_bounds=True)


def status_diffs(
    crd_schema: dict[str, Any], model: type[BaseModel] = TradingBotStatus
) -> list[str]:
    crd = normalize_crd(crd_schema["properties"]["status"])
    return compare(crd, model_tree(model, spec=False), "status", strict_bounds=False)


# ---------------------------------------------------------------------------------------------
# the CRD and the models agree


def test_spec_schema_and_model_agree() -> None:
    assert spec_diffs(crd_root_schema(load_crd())) == []


def test_status_schema_and_model_agree() -> None:
    assert status_diffs(crd_root_schema(load_crd())) == []


def test_crd_defaulting_and_model_defaulting_agree() -> None:
    minimal = {"profile": "stable", "exchange": {"id": "binance"}, "symbols": ["BTC/USDT"]}
    crd_spec = normalize_crd(crd_root_schema(load_crd())["properties"]["spec"])
    defaulted_by_crd = apply_crd_defaults(crd_spec, copy.deepcopy(minimal))
    assert TradingBotSpec.from_dict(minimal).to_dict() == defaulted_by_crd
    assert defaulted_by_crd["restartPolicy"] == {
        "coalesceSeconds": 2,
        "maxAttempts": 5,
        "gracePeriodSeconds": 30,
        "maxRestartsPerHour": 10,
    }
    assert defaulted_by_crd["exchange"]["mode"] == "paper"
    assert defaulted_by_crd["state"] == {"backend": "configmap"}
    assert defaulted_by_crd["suspend"] is False


def _merged(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        return {k: _merged(base.get(k), v) for k, v in over.items()} | {
            k: v for k, v in base.items() if k not in over
        }
    return over


def test_the_hash_defaults_are_the_crds_defaults() -> None:
    """A spec that leaves the defaulted fields out hashes as the API server stores it."""
    minimal = {"profile": "stable", "exchange": {"id": "binance"}, "symbols": ["BTC/USDT"]}
    crd_spec = normalize_crd(crd_root_schema(load_crd())["properties"]["spec"])
    defaulted_by_crd = apply_crd_defaults(crd_spec, copy.deepcopy(minimal))
    assert _merged(minimal, constants.SPEC_DEFAULTS) == _drop_empty(defaulted_by_crd)


# The comparator must catch drift on either side; each mutation below is one such drift.


def _crd_mutations() -> Iterator[tuple[str, Callable[[dict[str, Any]], None], str]]:
    def spec(schema: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = schema["properties"]["spec"]["properties"]
        return result

    def add_risk_field(s: dict[str, Any]) -> None:
        spec(s)["risk"]["properties"]["leverage"] = {"type": "integer"}

    def add_status_field(s: dict[str, Any]) -> None:
        s["properties"]["status"]["properties"]["pnl"]["properties"]["fees"] = {"type": "number"}

    def change_default(s: dict[str, Any]) -> None:
        spec(s)["restartPolicy"]["properties"]["coalesceSeconds"]["default"] = 3

    def drop_enum_value(s: dict[str, Any]) -> None:
        spec(s)["profile"]["enum"].remove("meme")

    def drop_status_enum_value(s: dict[str, Any]) -> None:
        s["properties"]["status"]["properties"]["phase"]["enum"].remove("Halted")

    def change_bound(s: dict[str, Any]) -> None:
        spec(s)["risk"]["properties"]["stopLossPct"]["exclusiveMaximum"] = False

    def change_max_items(s: dict[str, Any]) -> None:
        spec(s)["symbols"]["maxItems"] = 30

    def change_pattern(s: dict[str, Any]) -> None:
        spec(s)["symbols"]["items"]["pattern"] = "^.*$"

    def require_field(s: dict[str, Any]) -> None:
        spec(s)["exchange"]["required"].append("credentialsSecretRef")

    def drop_list_set(s: dict[str, Any]) -> None:
        del spec(s)["symbols"]["x-kubernetes-list-type"]

    def change_type(s: dict[str, Any]) -> None:
        spec(s)["suspend"] = {"type": "string"}

    def drop_parent_default(s: dict[str, Any]) -> None:
        del spec(s)["restartPolicy"]["default"]

    yield "added CRD field", add_risk_field, "spec.risk.leverage: only in the CRD"
    yield "added CRD status field", add_status_field, "status.pnl.fees: only in the CRD"
    yield "changed default", change_default, "spec.restartPolicy.coalesceSeconds: CRD default"
    yield "dropped enum value", drop_enum_value, "spec.profile: CRD enum"
    yield "dropped status enum value", drop_status_enum_value, "status.phase: CRD enum"
    yield "changed bound", change_bound, "spec.risk.stopLossPct: CRD exclusiveMaximum"
    yield "changed maxItems", change_max_items, "spec.symbols: CRD maxItems"
    yield "changed pattern", change_pattern, "spec.symbols[]: CRD pattern"
    yield "required field", require_field, "spec.exchange: CRD requires"
    yield "dropped set semantics", drop_list_set, "spec.symbols: CRD list-type set"
    yield "changed type", change_type, "spec.suspend: CRD type string"
    yield "dropped nested default", drop_parent_default, "spec.restartPolicy: CRD default"


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [pytest.param(m, e, id=name) for name, m, e in _crd_mutations()],
)
def test_comparator_catches_crd_drift(
    mutate: Callable[[dict[str, Any]], None], expected: str
) -> None:
    schema = copy.deepcopy(crd_root_schema(load_crd()))
    mutate(schema)
    diffs = spec_diffs(schema) + status_diffs(schema)
    assert any(d.startswith(expected) for d in diffs), diffs


def test_comparator_catches_a_field_added_to_the_spec_model() -> None:
    drifted = create_model("DriftedSpec", __base__=TradingBotSpec, leverage=(int, 1))
    diffs = spec_diffs(crd_root_schema(load_crd()), drifted)
    assert "spec.leverage: only in the model" in diffs


def test_comparator_catches_a_nested_model_change() -> None:
    risk = create_model("DriftedRisk", __base__=RiskSpec, leverage=(int | None, None))
    restart = create_model("DriftedRestart", __base__=RestartPolicySpec, max_attempts=(int, 7))
    drifted = create_model(
        "DriftedSpec",
        __base__=TradingBotSpec,
        risk=(risk | None, None),
        restart_policy=(restart, restart()),
    )
    diffs = spec_diffs(crd_root_schema(load_crd()), drifted)
    assert "spec.risk.leverage: only in the model" in diffs
    assert any(d.startswith("spec.restartPolicy.maxAttempts: CRD default 5") for d in diffs)


def test_comparator_catches_a_field_added_to_the_status_model() -> None:
    drifted = create_model("DriftedStatus", __base__=TradingBotStatus, message=(str | None, None))
    diffs = status_diffs(crd_root_schema(load_crd()), drifted)
    assert "status.message: only in the model" in diffs


# ---------------------------------------------------------------------------------------------
# the CRD itself


def test_crd_names_match_the_constants() -> None:
    crd = load_crd()
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["metadata"]["name"] == constants.CRD_NAME == "tradingbots.trading.r7.dev"
    spec = crd["spec"]
    assert spec["group"] == constants.API_GROUP
    assert spec["scope"] == "Namespaced"
    names = spec["names"]
    assert names["kind"] == constants.KIND
    assert names["plural"] == constants.PLURAL
    assert names["singular"] == constants.SINGULAR
    assert tuple(names["shortNames"]) == constants.SHORT_NAMES == ("tb", "tbot")
    assert tuple(names["categories"]) == constants.CATEGORIES == ("trading",)
    (version,) = spec["versions"]
    assert version["name"] == constants.VERSION
    assert version["served"] is True and version["storage"] is True
    assert version["subresources"] == {"status": {}}


def test_crd_printer_columns() -> None:
    (version,) = load_crd()["spec"]["versions"]
    columns = {
        c["name"]: c["jsonPath"]
        for c in version["additionalPrinterColumns"]
        if not c.get("priority")
    }
    assert columns == {
        "Profile": ".spec.profile",
        "Exchange": ".spec.exchange.id",
        "Phase": ".status.phase",
        "Ready": '.status.conditions[?(@.type=="Ready")].status',
        "Positions": ".status.positions.open",
        "PnL": ".status.pnl.realized",
        "Restarts": ".status.restarts.total",
        "Age": ".metadata.creationTimestamp",
    }


def test_crd_restricts_bot_names_as_the_constants_say() -> None:
    name = crd_root_schema(load_crd())["properties"]["metadata"]["properties"]["name"]
    assert name["maxLength"] == constants.MAX_BOT_NAME_LENGTH
    assert name["pattern"] == constants.BOT_NAME_PATTERN
    # The longest name still yields a valid label value and valid derived names.
    longest = "b" * constants.MAX_BOT_NAME_LENGTH
    assert len(constants.lease_name(longest)) <= 63
    assert len(constants.state_configmap_name(longest)) <= 63


def _walk(schema: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, child in schema.get("properties", {}).items():
        yield from _walk(child, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _walk(schema["additionalProperties"], f"{path}{{}}")


def test_crd_schema_is_structural_and_bounded() -> None:
    """Every node is typed; every spec string, list and map is bounded (CEL cost budget)."""
    root = crd_root_schema(load_crd())
    problems = []
    for path, node in _walk(root, ""):
        typed = "type" in node or node.get("x-kubernetes-int-or-string")
        if not typed:
            problems.append(f"{path}: no type")
        if "uniqueItems" in node:
            problems.append(f"{path}: uniqueItems is not allowed in a CRD")
        if not path.startswith((".spec", ".status")):
            continue
        kind = node.get("type")
        bounded_string = "enum" in node or "maxLength" in node or node.get("format") == "date-time"
        if kind == "string" and not bounded_string:
            problems.append(f"{path}: string without maxLength")
        if kind == "array" and "maxItems" not in node:
            problems.append(f"{path}: array without maxItems")
        if kind == "object" and "additionalProperties" in node and "maxProperties" not in node:
            problems.append(f"{path}: map without maxProperties")
        if node.get("x-kubernetes-preserve-unknown-fields") and "maxProperties" not in node:
            problems.append(f"{path}: free-form object without maxProperties")
    assert problems == []


def _cel_rules() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    rules = []
    for path, node in _walk(crd_root_schema(load_crd()), ""):
        for rule in node.get("x-kubernetes-validations", []):
            rules.append((path, node, rule))
    return rules


def test_every_cel_rule_names_its_field() -> None:
    rules = _cel_rules()
    assert len(rules) >= 10
    for path, node, rule in rules:
        message = rule.get("message", "")
        assert message, f"{path}: rule {rule['rule']!r} has no message"
        assert "\n" not in rule["rule"] + message
        if "fieldPath" in rule:
            # The field path must exist in the schema and the message must name it.
            target = node
            for part in rule["fieldPath"].lstrip(".").split("."):
                target = target["properties"][part]
            assert rule["fieldPath"].rsplit(".", 1)[-1] in message, (path, message)
        else:
            # Without a fieldPath the error is reported at the node; the message names it.
            owner = re.sub(r"\[\]$", "", path).rsplit(".", 1)[-1]
            assert owner in message, (path, message)
        if "reason" in rule:
            assert rule["reason"] in {
                "FieldValueInvalid",
                "FieldValueForbidden",
                "FieldValueRequired",
                "FieldValueDuplicate",
            }


def test_cel_rules_are_syntactically_plausible() -> None:
    """A cheap offline check; the API server compiles every rule when the CRD is installed."""
    for path, node, rule in _cel_rules():
        expression = rule["rule"]
        assert expression.count("(") == expression.count(")"), (path, expression)
        assert expression.count("'") % 2 == 0, (path, expression)
        assert '"' not in expression, (path, expression)
        assert re.search(r"\bself\b", expression), (path, expression)
        # Names used as self.<field> must exist in the schema node the rule sits on.
        for field in re.findall(r"(?:self|oldSelf)\.([A-Za-z]+)", expression):
            if field not in {"split", "matches", "contains", "size", "all"}:
                assert field in node.get("properties", {}), (path, field)


def test_transition_rules_only_on_nodes_that_always_exist_together() -> None:
    """oldSelf rules are skipped when the old object lacks the node; list them deliberately."""
    with_old = sorted(path for path, _, rule in _cel_rules() if "oldSelf" in rule["rule"])
    assert with_old == [
        ".spec.exchange",
        ".spec.exchange",
        ".spec.state",
        ".spec.state.pvc",
        ".spec.state.pvc",
    ]


# ---------------------------------------------------------------------------------------------
# samples


def test_kustomization_lists_the_four_samples() -> None:
    kustomization = yaml.safe_load((SAMPLES_DIR / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == sorted(load_samples())
    assert len(kustomization["resources"]) == 4


@pytest.mark.parametrize("file_name", sorted(load_samples()))
def test_sample_parses_and_matches_its_profile(file_name: str) -> None:
    obj = load_samples()[file_name]
    bot = TradingBot.from_dict(obj)
    assert obj["apiVersion"] == constants.API_VERSION
    assert obj["kind"] == constants.KIND
    assert file_name == f"{bot.metadata.name}.yaml"
    assert bot.spec.profile == SAMPLE_PROFILES[bot.metadata.name]
    assert re.fullmatch(constants.BOT_NAME_PATTERN, bot.metadata.name)
    assert bot.spec.exchange.id == "binance"
    assert bot.spec.exchange.mode == ExchangeMode.PAPER
    assert bot.spec.exchange.credentials_secret_ref is None
    assert bot.spec.suspend is False
    assert bot.spec.risk is not None
    assert all(s.endswith("/USDT") for s in bot.spec.symbols)
    # Defaults the samples leave out come from the models, equal to the CRD's.
    assert bot.spec.state.backend == StateBackend.CONFIGMAP
    assert bot.spec.restart_policy.coalesce_seconds == constants.DEFAULT_COALESCE_SECONDS
    assert bot.status == TradingBotStatus()


def test_sample_risk_grows_with_the_profile() -> None:
    bots = {b.spec.profile: b for b in (TradingBot.from_dict(o) for o in load_samples().values())}
    order = [Profile.STABLE, Profile.MEDIUM, Profile.VOLATILE, Profile.MEME]
    risks = [bots[p].spec.risk for p in order]
    stops = [r.stop_loss_pct if r else None for r in risks]
    notionals = [r.max_position_notional if r else None for r in risks]
    assert None not in stops and None not in notionals, "every sample states its limits"
    stops_set = [s for s in stops if s is not None]
    notionals_set = [n for n in notionals if n is not None]
    assert stops_set == sorted(stops_set), "riskier profiles get wider stops"
    assert notionals_set == sorted(notionals_set, reverse=True), "riskier: smaller positions"


# ---------------------------------------------------------------------------------------------
# the integration table agrees with the models


def test_invalid_spec_table_is_large_and_well_formed() -> None:
    table = load_table()
    names = [name for name, _, _ in table.INVALID_SPECS]
    assert len(names) >= 20
    assert len(set(names)) == len(names)
    for name, spec, field in table.INVALID_SPECS:
        assert spec != table.VALID_BASE_SPEC, name
        assert field.startswith("spec"), name


@pytest.mark.parametrize(
    ("spec", "field"), [pytest.param(s, f, id=n) for n, s, f in load_table().INVALID_SPECS]
)
def test_models_reject_what_the_api_server_rejects(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        TradingBotSpec.from_dict(spec)
    messages = validation_messages(caught.value)
    assert any(field in m for m in messages), messages


@pytest.mark.parametrize("spec", [pytest.param(s, id=n) for n, s in load_table().VALID_SPECS])
def test_models_accept_what_the_api_server_accepts(spec: dict[str, Any]) -> None:
    TradingBotSpec.from_dict(spec)


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [pytest.param(o, n, f, id=name) for name, o, n, f in load_table().INVALID_UPDATES],
)
def test_invalid_updates_are_valid_specs_on_their_own(
    old: dict[str, Any], new: dict[str, Any], field: str
) -> None:
    """Only the edit is wrong, so the table tests the transition rule and nothing else."""
    TradingBotSpec.from_dict(old)
    TradingBotSpec.from_dict(new)
    assert old != new
    assert field.startswith("spec.")


def test_unknown_spec_fields_are_rejected_by_the_models() -> None:
    # The API server prunes unknown fields (or rejects them with fieldValidation=Strict);
    # code building specs must not get a silent no-op either.
    spec = {**load_table().VALID_BASE_SPEC, "leverage": 10}
    with pytest.raises(ValidationError) as caught:
        TradingBotSpec.from_dict(spec)
    assert validation_messages(caught.value) == ["spec.leverage: Extra inputs are not permitted"]


# ---------------------------------------------------------------------------------------------
# models


def test_spec_accepts_python_names_and_dumps_json_names() -> None:
    spec = TradingBotSpec(
        profile=Profile.MEME,
        exchange=models.ExchangeSpec(id="binance"),
        symbols=["DOGE/USDT"],
        restart_policy=RestartPolicySpec(max_restarts_per_hour=3),
    )
    dumped = spec.to_dict()
    assert dumped["restartPolicy"]["maxRestartsPerHour"] == 3
    assert TradingBotSpec.from_dict(dumped) == spec


def test_from_dict_takes_any_mapping_and_missing_status() -> None:
    from types import MappingProxyType

    obj = {
        "apiVersion": constants.API_VERSION,
        "kind": constants.KIND,
        "metadata": {
            "name": "bot-x",
            "namespace": "trading",
            "uid": "1234",
            "generation": 3,
            "resourceVersion": "77",
            "annotations": {constants.ANNOTATION_HALT: "true"},
            "labels": {},
            "managedFields": [{"manager": "kubectl"}],
        },
        "spec": MappingProxyType(
            {"profile": "stable", "exchange": {"id": "binance"}, "symbols": ("BTC/USDT",)}
        ),
        "status": None,
    }
    bot = TradingBot.from_dict(MappingProxyType(obj))
    assert bot.metadata.resource_version == "77"
    assert bot.metadata.annotations[constants.ANNOTATION_HALT] == constants.HALT_VALUE
    assert bot.spec.symbols == ["BTC/USDT"]
    assert bot.status.phase is None
    assert bot.status.restarts.total == 0


def _full_status() -> dict[str, Any]:
    return {
        "phase": "Running",
        "observedGeneration": 4,
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "BotReady",
                "message": "bot is trading",
                "lastTransitionTime": "2026-01-02T03:04:05Z",
                "observedGeneration": 4,
            }
        ],
        "configHash": "abc",
        "desiredConfigHash": "abc",
        "pod": {"name": "bot-x", "uid": "u-1"},
        "pendingAction": {
            "action": "restart",
            "reason": "spec changed",
            "firstRequestedAt": "2026-01-02T03:04:05Z",
            "lastRequestedAt": "2026-01-02T03:04:06Z",
            "coalescedChanges": 2,
            "attempts": 1,
            "notBefore": "2026-01-02T03:04:08Z",
            "changedFields": ["spec.symbols"],
        },
        "restarts": {
            "total": 3,
            "history": ["2026-01-02T03:00:02Z"],
            "last": {
                "reason": "config change",
                "changedFields": ["spec.risk.stopLossPct"],
                "requestedAt": "2026-01-02T03:00:00Z",
                "startedAt": "2026-01-02T03:00:02Z",
                "completedAt": "2026-01-02T03:00:07Z",
                "durationSeconds": 5.0,
                "result": "succeeded",
                "attempts": 1,
            },
        },
        "positions": {"open": 1, "symbols": ["BTC/USDT"], "notional": 950.5},
        "pnl": {"realized": 12.5, "unrealized": -1.25},
        "trades": {"total": 10, "wins": 6},
        "state": {
            "backend": "configmap",
            "checkpointSeq": 42,
            "savedAt": "2026-01-02T03:04:05Z",
            "lastShutdownClean": True,
            "restoredFromSeq": 41,
        },
        "auditOutbox": [{"dedup_key": "uid:1:0", "event_type": "restart", "details": {}}],
        "kopf": {"progress": {}},  # written by other tools; ignored, not an error
    }


def test_status_round_trips_by_alias() -> None:
    status = TradingBotStatus.model_validate(_full_status())
    assert status.phase == Phase.RUNNING
    assert status.restarts.last is not None and status.restarts.last.duration_seconds == 5.0
    expected = _full_status()
    del expected["kopf"]
    assert status.to_dict() == expected


def test_status_patch_clears_what_is_unset() -> None:
    status = TradingBotStatus.model_validate(_full_status())
    status.pending_action = None
    patch = status.to_patch()
    assert patch["pendingAction"] is None  # a merge patch removes it
    assert patch["restarts"]["total"] == 3
    assert "pending_action" not in patch


def test_set_condition_moves_transition_time_only_on_status_change() -> None:
    status = TradingBotStatus()
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    status.set_condition(ConditionType.READY, ConditionStatus.FALSE, "Starting", "starting", t0)
    t1 = t0 + timedelta(seconds=5)
    same = status.set_condition(
        ConditionType.READY, ConditionStatus.FALSE, "Restoring", "restoring", t1
    )
    assert same.last_transition_time == t0
    assert same.reason == "Restoring"
    t2 = t1 + timedelta(seconds=5)
    flipped = status.set_condition(ConditionType.READY, ConditionStatus.TRUE, "Ready", "ok", t2, 7)
    assert flipped.last_transition_time == t2
    assert flipped.observed_generation == 7
    assert [c.type for c in status.conditions] == [ConditionType.READY]
    assert status.to_dict()["conditions"][0]["lastTransitionTime"] == "2026-01-01T00:00:10Z"


def test_validation_messages_use_json_names() -> None:
    spec = load_table().spec_with({"exchange.mode": "live"})
    with pytest.raises(ValidationError) as caught:
        TradingBotSpec.from_dict(spec)
    assert validation_messages(caught.value) == [
        "spec.exchange.credentialsSecretRef: exchange.credentialsSecretRef is "
        "required when exchange.mode is live"
    ]


# ---------------------------------------------------------------------------------------------
# names other tools rely on


def test_stable_names() -> None:
    assert constants.LABEL_BOT == "trading.r7.dev/bot"
    assert constants.ANNOTATION_CONFIG_HASH == "trading.r7.dev/config-hash"
    assert constants.ANNOTATION_RESTARTED_AT == "trading.r7.dev/restartedAt"
    assert constants.KUBECTL_RESTARTED_AT == "kubectl.kubernetes.io/restartedAt"
    assert constants.ANNOTATION_RESTART_REASON == "trading.r7.dev/restart-reason"
    assert constants.ANNOTATION_HALT == "trading.r7.dev/halt"
    assert constants.STATE_KEY == "state.json"
    assert constants.STATE_PREV_KEY == "state.prev.json"
    assert constants.state_configmap_name("bot-meme") == "bot-meme-state"
    assert constants.lease_name("bot-meme") == "bot-meme-trader"
    assert [p.value for p in Phase] == [
        "Pending",
        "Starting",
        "Running",
        "Restarting",
        "Stopping",
        "Stopped",
        "Halted",
        "Failed",
    ]


def test_every_api_key_derives_from_the_group() -> None:
    keys = [v for k, v in vars(constants).items() if k.startswith(("LABEL_", "ANNOTATION_"))]
    assert keys and all(v.startswith(constants.API_GROUP + "/") for v in keys)


def test_the_crd_carries_exactly_the_rules_the_parameter_table_implies() -> None:
    from tradingbot_api.cel import spec_rules

    spec_node = crd_root_schema(load_crd())["properties"]["spec"]
    assert spec_node.get("x-kubernetes-validations") == spec_rules(), (
        "regenerate the spec-level rules from tradingbot_api.cel.spec_rules()"
    )


def test_the_crd_lists_the_static_exchange_ids() -> None:
    from tradingbot_api.exchanges import EXCHANGE_IDS

    exchange = crd_root_schema(load_crd())["properties"]["spec"]["properties"]["exchange"]
    assert exchange["properties"]["id"]["enum"] == list(EXCHANGE_IDS)
