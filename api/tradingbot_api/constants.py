"""Names of the TradingBot API and every key other tools rely on (SPEC §3, §11).

Everything is derived from :data:`API_GROUP` so the group is spelled once; the CRD in
``crds/`` and the unit tests check that they agree with these values. Changing a name here is
an API change: pods, Leases, ConfigMaps and dashboards in running clusters use them.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Final

API_GROUP: Final = "trading.r7.dev"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{API_GROUP}/{VERSION}"
KIND: Final = "TradingBot"
PLURAL: Final = "tradingbots"
SINGULAR: Final = "tradingbot"
SHORT_NAMES: Final = ("tb", "tbot")
CATEGORIES: Final = ("trading",)
CRD_NAME: Final = f"{PLURAL}.{API_GROUP}"

# Labels and annotations. Values of LABEL_BOT are bot names, hence the name limits below.
LABEL_BOT: Final = f"{API_GROUP}/bot"
ANNOTATION_CONFIG_HASH: Final = f"{API_GROUP}/config-hash"
ANNOTATION_RESTARTED_AT: Final = f"{API_GROUP}/restartedAt"
KUBECTL_RESTARTED_AT: Final = "kubectl.kubernetes.io/restartedAt"
ANNOTATION_RESTART_REASON: Final = f"{API_GROUP}/restart-reason"
ANNOTATION_HALT: Final = f"{API_GROUP}/halt"
HALT_VALUE: Final = "true"
# Imperative stop beside the declarative spec.suspend (plugin, Argo CD actions): GitOps tools
# that own the spec never undo it. Either one stops the bot.
ANNOTATION_SUSPEND: Final = f"{API_GROUP}/suspend"
SUSPEND_VALUE: Final = "true"
# The fleet-wide kill switch: a ConfigMap (the chart's `<release>-fleet-switch`) whose data key
# `halt` holds a HaltMode; bots get its namespace/name in env FLEET_SWITCH.
FLEET_SWITCH_KEY: Final = "halt"
FLEET_SWITCH_ENV: Final = "FLEET_SWITCH"
# Server-side timeout of the bot's watches on its TradingBot and the fleet switch (seconds);
# a watch silent for three times this long pauses new entries.
CONTROL_WATCH_TIMEOUT_ENV: Final = "CONTROL_WATCH_TIMEOUT_SECONDS"
FINALIZER: Final = f"{API_GROUP}/finalizer"
# Written by the operator on bot pods: the spec and the restart request the pod was started
# with (the next change is diffed against them).
ANNOTATION_APPLIED_SPEC: Final = f"{API_GROUP}/applied-spec"
ANNOTATION_APPLIED_RESTART: Final = f"{API_GROUP}/applied-restart"
# Written by the chart's mutating admission policies (inside the API server) on TradingBots:
# who made the last controlled change, and who set the credentials reference. Users cannot
# write them (the validating policy refuses); see tradingbot_operator.identity.
ANNOTATION_CHANGED_BY: Final = f"{API_GROUP}/changed-by"
ANNOTATION_CHANGED_BY_GROUPS: Final = f"{API_GROUP}/changed-by-groups"
ANNOTATION_CHANGE_SOURCE: Final = f"{API_GROUP}/change-source"
ANNOTATION_CHANGE_STAMP: Final = f"{API_GROUP}/change-stamp"
ANNOTATION_CREDENTIALS_REFERENCED_BY: Final = f"{API_GROUP}/credentials-referenced-by"
ANNOTATION_CREDENTIALS_REFERENCED_GROUPS: Final = f"{API_GROUP}/credentials-referenced-groups"
ANNOTATION_CREDENTIALS_REFERENCED_STAMP: Final = f"{API_GROUP}/credentials-referenced-stamp"
STAMP_ANNOTATIONS: Final = (
    ANNOTATION_CHANGED_BY,
    ANNOTATION_CHANGED_BY_GROUPS,
    ANNOTATION_CHANGE_SOURCE,
    ANNOTATION_CHANGE_STAMP,
    ANNOTATION_CREDENTIALS_REFERENCED_STAMP,
    ANNOTATION_CREDENTIALS_REFERENCED_BY,
    ANNOTATION_CREDENTIALS_REFERENCED_GROUPS,
)
# Annotations whose change is a control action (stamped, audited). Values are bounded.
CONTROL_ANNOTATIONS: Final = (
    ANNOTATION_RESTARTED_AT,
    KUBECTL_RESTARTED_AT,
    ANNOTATION_RESTART_REASON,
    ANNOTATION_HALT,
    ANNOTATION_SUSPEND,
)
MAX_CONTROL_ANNOTATION_LENGTH: Final = 1024
# Written by the operator on a bot's ServiceAccount: the credentials Secret whose mounting it
# approved (after checking that whoever referenced it may read it).
ANNOTATION_CREDENTIALS_APPROVED: Final = f"{API_GROUP}/credentials-approved"

# Admission policies and bindings the chart installs (fixed names, checked by the operator
# before it trusts a stamp).
POLICY_CHANGE_STAMP: Final = f"change-stamp.{API_GROUP}"
POLICY_CREDENTIALS_STAMP: Final = f"credentials-stamp.{API_GROUP}"
POLICY_ADMISSION: Final = f"admission.{API_GROUP}"
MUTATING_POLICIES: Final = (POLICY_CHANGE_STAMP, POLICY_CREDENTIALS_STAMP)
VALIDATING_POLICIES: Final = (POLICY_ADMISSION,)
# The virtual subresource whose `update` permission the kill switch needs.
HALT_SUBRESOURCE: Final = "halt"

# Where a bot's exchange credentials are mounted (a Secret volume; no API access to Secrets).
CREDENTIALS_VOLUME: Final = "credentials"
CREDENTIALS_DIR: Final = f"/var/run/secrets/{API_GROUP}/credentials"
CREDENTIALS_KEYS: Final = ("apiKey", "secret")

# Bot state: a ConfigMap key, or a file of that name on the PVC (previous good copy kept).
STATE_KEY: Final = "state.json"
STATE_PREV_KEY: Final = "state.prev.json"

# A bot's name ends up in a label value (<= 63 characters), a pod name and host name, and the
# names of its Lease and state objects; the CRD enforces these limits on metadata.name so the
# derived names are always valid.
MAX_BOT_NAME_LENGTH: Final = 52
BOT_NAME_PATTERN: Final = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"


def state_configmap_name(bot: str) -> str:
    """Name of the ConfigMap holding ``bot``'s state under :data:`STATE_KEY`."""
    return f"{bot}-state"


def state_pvc_name(bot: str) -> str:
    """Name of the PersistentVolumeClaim holding ``bot``'s state when the backend is ``pvc``."""
    return f"{bot}-state"


def lease_name(bot: str) -> str:
    """Name of the coordination.k8s.io Lease that fences ``bot``: only its holder trades."""
    return f"{bot}-trader"


class Profile(StrEnum):
    """Strategy and risk preset of a bot (``spec.profile``)."""

    STABLE = "stable"
    MEDIUM = "medium"
    VOLATILE = "volatile"
    MEME = "meme"


class ExchangeMode(StrEnum):
    """``spec.exchange.mode``: only ``paper`` runs without credentials."""

    PAPER = "paper"
    SANDBOX = "sandbox"
    LIVE = "live"


class StateBackend(StrEnum):
    """Where a bot keeps its state (``spec.state.backend``, ``status.state.backend``)."""

    CONFIGMAP = "configmap"
    PVC = "pvc"


class Phase(StrEnum):
    """``status.phase``: the one-word summary dashboards and ``kubectl get`` show."""

    PENDING = "Pending"
    STARTING = "Starting"
    RUNNING = "Running"
    RESTARTING = "Restarting"
    STOPPING = "Stopping"
    STOPPED = "Stopped"
    HALTED = "Halted"
    FAILED = "Failed"


class ConditionType(StrEnum):
    """Types of ``status.conditions``; ``Ready`` is the one other tools select on."""

    READY = "Ready"
    PROGRESSING = "Progressing"
    DEGRADED = "Degraded"


class ConditionStatus(StrEnum):
    """Status of a condition, as in every Kubernetes API."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class PendingActionKind(StrEnum):
    """``status.pendingAction.action``: what the operator will do once coalescing allows."""

    START = "start"
    RESTART = "restart"
    STOP = "stop"
    HALT = "halt"


class HaltMode(StrEnum):
    """Values of the kill switch (`trading.r7.dev/halt`, and the fleet switch).

    - ``true``: stop now: no new orders, the bot's entry orders cancelled, positions (and
      their protective orders) kept;
    - ``drain``: no new entries; exits managed until flat, then stop;
    - ``flatten``: cancel protective orders, close every position at market (risk checks
      apply), then stop. Not atomic: a position may fill partly before the stop.
    """

    TRUE = "true"
    DRAIN = "drain"
    FLATTEN = "flatten"


# Which switch wins when the bot's and the fleet's disagree: closing everything beats stopping
# now, which beats a gentle drain.
_HALT_PRECEDENCE = (HaltMode.FLATTEN, HaltMode.TRUE, HaltMode.DRAIN)


def effective_halt(*values: str | None) -> HaltMode | None:
    """The kill switch in force given the bot's and the fleet's values (None: trading).

    An unknown non-empty value counts as ``true``: a typo must stop the bot, not let it trade.
    """
    modes = set()
    for value in values:
        text = (value or "").strip().lower()
        if text:
            modes.add(HaltMode(text) if text in set(HaltMode) else HaltMode.TRUE)
    return next((m for m in _HALT_PRECEDENCE if m in modes), None)


class BlockReason(StrEnum):
    """Why the operator refuses to run a bot's new config (condition `Degraded`, an Event and
    the audit); the running pod, if any, keeps running its previous config."""

    SPEC_INVALID = "SpecInvalid"
    IMAGE_NOT_ALLOWED = "ImageNotAllowed"
    SECRET_NOT_ALLOWED = "SecretNotAllowed"


class RestartResult(StrEnum):
    """``status.restarts.last.result``; also the ``result`` label of the restart metrics."""

    IN_PROGRESS = "inProgress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class EventType(StrEnum):
    """``event_type`` of an audit event (SPEC §6; the schema stays open to new ones)."""

    CONFIG_CHANGE = "config_change"
    START = "start"
    RESTART = "restart"
    STOP = "stop"
    RESUME = "resume"
    HALT = "halt"
    TRADE = "trade"
    POSITION_CHANGE = "position_change"
    ERROR = "error"
    RATE_LIMITED = "rate_limited"


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class EventReason(StrEnum):
    """Reasons of the operator's Kubernetes Events, also the ``action`` of its audit events
    (alerts and the restart metrics select on them)."""

    CONFIG_CHANGED = "ConfigChanged"
    RESTART_REQUESTED = "RestartRequested"
    STOP_REQUESTED = "StopRequested"
    RESTART_COALESCED = "RestartCoalesced"
    RATE_LIMITED = "RateLimited"
    RESTART_STARTED = "RestartStarted"
    RESTART_COMPLETED = "RestartCompleted"
    RESTART_FAILED = "RestartFailed"
    RESTART_CANCELLED = "RestartCancelled"
    STARTED = "Started"
    STOPPING = "Stopping"
    STOPPED = "Stopped"
    RESUMED = "Resumed"
    HALTED = "Halted"
    DRAINING = "Draining"
    FLATTENING = "Flattening"
    NODE_LOST = "NodeLost"
    SURPLUS_POD_DELETED = "SurplusPodDeleted"
    CRASH_LOOP = "CrashLoop"
    DELETION_REQUESTED = "DeletionRequested"


class ConditionReason(StrEnum):
    """Reasons of ``status.conditions`` (besides the BlockReasons)."""

    BOT_READY = "BotReady"
    UP_TO_DATE = "UpToDate"
    HEALTHY = "Healthy"
    CHANGE_PENDING = "ChangePending"
    RESTARTING = "Restarting"
    STOPPING = "Stopping"
    POD_CREATED = "PodCreated"
    POD_NOT_READY = "PodNotReady"
    CRASH_LOOP = "CrashLoop"
    ATTEMPT_FAILED = "AttemptFailed"
    ATTEMPTS_EXHAUSTED = "AttemptsExhausted"
    FAILED = "Failed"
    SUSPENDED = "Suspended"
    HALTED = "Halted"
    DRAINING = "Draining"
    FLATTENING = "Flattening"


class RestartTrigger(StrEnum):
    """The ``reason`` label of ``tradingbot_restarts_total``: what asked for the restart."""

    CONFIG_CHANGE = "config_change"
    RESTART_REQUEST = "restart_request"


class TolerationOperator(StrEnum):
    """Operators of a pod toleration."""

    EXISTS = "Exists"
    EQUAL = "Equal"


class TaintEffect(StrEnum):
    """Taint effects a toleration may name."""

    NO_SCHEDULE = "NoSchedule"
    PREFER_NO_SCHEDULE = "PreferNoSchedule"
    NO_EXECUTE = "NoExecute"


class CheckpointReason(StrEnum):
    """The bot state's ``reason``: why it was saved. ``order`` records a live order intent
    before it is sent, so a crash between submit and fill can be reconciled on restore;
    ``halt`` is written when the bot starts obeying a kill switch or a suspension."""

    FILL = "fill"
    PERIODIC = "periodic"
    SHUTDOWN = "shutdown"
    RESTORE = "restore"
    ORDER = "order"
    HALT = "halt"


# Spec defaults as plain JSON values; the CRD and the models state the same (tested).
DEFAULT_EXCHANGE_MODE: Final[str] = ExchangeMode.PAPER.value
DEFAULT_STATE_BACKEND: Final[str] = StateBackend.CONFIGMAP.value
DEFAULT_COALESCE_SECONDS: Final = 2
DEFAULT_MAX_ATTEMPTS: Final = 5
DEFAULT_GRACE_PERIOD_SECONDS: Final = 30
DEFAULT_MAX_RESTARTS_PER_HOUR: Final = 10
# The defaulted fields as a spec fragment: the config hash fills them in, so that a field
# left out and the same field set to its default give one hash (changing them restarts bots).
SPEC_DEFAULTS: Final[dict[str, Any]] = {
    "exchange": {"mode": DEFAULT_EXCHANGE_MODE},
    "state": {"backend": DEFAULT_STATE_BACKEND},
    "suspend": False,
    "restartPolicy": {
        "coalesceSeconds": DEFAULT_COALESCE_SECONDS,
        "maxAttempts": DEFAULT_MAX_ATTEMPTS,
        "gracePeriodSeconds": DEFAULT_GRACE_PERIOD_SECONDS,
        "maxRestartsPerHour": DEFAULT_MAX_RESTARTS_PER_HOUR,
    },
}
# The state claim when spec.state.pvc is absent (the model requires it for backend pvc; kept
# for objects written before it did).
DEFAULT_STATE_PVC_SIZE: Final = "1Gi"
MAX_SYMBOLS: Final = 20
