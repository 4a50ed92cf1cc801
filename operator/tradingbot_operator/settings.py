"""Operator settings: one object, documented defaults, read from TRADINGBOT_OPERATOR_* env vars
(pydantic-settings; list values are space-separated).

Validated at start-up so a typo fails fast instead of surfacing as odd behaviour later.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from tradingbot_operator.sharding import Shard

ENV_PREFIX = "TRADINGBOT_OPERATOR_"

Words = Annotated[tuple[str, ...], NoDecode]


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, frozen=True, extra="forbid", case_sensitive=False
    )

    namespace: str | None = Field(
        default=None, description="Watch only this namespace; all namespaces when unset."
    )
    bot_image: str = Field(
        default="ghcr.io/r7/tradingbot:0.1.0",
        description="Image for bots whose spec.image is unset. Not part of the config hash, "
        "so changing it restarts no running bot.",
    )
    bot_command: Words = Field(
        default=("python", "-m", "tradingbot"), description="Bot container command."
    )
    metrics_port: int = Field(
        default=8000, ge=0, le=65535, description="Operator /metrics port (0 disables)."
    )
    metrics_host: str = Field(default="0.0.0.0", description="Operator /metrics bind address.")
    bot_metrics_port: int = Field(
        default=8080, ge=1, le=65535, description="Port of the bot's /metrics, /healthz, /readyz."
    )
    max_concurrent_restarts: int = Field(
        default=0, ge=0, description="Bots restarting at once, operator-wide; 0 = unlimited."
    )
    max_concurrent_passes: int = Field(
        default=64,
        ge=1,
        description="Reconcile passes making API requests at once: thousands of bots starting "
        "together queue here instead of in the HTTP pool, where waiting counts against the "
        "connect timeout and a pass fails.",
    )
    ready_timeout_seconds: float = Field(
        default=120.0, gt=0, description="A new bot pod not ready within this is a failed attempt."
    )
    state_mount_path: str = Field(
        default="/var/lib/tradingbot", description="Where a PVC-backed bot's state volume mounts."
    )
    bot_env: Words = Field(
        default=(),
        description="Extra KEY=VALUE environment for every bot container (e.g. TICK_SECONDS); "
        "operator-supplied, so not part of the config hash.",
    )
    audit_url: str | None = Field(
        default=None,
        description="Base URL of the audit sidecar (the chart: its Service, port 8901; a "
        "sidecar in the operator's own pod: its loopback ingest). Unset: Kubernetes Events only.",
    )
    audit_token_file: str | None = Field(
        default=None,
        description="A ServiceAccount token for the audience tradingbot-audit (the chart "
        "projects one), read before every request to the audit sidecar; unset: no token, for a "
        "loopback ingest.",
    )
    allowed_images: Words = Field(
        default=(),
        description="Images a TradingBot's spec.image may name (space-separated); bot_image "
        "is always allowed. A bot asking for another image keeps its running pod and reports "
        "ImageNotAllowed.",
    )
    webhook_listen: str | None = Field(
        default=None,
        description="host:port of the admission webhook server (deletion records for the "
        "audit); unset disables it.",
    )
    webhook_cert_file: str | None = Field(default=None, description="Webhook TLS certificate.")
    webhook_key_file: str | None = Field(default=None, description="Webhook TLS key.")
    operator_user: str | None = Field(
        default=None,
        description="The operator's own Kubernetes username, so its writes read as source "
        "`operator` (system:serviceaccount:<ns>:<sa>).",
    )
    fleet_switch: str | None = Field(
        default=None,
        description="namespace/name of the fleet-wide kill switch ConfigMap (key `halt`); "
        "bots get it in env FLEET_SWITCH and obey it themselves. Unset: no fleet switch.",
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
    )
    node_heartbeats: bool = Field(
        default=True,
        description="Judge nodes by their Leases in kube-node-lease: a pod on a node that "
        "stopped heartbeating, whose bot holds no Lease, is removed and replaced.",
    )
    node_poll_seconds: float = Field(default=2.0, gt=0, description="Node Lease poll period.")
    shard: str = Field(
        default="",
        description="i/N: handle only the bots whose namespace/name hashes to shard i of N "
        "(every replica and shard applies the same rule); empty: every bot.",
    )
    leader_election: bool = Field(
        default=False,
        description="Contend for the shard's leader Lease and act only while holding it "
        "(set for more than one replica).",
    )
    leader_namespace: str | None = Field(
        default=None,
        description="Namespace of the leader Lease (the operator's own; the chart sets it).",
    )
    watch_server_timeout: int = Field(default=300, gt=0)
    watch_client_timeout: int = Field(default=310, gt=0)

    @property
    def images(self) -> tuple[str, ...]:
        """Every image a bot pod may run."""
        return (self.bot_image, *(i for i in self.allowed_images if i != self.bot_image))

    @property
    def shard_rule(self) -> Shard:
        return Shard.parse(self.shard)

    @field_validator("shard")
    @classmethod
    def _shard(cls, value: str) -> str:
        Shard.parse(value)
        return value.strip()

    @field_validator("bot_command", "bot_env", "allowed_images", mode="before")
    @classmethod
    def _space_separated(cls, value: Any) -> Any:
        return tuple(value.split()) if isinstance(value, str) else value

    @field_validator("bot_env")
    @classmethod
    def _key_value_pairs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            key, sep, _ = item.partition("=")
            if not sep or not key.isidentifier():
                raise ValueError(f"bot_env entries must be KEY=VALUE, got {item!r}")
        return value

    @classmethod
    def from_env(cls, **overrides: Any) -> OperatorSettings:
        """The environment's settings, `overrides` (command-line flags; None: not given)
        winning; SystemExit naming every bad value."""
        given: dict[str, Any] = {k: v for k, v in overrides.items() if v is not None}
        try:
            return cls(**given)
        except ValidationError as err:
            raise SystemExit(f"invalid operator settings ({ENV_PREFIX}*): {err}") from err
