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
from typing import Any

from pydantic import ValidationError

from tradingbot.constants import EXCHANGE_MODES, PROFILES
from tradingbot.risk import RiskLimits, validate_risk
from tradingbot.strategy import resolve_params, validate_params
from tradingbot_api.constants import (
    CONTROL_WATCH_TIMEOUT_ENV,
    CREDENTIALS_DIR,
    FLEET_SWITCH_ENV,
)
from tradingbot_api.models import TradingBotSpec, validation_messages

# Where the operator's pod template mounts the credentials Secret.
DEFAULT_CREDENTIALS_DIR = CREDENTIALS_DIR


# Names as the API accepts them: a ConfigMap's (DNS subdomain), a namespace's (DNS label).
_DNS_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


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


@dataclass(frozen=True)
class Settings:
    bot_name: str
    namespace: str
    pod_name: str
    pod_uid: str = ""
    pod_ip: str = "127.0.0.1"
    metrics_port: int = 8080
    kubeconfig: str | None = None
    grace_period_seconds: float = 30.0
    state_dir: str = "/var/lib/tradingbot"
    credentials_dir: str = DEFAULT_CREDENTIALS_DIR
    tick_seconds: float = 1.0
    checkpoint_interval_seconds: float = 30.0
    lease_duration_seconds: int = 15
    price_feed: str | None = None
    log_level: str = "INFO"
    config_hash: str = ""
    audit_url: str | None = None
    fleet_switch: tuple[str, str] | None = None
    control_watch_timeout_seconds: int = 10
    nonce: str = field(default_factory=new_nonce)

    @property
    def identity(self) -> str:
        """Lease holder identity: the pod, which incarnation of it, and which process."""
        parts = [self.pod_name, self.pod_uid, self.nonce]
        return "_".join(p for p in parts if p)

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, default_namespace: str | None = None
    ) -> Settings:
        env = os.environ if env is None else env
        errors: list[str] = []

        def number(name: str, default: float, low: float, high: float) -> float:
            raw = env.get(name)
            if raw in (None, ""):
                return default
            try:
                value = float(raw)
            except ValueError:
                errors.append(f"{name}: must be a number, got {raw!r}")
                return default
            if not low <= value <= high:
                errors.append(f"{name}: must be between {low:g} and {high:g}, got {raw}")
            return value

        bot = env.get("BOT_NAME", "").strip()
        if not bot:
            errors.append("BOT_NAME: required (the TradingBot to run)")
        namespace = env.get("POD_NAMESPACE", "").strip() or default_namespace or ""
        if not namespace:
            errors.append("POD_NAMESPACE: required outside a pod")
        audit_url = (env.get("AUDIT_URL") or "").strip().rstrip("/") or None
        if audit_url is not None:
            scheme, _, rest = audit_url.partition("://")
            if scheme not in ("http", "https") or not rest:
                errors.append(f"AUDIT_URL: must be an http:// or https:// URL, got {audit_url!r}")
        fleet_switch = None
        try:
            fleet_switch = parse_fleet_switch(env.get(FLEET_SWITCH_ENV))
        except ValueError as exc:
            errors.append(f"{FLEET_SWITCH_ENV}: {exc}")
        feed = env.get("PRICE_FEED") or None
        if feed is not None and feed not in ("seeded", "live", "auto"):
            errors.append(f"PRICE_FEED: must be seeded, live or auto, got {feed!r}")
        settings = cls(
            bot_name=bot,
            namespace=namespace,
            pod_name=env.get("POD_NAME") or socket.gethostname(),
            pod_uid=env.get("POD_UID", ""),
            pod_ip=env.get("POD_IP") or "127.0.0.1",
            metrics_port=int(number("METRICS_PORT", 8080, 0, 65535)),
            kubeconfig=env.get("KUBECONFIG") or None,
            grace_period_seconds=number("GRACE_PERIOD_SECONDS", 30, 1, 3600),
            state_dir=env.get("STATE_DIR") or "/var/lib/tradingbot",
            credentials_dir=(env.get("CREDENTIALS_DIR") or "").strip() or DEFAULT_CREDENTIALS_DIR,
            tick_seconds=number("TICK_SECONDS", 1.0, 0.01, 3600),
            checkpoint_interval_seconds=number("CHECKPOINT_INTERVAL_SECONDS", 30, 0.1, 86400),
            lease_duration_seconds=int(number("LEASE_DURATION_SECONDS", 15, 3, 3600)),
            price_feed=feed,
            log_level=(env.get("LOG_LEVEL") or "INFO").upper(),
            config_hash=env.get("CONFIG_HASH", ""),
            audit_url=audit_url,
            fleet_switch=fleet_switch,
            control_watch_timeout_seconds=int(number(CONTROL_WATCH_TIMEOUT_ENV, 10, 1, 300)),
        )
        if errors:
            raise ConfigError("invalid environment: " + "; ".join(errors))
        return settings


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
    if profile not in PROFILES:
        errors.append(f"spec.profile: must be one of {', '.join(PROFILES)}, got {profile!r}")
    exchange = spec.get("exchange") or {}
    exchange_id = exchange.get("id")
    if not isinstance(exchange_id, str) or not exchange_id:
        errors.append("spec.exchange.id: required")
    mode = exchange.get("mode") or "paper"
    if mode not in EXCHANGE_MODES:
        errors.append(
            f"spec.exchange.mode: must be one of {', '.join(EXCHANGE_MODES)}, got {mode!r}"
        )
    secret = (exchange.get("credentialsSecretRef") or {}).get("name")
    if mode != "paper" and not secret:
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
    if profile in PROFILES:
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
        state_backend=(spec.get("state") or {}).get("backend") or "configmap",
        quote=quotes.pop(),
        spec=spec,
    )
