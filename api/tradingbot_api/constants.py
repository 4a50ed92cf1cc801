"""Names of the TradingBot API and every key other tools rely on (SPEC §3, §11).

Everything is derived from :data:`API_GROUP` so the group is spelled once; the CRD in
``crds/`` and the unit tests check that they agree with these values. Changing a name here is
an API change: pods, Leases, ConfigMaps and dashboards in running clusters use them.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

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
FINALIZER: Final = f"{API_GROUP}/finalizer"
# Written by the operator on bot pods: the spec and the restart request the pod was started
# with (the next change is diffed against them).
ANNOTATION_APPLIED_SPEC: Final = f"{API_GROUP}/applied-spec"
ANNOTATION_APPLIED_RESTART: Final = f"{API_GROUP}/applied-restart"
# Written by the admission webhook on TradingBots: who made the last controlled change.
ANNOTATION_CHANGED_BY: Final = f"{API_GROUP}/changed-by"
ANNOTATION_CHANGE_SOURCE: Final = f"{API_GROUP}/change-source"
ANNOTATION_CHANGE_SIGNATURE: Final = f"{API_GROUP}/change-signature"

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


class RestartResult(StrEnum):
    """``status.restarts.last.result``; also the ``result`` label of the restart metrics."""

    IN_PROGRESS = "inProgress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


# Spec defaults as plain JSON values; the CRD and the models state the same (tested).
DEFAULT_EXCHANGE_MODE: Final[str] = ExchangeMode.PAPER.value
DEFAULT_STATE_BACKEND: Final[str] = StateBackend.CONFIGMAP.value
DEFAULT_COALESCE_SECONDS: Final = 2
DEFAULT_MAX_ATTEMPTS: Final = 5
DEFAULT_GRACE_PERIOD_SECONDS: Final = 30
DEFAULT_MAX_RESTARTS_PER_HOUR: Final = 10
MAX_SYMBOLS: Final = 20
