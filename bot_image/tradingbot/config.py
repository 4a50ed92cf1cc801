"""The bot's configuration: process settings from the environment, trading config from its
TradingBot object. Both are validated at start-up so a mistake fails fast with a message
naming the variable or field.

Environment (set by the operator's pod template; defaults for running by hand):

| variable                    | default             | meaning                                  |
|-----------------------------|---------------------|------------------------------------------|
| BOT_NAME                    | (required)          | the TradingBot this process runs         |
| POD_NAMESPACE               | pod namespace file  | its namespace                            |
| POD_NAME / POD_UID          | host name / empty   | identity in the Lease, Events and state  |
| POD_IP                      | 127.0.0.1           | address of /metrics, /healthz, /readyz   |
| METRICS_PORT                | 8080                | port of the same                         |
| KUBECONFIG                  | in-cluster config   | API access when run outside a pod        |
| GRACE_PERIOD_SECONDS        | 30                  | SIGTERM-to-SIGKILL budget                |
| STATE_DIR                   | /var/lib/tradingbot | state directory when state.backend=pvc   |
| CREDENTIALS_DIR             | /var/run/secrets/   | directory with the files apiKey and      |
|                             | trading.r7.dev/     | secret (the mounted credentials Secret); |
|                             | credentials         | read in sandbox and live mode only       |
| TICK_SECONDS                | 1.0                 | trading loop period                      |
| CHECKPOINT_INTERVAL_SECONDS | 30                  | periodic checkpoint period               |
| LEASE_DURATION_SECONDS      | 15                  | Lease duration (renew every third of it) |
| PRICE_FEED                  | strategy param      | seeded, live or auto (overrides params)  |
| LOG_LEVEL                   | INFO                | log level                                |
| AUDIT_URL                   | unset (no reporting)| audit sidecar base URL (http or https);  |
|                             |                     | fills, halts and errors are reported     |
| FLEET_SWITCH                | unset (none)        | `namespace/name` of the fleet-wide kill  |
|                             |                     | switch ConfigMap (data key `halt`)       |
| CONTROL_WATCH_TIMEOUT_SECONDS | 10                | server timeout of the watches on the     |
|                             |                     | TradingBot and the fleet switch; silent  |
|                             |                     | for 3x this long pauses new entries      |

The Lease holder identity is `<POD_NAME>_<POD_UID>_<nonce>`, the nonce drawn per process.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from annotated_types import Ge, Le
from pydantic import Field, PrivateAttr, ValidationError, ValidationInfo, field_validator
from pydantic_core import PydanticUseDefault
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from tradingbot.risk import RiskLimits, validate_risk
from tradingbot_api.constants import (
    CONTROL_WATCH_TIMEOUT_ENV,
    CREDENTIALS_DIR,
    FLEET_SWITCH_ENV,
    ExchangeMode,
    Profile,
    StateBackend,
)
from tradingbot_api.models import TradingBotSpec, validation_messages
from tradingbot_api.params import resolve_params, validate_params

# Where the operator's pod template mounts the credentials Secret.
DEFAULT_CREDENTIALS_DIR = CREDENTIALS_DIR
NAMESPACE_ENV: Final = "POD_NAMESPACE"
PRICE_FEEDS: Final = ("seeded", "live", "auto")

# Names as the API accepts them: a ConfigMap's (DNS subdomain), a namespace's (DNS label).
_DNS_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")

# Why a required variable matters, for the message when it is missing.
_REQUIRED: Final = {
    "BOT_NAME": "required (the TradingBot to run)",
    NAMESPACE_ENV: "required outside a pod",
}


class ConfigError(Exception):
    """Configuration the bot must not run with; the message names what to fix."""


def new_nonce() -> str:
    """Drawn once per process: what tells two processes of one pod apart in the Lease."""
    return secrets.token_hex(6)


def parse_fleet_switch(raw: str | None) -> tuple[str, str] | None:
    """`namespace/name` as a pair; None when unset; ValueError naming the problem."""
    text = (raw or "").strip()
    if not text:
        return None
    namespace, sep, name = text.partition("/")
    if not sep or not _NAMESPACE.match(namespace):
        raise ValueError(f"must be namespace/name, got {text[:300]!r}")
    if not _DNS_NAME.match(name):
        raise ValueError(f"{name[:300]!r} is not a ConfigMap name")
    return namespace, name


class Settings(BaseSettings):
    """The process settings; each field reads the environment variable of the table above
    (exact names, no prefix: the operator's pod template sets them). An empty or blank value
    counts as unset."""

    model_config = SettingsConfigDict(
        frozen=True,
        case_sensitive=True,
        extra="ignore",
        validate_by_name=True,
        validate_default=False,  # the defaults are right as written; blank ones stay blank
    )

    bot_name: str = Field(validation_alias="BOT_NAME", min_length=1)
    namespace: str = Field(validation_alias=NAMESPACE_ENV, min_length=1)
    pod_name: str = Field(default_factory=socket.gethostname, validation_alias="POD_NAME")
    pod_uid: str = Field("", validation_alias="POD_UID")
    pod_ip: str = Field("127.0.0.1", validation_alias="POD_IP")
    metrics_port: int = Field(8080, ge=0, le=65535, validation_alias="METRICS_PORT")
    kubeconfig: str | None = Field(None, validation_alias="KUBECONFIG")
    grace_period_seconds: float = Field(
        30.0, ge=1, le=3600, validation_alias="GRACE_PERIOD_SECONDS"
    )
    state_dir: str = Field("/var/lib/tradingbot", validation_alias="STATE_DIR")
    credentials_dir: str = Field(DEFAULT_CREDENTIALS_DIR, validation_alias="CREDENTIALS_DIR")
    tick_seconds: float = Field(1.0, ge=0.01, le=3600, validation_alias="TICK_SECONDS")
    checkpoint_interval_seconds: float = Field(
        30.0, ge=0.1, le=86400, validation_alias="CHECKPOINT_INTERVAL_SECONDS"
    )
    lease_duration_seconds: int = Field(
        15, ge=3, le=3600, validation_alias="LEASE_DURATION_SECONDS"
    )
    price_feed: str | None = Field(None, validation_alias="PRICE_FEED")
    log_level: str = Field("INFO", validation_alias="LOG_LEVEL")
    config_hash: str = Field("", validation_alias="CONFIG_HASH")
    audit_url: str | None = Field(None, validation_alias="AUDIT_URL")
    fleet_switch: tuple[str, str] | None = Field(None, validation_alias=FLEET_SWITCH_ENV)
    control_watch_timeout_seconds: int = Field(
        10, ge=1, le=300, validation_alias=CONTROL_WATCH_TIMEOUT_ENV
    )
    # Not configuration: never read from the environment, so no two processes share it.
    _nonce: str = PrivateAttr(default_factory=new_nonce)

    @property
    def nonce(self) -> str:
        return self._nonce

    @property
    def identity(self) -> str:
        """Lease holder identity: the pod, which incarnation of it, and which process."""
        parts = [self.pod_name, self.pod_uid, self.nonce]
        return "_".join(p for p in parts if p)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings)  # no .env or secret files: the pod sets the env

    @field_validator("bot_name", "namespace", "credentials_dir", mode="before")
    @classmethod
    def _strip(cls, value: Any) -> Any:
        return value.strip() if isinstance(value, str) else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("price_feed")
    @classmethod
    def _known_feed(cls, value: str | None) -> str | None:
        if value is not None and value not in PRICE_FEEDS:
            raise ValueError(f"must be seeded, live or auto, got {value!r}")
        return value

    @field_validator("audit_url", mode="before")
    @classmethod
    def _http_url(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        url = value.strip().rstrip("/")
        if not url:
            raise PydanticUseDefault
        scheme, _, rest = url.partition("://")
        if scheme not in ("http", "https") or not rest:
            raise ValueError(f"must be an http:// or https:// URL, got {url!r}")
        return url

    @field_validator("fleet_switch", mode="before")
    @classmethod
    def _namespace_and_name(cls, value: Any) -> Any:
        return parse_fleet_switch(value) if isinstance(value, str) else value

    # Defined last because pydantic runs "before" validators last-defined first: every other
    # one sees only values that are set.
    @field_validator("*", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any, info: ValidationInfo) -> Any:
        blank = isinstance(value, str) and not value.strip()
        if blank and info.field_name and not cls.model_fields[info.field_name].is_required():
            raise PydanticUseDefault
        return value  # a blank required one fails as too short: "required"

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, default_namespace: str | None = None
    ) -> Settings:
        """Settings from `env` (the process environment when None), POD_NAMESPACE falling
        back to `default_namespace`; ConfigError naming every bad variable.

        """
        environ = os.environ if env is None else env
        # Every variable is passed, an absent one as "" (unset), so that nothing is filled in
        # from os.environ when a mapping stands in for it.
        values: dict[str, Any] = {name: environ.get(name, "") for name in cls.variables()}
        if default_namespace and not values[NAMESPACE_ENV].strip():
            values[NAMESPACE_ENV] = default_namespace
        try:
            return cls(**values)
        except ValidationError as err:
            raise ConfigError("invalid environment: " + "; ".join(cls._problems(err))) from err

    @classmethod
    def variables(cls) -> list[str]:
        """The environment variables the settings read."""
        return [str(info.validation_alias) for info in cls.model_fields.values()]

    @classmethod
    def _problems(cls, err: ValidationError) -> list[str]:
        """One `VARIABLE: what is wrong` per error, in the words the table above uses."""
        by_name = {
            key: (str(info.validation_alias), info)
            for name, info in cls.model_fields.items()
            for key in (name, info.validation_alias)
        }
        problems = []
        for error in err.errors():
            variable, info = by_name[str(error["loc"][0])]
            kind, given = error["type"], error.get("input")
            if kind in ("missing", "string_too_short"):
                text = _REQUIRED.get(variable, "required")
            elif kind in ("greater_than_equal", "less_than_equal", "finite_number"):
                low = next(m.ge for m in info.metadata if isinstance(m, Ge))
                high = next(m.le for m in info.metadata if isinstance(m, Le))
                text = f"must be between {low:g} and {high:g}, got {given}"
            elif kind in ("int_parsing", "int_from_float"):
                text = f"must be a whole number, got {given!r}"
            elif kind == "float_parsing":
                text = f"must be a number, got {given!r}"
            elif kind == "value_error":
                text = str((error.get("ctx") or {}).get("error", error["msg"]))
            else:
                text = error["msg"]
            problems.append(f"{variable}: {text}")
        return problems


@dataclass(frozen=True)
class BotConfig:
    """What the TradingBot's spec asks this process to do, with defaults filled in."""

    name: str
    namespace: str
    uid: str
    profile: str
    exchange_id: str
    mode: str
    credentials_secret: str | None
    symbols: tuple[str, ...]
    params: dict[str, Any]
    limits: RiskLimits
    state_backend: str
    quote: str
    spec: dict[str, Any] = field(default_factory=dict)


def _validated_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The spec through the shared API model: the rules the API server and the operator
    apply, so the bot never trades on a spec they would refuse."""
    try:
        return TradingBotSpec.from_dict(spec).to_dict()
    except ValidationError as exc:
        raise ConfigError("; ".join(validation_messages(exc))) from exc


def parse_tradingbot(obj: Mapping[str, Any]) -> BotConfig:
    """A TradingBot object (as returned by the API) as a BotConfig; ConfigError if invalid."""
    metadata = obj.get("metadata") or {}
    spec = _validated_spec(obj.get("spec") or {})
    errors: list[str] = []
    profile = spec.get("profile")
    if profile not in set(Profile):
        errors.append(f"spec.profile: must be one of {', '.join(Profile)}, got {profile!r}")
    exchange = spec.get("exchange") or {}
    exchange_id = exchange.get("id")
    if not isinstance(exchange_id, str) or not exchange_id:
        errors.append("spec.exchange.id: required")
    mode = exchange.get("mode") or ExchangeMode.PAPER
    if mode not in set(ExchangeMode):
        errors.append(f"spec.exchange.mode: must be one of {', '.join(ExchangeMode)}, got {mode!r}")
    secret = (exchange.get("credentialsSecretRef") or {}).get("name")
    if mode != ExchangeMode.PAPER and not secret:
        errors.append(f"spec.exchange.credentialsSecretRef.name: required in {mode} mode")
    symbols = spec.get("symbols") or []
    if (
        not isinstance(symbols, list)
        or not symbols
        or not all(isinstance(s, str) and "/" in s for s in symbols)
    ):
        errors.append("spec.symbols: a non-empty list of unified symbols like BTC/USDT")
        symbols = []
    quotes = {s.split("/", 1)[1].split(":", 1)[0] for s in symbols}
    if len(quotes) > 1:
        errors.append(
            f"spec.symbols: all symbols must share one quote currency (equity and "
            f"limits are counted in it), got {', '.join(sorted(quotes))}"
        )
    params = (spec.get("strategy") or {}).get("params") or {}
    risk = spec.get("risk") or {}
    if profile in set(Profile):
        errors.extend(validate_params(str(profile), params))
        errors.extend(validate_risk(risk))
    if errors:
        raise ConfigError("; ".join(errors))
    assert isinstance(profile, str) and isinstance(exchange_id, str)
    return BotConfig(
        name=str(metadata.get("name", "")),
        namespace=str(metadata.get("namespace", "")),
        uid=str(metadata.get("uid", "")),
        profile=profile,
        exchange_id=exchange_id,
        mode=mode,
        credentials_secret=secret,
        symbols=tuple(symbols),
        params=resolve_params(profile, params),
        limits=RiskLimits.for_profile(profile, risk),
        state_backend=(spec.get("state") or {}).get("backend") or StateBackend.CONFIGMAP,
        quote=quotes.pop(),
        spec=spec,
    )
