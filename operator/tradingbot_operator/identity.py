"""Who changed a bot, as the API server authenticated them — never as a user claims.

The admission webhook sees every write with the authenticated user. When a write changes
what a bot does (its spec, or a restart/halt annotation), the webhook stamps the object with
the user, the tool they used (`source`) and an HMAC over the stamp and the exact config it
was made for. The operator accepts a stamp only if the signature verifies for the config it
sees, so an annotation written by hand (or copied from another change) is reported as
unverified instead of trusted. Writes that change nothing controlled cannot alter the stamp:
the webhook puts the previous values back.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tradingbot_api.constants import (
    ANNOTATION_CHANGE_SIGNATURE,
    ANNOTATION_CHANGE_SOURCE,
    ANNOTATION_CHANGED_BY,
    ANNOTATION_HALT,
    ANNOTATION_RESTART_REASON,
    ANNOTATION_RESTARTED_AT,
    KUBECTL_RESTARTED_AT,
)
from tradingbot_operator.hashing import canonical_json, changed_fields

STAMP_ANNOTATIONS = (ANNOTATION_CHANGED_BY, ANNOTATION_CHANGE_SOURCE, ANNOTATION_CHANGE_SIGNATURE)
CONTROL_ANNOTATIONS = (
    ANNOTATION_RESTARTED_AT,
    KUBECTL_RESTARTED_AT,
    ANNOTATION_RESTART_REASON,
    ANNOTATION_HALT,
)
PLUGIN_MANAGER = "kubectl-tradingbot"
UNVERIFIED = "unverified"


@dataclass(frozen=True)
class Identity:
    user: str | None
    source: str
    verified: bool


def controlled_material(obj: Mapping[str, Any]) -> str:
    """Everything a stamp vouches for: the spec and the control annotations."""
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    return canonical_json(
        {
            "spec": obj.get("spec") or {},
            "annotations": {k: annotations[k] for k in CONTROL_ANNOTATIONS if k in annotations},
        }
    )


def owned_paths(fields_v1: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted paths of the leaf fields a managedFields entry owns (`f:spec` -> `spec`).

    Containers are not ownership of their contents: the creator of `spec` keeps its
    `{".": {}}` marker after someone else changed a field inside it.
    """
    paths: list[str] = []
    for key, child in fields_v1.items():
        if key == ".":
            continue
        name = key[2:] if key.startswith("f:") else key
        path = f"{prefix}.{name}" if prefix else name
        if not isinstance(child, Mapping) or not child:
            paths.append(path)  # a leaf value
        else:  # a container; "." alone only marks that it exists
            paths.extend(owned_paths({k: v for k, v in child.items() if k != "."}, path))
    return paths


def changed_paths(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[str]:
    """Spec leaves and control annotations that differ between two versions of a bot."""
    old = old or {}
    paths = changed_fields(old.get("spec") or {}, new.get("spec") or {})
    old_ann = (old.get("metadata") or {}).get("annotations") or {}
    new_ann = (new.get("metadata") or {}).get("annotations") or {}
    paths += [
        f"metadata.annotations.{k}" for k in CONTROL_ANNOTATIONS if old_ann.get(k) != new_ann.get(k)
    ]
    return paths


def manager_of_change(
    managed_fields: Sequence[Mapping[str, Any]] | None, changed: Sequence[str]
) -> str | None:
    """The field manager that made this change: the API server records managedFields before
    admission, and a writer takes ownership of every field it changed. Timestamps alone have
    one-second resolution, so they only break ties."""
    entries = [
        e for e in managed_fields or [] if e.get("manager") and e.get("subresource", "") == ""
    ]
    if not entries:
        return None

    def owns_change(entry: Mapping[str, Any]) -> bool:
        owned = owned_paths(entry.get("fieldsV1") or {})
        return any(
            o == c or o.startswith(c + ".") or c.startswith(o + ".") for c in changed for o in owned
        )

    candidates = [e for e in entries if owns_change(e)] or entries
    latest = max(candidates, key=lambda e: str(e.get("time") or ""))
    return str(latest["manager"])


def change_source(username: str, manager: str | None, operator_user: str | None = None) -> str:
    """Which tool made a change, from who made it and the field manager they used."""
    manager = manager or ""
    if operator_user and username == operator_user:
        return "operator"
    if manager == PLUGIN_MANAGER:
        return "plugin"
    if (
        manager.startswith("argocd")
        or ":argocd:" in username
        or username.startswith("system:serviceaccount:argocd")
    ):
        return "gitops"
    if manager.startswith("kubectl"):
        return "kubectl"
    if manager.startswith(("helm", "Helm")):
        return "helm"
    return "api"


def sign(key: bytes, namespace: str, name: str, material: str, user: str, source: str) -> str:
    message = "\n".join((namespace, name, user, source, material)).encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def stamp_changes(
    old: Mapping[str, Any] | None,
    new: Mapping[str, Any],
    username: str,
    key: bytes,
    operator_user: str | None = None,
) -> dict[str, str | None]:
    """Annotations the webhook sets on this write (empty: leave the object as it is)."""
    new_annotations = (new.get("metadata") or {}).get("annotations") or {}
    old_annotations = ((old or {}).get("metadata") or {}).get("annotations") or {}
    controlled_change = old is None or controlled_material(old) != controlled_material(new)
    if not controlled_change:
        # Nothing the bot does changed: keep the previous stamp exactly as it was.
        return {
            k: old_annotations.get(k)
            for k in STAMP_ANNOTATIONS
            if new_annotations.get(k) != old_annotations.get(k)
        }
    meta = new.get("metadata") or {}
    manager = manager_of_change(meta.get("managedFields"), changed_paths(old, new))
    source = change_source(username, manager, operator_user)
    signature = sign(
        key,
        str(meta.get("namespace", "")),
        str(meta.get("name", "")),
        controlled_material(new),
        username,
        source,
    )
    stamp = {
        ANNOTATION_CHANGED_BY: username,
        ANNOTATION_CHANGE_SOURCE: source,
        ANNOTATION_CHANGE_SIGNATURE: signature,
    }
    return {k: v for k, v in stamp.items() if new_annotations.get(k) != v}


def verified_identity(obj: Mapping[str, Any], key: bytes) -> Identity:
    """The stamp on an object, trusted only if its signature matches this exact config."""
    meta = obj.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    user = annotations.get(ANNOTATION_CHANGED_BY)
    source = annotations.get(ANNOTATION_CHANGE_SOURCE)
    signature = annotations.get(ANNOTATION_CHANGE_SIGNATURE)
    if not (user and source and signature):
        return Identity(None, UNVERIFIED, False)
    expected = sign(
        key,
        str(meta.get("namespace", "")),
        str(meta.get("name", "")),
        controlled_material(obj),
        user,
        source,
    )
    if hmac.compare_digest(expected, signature):
        return Identity(user, source, True)
    return Identity(None, UNVERIFIED, False)
