"""Typed view of TradingBot objects (SPEC §3), shared by the operator, the webhook and the bot.

The CRD in ``crds/`` is the contract the API server enforces; these models state the same
fields, enums, bounds and defaults so that code never works on a dict it has to second-guess,
and so that the cross-field rules the CRD checks with CEL are also checked where no API server
is involved (unit tests, the bot reading its own spec). ``tests/unit/test_crd_models.py``
proves the two agree.

* Spec models forbid unknown fields and use strict scalar types: the API server would reject
  ``"5"`` for an integer or ``"yes"`` for a boolean, so the models do too.
* Status models ignore unknown fields: status is written by the operator and the bot, and an
  older reader must not fail on a newer writer's extra field.
* JSON names are camelCase aliases; Python code uses snake_case (both are accepted as input).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    PlainValidator,
    StrictBool,
    StrictInt,
    StringConstraints,
    ValidationInfo,
    WithJsonSchema,
    create_model,
    field_validator,
)

from tradingbot_api.base import SpecModel as _SpecModel
from tradingbot_api.base import StatusModel as _StatusModel
from tradingbot_api.base import plain as _plain
from tradingbot_api.constants import (
    API_VERSION,
    DEFAULT_COALESCE_SECONDS,
    DEFAULT_EXCHANGE_MODE,
    DEFAULT_GRACE_PERIOD_SECONDS,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_RESTARTS_PER_HOUR,
    DEFAULT_STATE_BACKEND,
    KIND,
    MAX_SYMBOLS,
    ExchangeMode,
    Profile,
    StateBackend,
    TaintEffect,
    TolerationOperator,
)
from tradingbot_api.errors import validation_messages  # noqa: F401 - part of this API
from tradingbot_api.exchanges import EXCHANGE_IDS
from tradingbot_api.params import (
    CROSS_RULES,
    ParamSpec,
    all_param_specs,
    param_names,
    resolve_params,
)
from tradingbot_api.status import (  # noqa: F401 - the status models are part of this API
    Condition,
    ContainerStatus,
    KillSwitchStatus,
    LastChange,
    PendingAction,
    PnlStatus,
    PodRef,
    PositionsStatus,
    RestartRecord,
    RestartsStatus,
    StateStatus,
    TradesStatus,
    TradingBotStatus,
)

# Patterns shared with the CRD (the unit tests compare them string for string).
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SYMBOL_PATTERN = r"^[A-Z0-9]{1,20}/[A-Z0-9]{1,20}$"
IMAGE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/@-]*$"
QUANTITY_PATTERN = (
    r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
PVC_SIZE_PATTERN = r"^[1-9][0-9]{0,5}(Mi|Gi|Ti|M|G|T)$"
# Label keys and values as the pod API checks them (nodeSelector, toleration keys).
QUALIFIED_NAME_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$"
BOT_RESOURCES = ("cpu", "memory", "ephemeral-storage")

_QUANTITY_MAX_LENGTH = 64


# ---------------------------------------------------------------------------------------------
# spec


def _quantity(value: object) -> int | str:
    """Accept what Kubernetes accepts for a resource quantity: a non-negative integer or a
    quantity string such as ``500m`` or ``1Gi`` (one error, located at the map key)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError("a quantity must not be negative")
        return value
    if (
        isinstance(value, str)
        and len(value) <= _QUANTITY_MAX_LENGTH
        and re.fullmatch(QUANTITY_PATTERN, value)
    ):
        return value
    raise ValueError(f"{value!r} is not a Kubernetes quantity (for example 500m, 1, 256Mi)")


Quantity = Annotated[
    int | str,
    PlainValidator(_quantity),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {
                    "type": "string",
                    "pattern": QUANTITY_PATTERN,
                    "maxLength": _QUANTITY_MAX_LENGTH,
                },
            ]
        }
    ),
]


def _base_differs_from_quote(symbol: str) -> str:
    base, _, quote = symbol.partition("/")
    if base == quote:
        raise ValueError(f"symbol {symbol!r}: base and quote currency must differ")
    return symbol


Symbol = Annotated[
    str,
    StringConstraints(max_length=41, pattern=SYMBOL_PATTERN),
    AfterValidator(_base_differs_from_quote),
]
DnsSubdomain = Annotated[str, StringConstraints(max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)]
StrictNumber = Annotated[float, Field(strict=True)]


class CredentialsSecretRef(_SpecModel):
    """The Secret (same namespace) holding ``apiKey`` and ``secret``; never put keys in spec."""

    name: DnsSubdomain


def _known_exchange(exchange_id: str) -> str:
    if exchange_id not in EXCHANGE_IDS:
        raise ValueError(
            f"{exchange_id!r} is not a ccxt exchange id (for example binance, kraken, coinbase)"
        )
    return exchange_id


ExchangeId = Annotated[
    str,
    StringConstraints(max_length=40),
    AfterValidator(_known_exchange),
    WithJsonSchema({"type": "string", "maxLength": 40, "enum": list(EXCHANGE_IDS)}),
]


class ExchangeSpec(_SpecModel):
    """Which exchange the bot trades on and whether real orders are sent."""

    id: ExchangeId
    mode: ExchangeMode = ExchangeMode(DEFAULT_EXCHANGE_MODE)
    credentials_secret_ref: CredentialsSecretRef | None = Field(default=None, validate_default=True)

    @field_validator("credentials_secret_ref")
    @classmethod
    def _required_unless_paper(
        cls, value: CredentialsSecretRef | None, info: ValidationInfo
    ) -> CredentialsSecretRef | None:
        # Sandbox and live modes talk to the exchange with keys; paper mode simulates fills.
        mode = info.data.get("mode")
        if value is None and mode is not None and mode != ExchangeMode.PAPER:
            raise ValueError(
                f"exchange.credentialsSecretRef is required when exchange.mode is {mode}"
            )
        return value


def _param_field(spec: ParamSpec) -> tuple[Any, Any]:
    """A typed, bounded, optional field for one strategy parameter (an omitted one takes the
    profile's default)."""
    if spec.kind is str:
        return (
            Annotated[
                str,
                StringConstraints(max_length=16),
                WithJsonSchema({"type": "string", "maxLength": 16, "enum": list(spec.choices)}),
                AfterValidator(_one_of(spec)),
            ]
            | None,
            Field(default=None, description=spec.doc),
        )
    low, high = spec.minimum, spec.maximum
    exclusive = spec.exclusive_minimum
    kind = StrictInt if spec.kind is int else StrictNumber
    return kind | None, Field(
        default=None,
        description=spec.doc,
        gt=low if exclusive else None,
        ge=None if exclusive else low,
        le=high,
    )


def _one_of(spec: ParamSpec) -> Any:
    def check(value: str) -> str:
        if value not in spec.choices:
            raise ValueError(f"must be one of {', '.join(spec.choices)}, got {value!r}")
        return value

    return check


MAX_STRATEGY_PARAMS = 32


class _StrategyParamsBase(_SpecModel):
    # The CRD keeps unknown names (so the admission policy can refuse them by name instead of
    # the API server silently pruning a typo); this model refuses them too.
    model_config = ConfigDict(json_schema_extra={"maxProperties": MAX_STRATEGY_PARAMS})


StrategyParams = create_model(  # type: ignore[call-overload]
    "StrategyParams",
    __base__=_StrategyParamsBase,
    __doc__="Strategy parameters: a closed set per profile (see tradingbot_api.params).",
    **{name: _param_field(spec) for name, spec in all_param_specs().items()},
)


class StrategySpec(_SpecModel):
    """Strategy tuning; which parameters are allowed depends on the profile."""

    params: StrategyParams = Field(default_factory=StrategyParams)

    def set_params(self) -> dict[str, Any]:
        """The parameters the spec sets (JSON names), omitted ones left out."""
        return dict(self.params.model_dump(by_alias=True, exclude_none=True))


class RiskSpec(_SpecModel):
    """Risk limits enforced before every order; an omitted limit takes the profile preset."""

    max_position_notional: StrictNumber | None = Field(default=None, gt=0, le=1_000_000_000)
    max_open_positions: StrictInt | None = Field(default=None, ge=1, le=100)
    stop_loss_pct: StrictNumber | None = Field(default=None, gt=0, lt=100)
    take_profit_pct: StrictNumber | None = Field(default=None, gt=0, le=1000)
    max_daily_loss_pct: StrictNumber | None = Field(default=None, gt=0, le=100)


class PvcSpec(_SpecModel):
    """The claim that holds the state file when ``state.backend`` is ``pvc``."""

    size: Annotated[str, StringConstraints(max_length=8, pattern=PVC_SIZE_PATTERN)]
    storage_class_name: DnsSubdomain | None = None


class StateSpec(_SpecModel):
    """Where the bot checkpoints positions, balances and fills."""

    backend: StateBackend = StateBackend(DEFAULT_STATE_BACKEND)
    pvc: PvcSpec | None = Field(default=None, validate_default=True)

    @field_validator("pvc")
    @classmethod
    def _pvc_matches_backend(cls, value: PvcSpec | None, info: ValidationInfo) -> PvcSpec | None:
        # A pvc section the backend ignores would mislead; a pvc backend without a size
        # cannot create its claim.
        backend = info.data.get("backend")
        if backend is None:
            return value
        if value is not None and backend != StateBackend.PVC:
            raise ValueError("state.pvc is only allowed when state.backend is pvc")
        if value is None and backend == StateBackend.PVC:
            raise ValueError("state.pvc.size is required when state.backend is pvc")
        return value


class RestartPolicySpec(_SpecModel):
    """How changes turn into restarts (SPEC §4)."""

    coalesce_seconds: StrictInt = Field(default=DEFAULT_COALESCE_SECONDS, ge=0, le=3600)
    max_attempts: StrictInt = Field(default=DEFAULT_MAX_ATTEMPTS, ge=1, le=100)
    grace_period_seconds: StrictInt = Field(default=DEFAULT_GRACE_PERIOD_SECONDS, ge=1, le=3600)
    max_restarts_per_hour: StrictInt = Field(default=DEFAULT_MAX_RESTARTS_PER_HOUR, ge=1, le=3600)


_SUFFIXES: dict[str, int | Decimal] = {
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
    "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": 1,
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
}  # fmt: skip


def quantity_value(value: int | str) -> Decimal:
    """A Kubernetes quantity as a number (`500m` is 0.5, `1Gi` is 2**30)."""
    text = str(value)
    match = re.fullmatch(r"([0-9.]+)([eE][-+]?[0-9.]+)?([KMGTPE]i|[numkMGTPE])?", text)
    if match is None:
        raise ValueError(f"{value!r} is not a Kubernetes quantity")
    number = Decimal(match.group(1) + (match.group(2) or ""))
    return number * Decimal(_SUFFIXES[match.group(3) or ""])


def _bot_resources(values: dict[str, int | str] | None) -> dict[str, int | str] | None:
    for name in values or {}:
        if name not in BOT_RESOURCES:
            raise ValueError(
                f"resources: only {', '.join(BOT_RESOURCES)} can be set for a bot, got {name!r}"
            )
    return values


BotResources = Annotated[
    Annotated[dict[str, Quantity], Field(max_length=16)] | None, AfterValidator(_bot_resources)
]


class ResourcesSpec(_SpecModel):
    """Container resources of the bot pod: cpu, memory and ephemeral-storage, each request
    at most its limit (the pod API refuses anything else)."""

    limits: BotResources = None
    requests: BotResources = Field(default=None, validate_default=True)

    @field_validator("requests")
    @classmethod
    def _requests_within_limits(
        cls, requests: dict[str, int | str] | None, info: ValidationInfo
    ) -> dict[str, int | str] | None:
        limits = info.data.get("limits") or {}
        for name, value in (requests or {}).items():
            if name in limits and quantity_value(value) > quantity_value(limits[name]):
                raise ValueError(f"resources: the {name} request {value} exceeds its limit")
        return requests


def _short_prefix(key: str) -> str:
    if "/" in key and len(key.split("/")[0]) > 253:
        raise ValueError("tolerations: the prefix of a key is a DNS name of at most 253 characters")
    return key


def _label_keys(labels: dict[str, str] | None) -> dict[str, str] | None:
    for key in labels or {}:
        if not (len(key) <= 317 and re.fullmatch(QUALIFIED_NAME_PATTERN, key)):
            raise ValueError(
                "nodeSelector: every key must be a label key (an optional DNS prefix and /, then "
                "at most 63 letters, digits, -, _ or .)"
            )
        _short_prefix(key)
    return labels


class Toleration(_SpecModel):
    """A pod toleration, with the rules the pod API would otherwise reject at pod creation.

    Each rule is a validator of the field it reports, so errors name that field.
    """

    key: (
        Annotated[
            str,
            StringConstraints(max_length=317, pattern=QUALIFIED_NAME_PATTERN),
            AfterValidator(_short_prefix),
        ]
        | None
    ) = None
    operator: TolerationOperator | None = Field(default=None, validate_default=True)
    value: Annotated[str, StringConstraints(max_length=63)] | None = Field(
        default=None, validate_default=True
    )
    effect: TaintEffect | None = None
    toleration_seconds: StrictInt | None = Field(default=None, ge=0, validate_default=True)

    @field_validator("operator")
    @classmethod
    def _exists_without_key(
        cls, operator: TolerationOperator | None, info: ValidationInfo
    ) -> TolerationOperator | None:
        if "key" in info.data and not info.data["key"] and operator != TolerationOperator.EXISTS:
            raise ValueError("tolerations: operator must be Exists when key is empty")
        return operator

    @field_validator("value")
    @classmethod
    def _no_value_with_exists(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value and info.data.get("operator") == TolerationOperator.EXISTS:
            raise ValueError("tolerations: value must be empty when operator is Exists")
        return value

    @field_validator("toleration_seconds")
    @classmethod
    def _seconds_need_no_execute(cls, seconds: int | None, info: ValidationInfo) -> int | None:
        effect_known = "effect" in info.data  # absent when the effect itself was invalid
        if seconds is not None and effect_known and info.data["effect"] != TaintEffect.NO_EXECUTE:
            raise ValueError("tolerations: tolerationSeconds requires effect NoExecute")
        return seconds


class TradingBotSpec(_SpecModel):
    """``spec`` of a TradingBot: everything a user may set (SPEC §3)."""

    profile: Profile
    exchange: ExchangeSpec
    symbols: list[Symbol] = Field(
        min_length=1, max_length=MAX_SYMBOLS, json_schema_extra={"uniqueItems": True}
    )
    strategy: StrategySpec = Field(default_factory=StrategySpec)
    risk: RiskSpec | None = None
    suspend: StrictBool = False
    image: Annotated[str, StringConstraints(max_length=512, pattern=IMAGE_PATTERN)] | None = None
    resources: ResourcesSpec | None = None
    node_selector: Annotated[
        dict[str, Annotated[str, StringConstraints(max_length=63, pattern=LABEL_VALUE_PATTERN)]]
        | None,
        AfterValidator(_label_keys),
    ] = Field(default=None, max_length=32)
    tolerations: list[Toleration] | None = Field(default=None, max_length=32)
    state: StateSpec = Field(default_factory=StateSpec)
    restart_policy: RestartPolicySpec = Field(default_factory=RestartPolicySpec)

    @field_validator("symbols")
    @classmethod
    def _unique_symbols(cls, symbols: list[str]) -> list[str]:
        # The same market twice would double the position limits for it.
        seen: set[str] = set()
        for index, symbol in enumerate(symbols):
            if symbol in seen:
                raise ValueError(f"symbols[{index}]: duplicate symbol {symbol!r}")
            seen.add(symbol)
        return symbols

    @field_validator("symbols")
    @classmethod
    def _one_quote_currency(cls, symbols: list[str]) -> list[str]:
        # Equity, PnL and every limit are counted in one currency.
        quote = symbols[0].partition("/")[2] if symbols else ""
        for index, symbol in enumerate(symbols):
            if symbol.partition("/")[2] != quote:
                raise ValueError(
                    f"symbols[{index}]: all symbols must share one quote currency "
                    f"({quote}), got {symbol!r}"
                )
        return symbols

    @field_validator("strategy")
    @classmethod
    def _params_of_profile(cls, strategy: StrategySpec, info: ValidationInfo) -> StrategySpec:
        # Each profile accepts its own parameters only: a typo or another profile's knob
        # must not silently fall back to a default while real money is at stake.
        profile = info.data.get("profile")
        if profile is None:
            return strategy
        params = strategy.set_params()
        known = param_names(profile)
        for name in params:
            if name not in known:
                raise ValueError(
                    f"strategy.params.{name}: not a parameter of profile {profile} "
                    f"(known: {', '.join(sorted(known))})"
                )
        resolved = resolve_params(profile, params, validate=False)
        for rule in CROSS_RULES:
            if rule.profile == profile and not rule.holds(resolved):
                raise ValueError(rule.message(resolved).removeprefix("spec."))
        return strategy

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> TradingBotSpec:
        """Parse a spec as stored by the API server (camelCase keys)."""
        return cls.model_validate(_plain(spec))

    def to_dict(self) -> dict[str, Any]:
        """The spec as JSON with CRD names, omitting unset optional fields."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


# ---------------------------------------------------------------------------------------------
# the object (status models: tradingbot_api.status)


class ObjectMeta(_StatusModel):
    """The parts of ``metadata`` the operator and the bot use."""

    name: str
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    resource_version: str | None = None
    deletion_timestamp: datetime | None = None
    annotations: dict[str, str] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)


class TradingBot(_StatusModel):
    """A whole TradingBot object; spec is strict, everything else tolerant."""

    api_version: str = API_VERSION
    kind: str = KIND
    metadata: ObjectMeta
    spec: TradingBotSpec
    status: TradingBotStatus = Field(default_factory=TradingBotStatus)

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> TradingBot:
        """Parse an object as returned by the API server or handed over by kopf.

        Accepts any mapping (kopf bodies are read-only mapping views); a missing or null
        ``status`` becomes an empty status.
        """
        data = _plain(obj)
        if data.get("status") is None:
            data.pop("status", None)
        return cls.model_validate(data)

    def to_dict(self) -> dict[str, Any]:
        """The object as JSON with API names, omitting unset fields."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
