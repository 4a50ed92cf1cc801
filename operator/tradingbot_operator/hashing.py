"""The config hash that decides whether a bot's pod is current, and what changed.

Only fields the user controls and that shape the pod go into the hash. Fields that only tune
the operator (coalescing window, attempts, rate limit) and `suspend` (which stops rather than
restarts) are left out, and so is everything the operator itself supplies (its default image,
its labels): upgrading the operator must never restart the fleet. Values equal to the schema
default are dropped before hashing, so a new defaulted field in a later API version leaves
existing hashes unchanged.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from tradingbot_api.constants import (
    ANNOTATION_RESTARTED_AT,
    KUBECTL_RESTARTED_AT,
)

# Top-level spec keys that do not shape the pod.
NON_SHAPING_KEYS = frozenset({"suspend"})
# restartPolicy keys that only tune the operator; gracePeriodSeconds shapes the pod.
NON_SHAPING_RESTART_POLICY_KEYS = frozenset(
    {"coalesceSeconds", "maxAttempts", "maxRestartsPerHour"}
)
HASH_LENGTH = 16


def pod_shaping_spec(spec: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The part of the spec that shapes the pod, with defaults and empty values removed."""
    shaped = {k: v for k, v in spec.items() if k not in NON_SHAPING_KEYS}
    policy = dict(shaped.get("restartPolicy") or {})
    for key in NON_SHAPING_RESTART_POLICY_KEYS:
        policy.pop(key, None)
    shaped["restartPolicy"] = policy
    pruned = _strip_defaults(shaped, defaults)
    return pruned if isinstance(pruned, dict) else {}


def _strip_defaults(value: Any, default: Any) -> Any:
    if isinstance(value, Mapping):
        default_map = default if isinstance(default, Mapping) else {}
        out = {}
        for key, item in value.items():
            kept = _strip_defaults(item, default_map.get(key))
            if kept is not _DROP:
                out[key] = kept
        return out if out else _DROP
    if value is None or value == default or value in ({}, []):
        return _DROP
    return value


class _Drop:
    def __repr__(self) -> str:
        return "<dropped>"


_DROP: Any = _Drop()


def restart_token(annotations: Mapping[str, str] | None) -> str:
    """The imperative restart request: both restartedAt annotations, if any is set."""
    annotations = annotations or {}
    ours = annotations.get(ANNOTATION_RESTARTED_AT, "")
    kubectl = annotations.get(KUBECTL_RESTARTED_AT, "")
    return f"{ours}|{kubectl}" if (ours or kubectl) else ""


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def config_hash(
    spec: Mapping[str, Any],
    annotations: Mapping[str, str] | None,
    defaults: Mapping[str, Any],
) -> str:
    """Hash of everything that, when changed, requires the bot's pod to be replaced."""
    material = {"spec": pod_shaping_spec(spec, defaults), "restart": restart_token(annotations)}
    return hashlib.sha256(canonical_json(material).encode()).hexdigest()[:HASH_LENGTH]


def changed_fields(
    old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "spec"
) -> list[str]:
    """Dotted paths of the leaves that differ between two specs, sorted."""
    paths: list[str] = []
    for key in sorted(set(old) | set(new)):
        path = f"{prefix}.{key}"
        before, after = old.get(key), new.get(key)
        if isinstance(before, Mapping) and isinstance(after, Mapping):
            paths.extend(changed_fields(before, after, path))
        elif before != after:
            paths.append(path)
    return paths


def value_at(spec: Mapping[str, Any], dotted: str) -> Any:
    """The value at a path produced by changed_fields (leading 'spec.' optional)."""
    node: Any = spec
    for part in dotted.removeprefix("spec.").split("."):
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node


# Status, Events and the audit copy text from fields users write (reasons, parameters); a
# long value is cut, and its hash says which value it was without repeating it.
MAX_COPIED_TEXT = 512


def digest(value: Any) -> str:
    """A short, stable name for any JSON value."""
    text = value if isinstance(value, str) else canonical_json(value)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:12]


def bounded_text(text: str, limit: int = MAX_COPIED_TEXT) -> str:
    """`text` when it fits, else its start and the hash of the whole."""
    if len(text) <= limit:
        return text
    tail = f"…({digest(text)})"
    return text[: max(limit - len(tail), 0)] + tail


def bounded_value(value: Any, limit: int = MAX_COPIED_TEXT) -> Any:
    """A JSON value with every long string bounded (structure kept)."""
    if isinstance(value, str):
        return bounded_text(value, limit)
    if isinstance(value, Mapping):
        return {bounded_text(str(k), 128): bounded_value(v, limit) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [bounded_value(v, limit) for v in value]
    return value


# The applied spec a pod carries (to say what changed, from what to what) keeps the trading
# fields whole; pod overrides, which only an audit of "it changed" needs, become hashes. It
# stays small whatever the spec holds (an annotation is limited to 256 KiB with all others).
DIGESTED_KEYS = frozenset({"resources", "nodeSelector", "tolerations"})


def compact_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    return {k: digest(v) if k in DIGESTED_KEYS else v for k, v in spec.items()}
