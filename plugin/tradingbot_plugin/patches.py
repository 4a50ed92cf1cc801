"""The requests the plugin makes, as JSON merge-patch bodies, and the control state they set
read back from a bot (pure).

Imperative requests are annotations (stop and resume too), so GitOps tools that own the spec
do not fight them; a restart needs a reason, which goes to the audit log.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

from tradingbot_api.constants import (
    ANNOTATION_HALT,
    ANNOTATION_RESTART_REASON,
    ANNOTATION_RESTARTED_AT,
    ANNOTATION_SUSPEND,
    FLEET_SWITCH_KEY,
    SUSPEND_VALUE,
    HaltMode,
    effective_halt,
)
from tradingbot_api.times import kube_time, micro_time
from tradingbot_audit.schema import MAX_TEXT_LENGTH
from tradingbot_plugin.core import ExitCode, PluginError

# The restart reason ends up in the audit record, whose text fields are bounded; refusing a
# longer reason here beats silently truncating the one thing that explains the restart.
MAX_REASON_LENGTH: Final = MAX_TEXT_LENGTH


def validate_reason(reason: str | None, *, required: bool) -> str | None:
    """The stripped reason; raises a usage error when required and empty, or too long."""
    text = (reason or "").strip()
    if not text:
        if required:
            raise PluginError(
                "--reason must not be empty: say why, it goes to the audit log", ExitCode.USAGE
            )
        return None
    if len(text) > MAX_REASON_LENGTH:
        raise PluginError(
            f"--reason is {len(text)} characters; at most {MAX_REASON_LENGTH} fit the audit log",
            ExitCode.USAGE,
        )
    return text


def restart_stamp(now: datetime, previous: str | None) -> str:
    """The restartedAt value: RFC 3339 in seconds, like `kubectl rollout restart`.

    A second request within the same second would write the same value, change nothing and
    be lost; fractional seconds keep it distinct.
    """
    stamp = kube_time(now)
    return micro_time(now) if stamp == previous else stamp


def restart_patch(stamp: str, reason: str) -> dict[str, Any]:
    return {
        "metadata": {
            "annotations": {ANNOTATION_RESTARTED_AT: stamp, ANNOTATION_RESTART_REASON: reason}
        }
    }


def suspend_patch(suspend: bool, reason: str | None = None) -> dict[str, Any]:
    """Stop or resume by annotation (null in a merge patch deletes it): `spec.suspend` stays
    the declarative field a GitOps tool owns, so a sync never undoes an imperative stop."""
    annotations: dict[str, Any] = {ANNOTATION_SUSPEND: SUSPEND_VALUE if suspend else None}
    if reason:
        annotations[ANNOTATION_RESTART_REASON] = reason
    return {"metadata": {"annotations": annotations}}


def halt_patch(reason: str | None = None, mode: HaltMode = HaltMode.TRUE) -> dict[str, Any]:
    annotations: dict[str, Any] = {ANNOTATION_HALT: str(mode)}
    if reason:
        annotations[ANNOTATION_RESTART_REASON] = reason
    return {"metadata": {"annotations": annotations}}


def unhalt_patch(reason: str | None = None) -> dict[str, Any]:
    # null in a merge patch deletes the key.
    annotations: dict[str, Any] = {ANNOTATION_HALT: None}
    if reason:
        annotations[ANNOTATION_RESTART_REASON] = reason
    return {"metadata": {"annotations": annotations}}


def halt_mode(bot: Mapping[str, Any]) -> HaltMode | None:
    annotations = (bot.get("metadata") or {}).get("annotations") or {}
    return effective_halt(annotations.get(ANNOTATION_HALT))


def is_halted(bot: Mapping[str, Any]) -> bool:
    return halt_mode(bot) is not None


def is_suspended(bot: Mapping[str, Any]) -> bool:
    return suspended_by_spec(bot) or suspended_by_annotation(bot)


def suspended_by_spec(bot: Mapping[str, Any]) -> bool:
    return bool((bot.get("spec") or {}).get("suspend"))


def suspended_by_annotation(bot: Mapping[str, Any]) -> bool:
    annotations = (bot.get("metadata") or {}).get("annotations") or {}
    return str(annotations.get(ANNOTATION_SUSPEND, "")).lower() == SUSPEND_VALUE


def fleet_switch_patch(mode: HaltMode | None) -> dict[str, Any]:
    """The fleet-wide kill switch ConfigMap's data (None removes the halt)."""
    return {"data": {FLEET_SWITCH_KEY: str(mode) if mode else None}}
