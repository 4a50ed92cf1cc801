"""Who changed a bot, as the API server authenticated them — never as a user claims.

The chart's mutating admission policies (CEL, inside the API server) stamp every change of
what a bot does (its spec, or a restart, reason or halt annotation) with the authenticated
user, their groups, the tool (`source`) and a binding: the object's uid, the generation the
change produces and the time the API server recorded for it. A second policy records who set
the credentials reference. The validating policy refuses any write that sets or alters those
annotations by hand, so while the policies are installed a stamp is exactly the last change.

The operator trusts a stamp only when
- the policies are installed, and were installed before the stamp was written (a stamp
  forged while they were absent stays unverified after they come back);
- the stamp's uid and generation are this object's (a stamp copied from another object, or
  left over from an earlier generation, is unverified).
- the stamp is not older than the newest one already verified for this bot (kept in
  `status.lastChange`): stamps are single-use, a copy of an earlier one is a replay.
A stamp therefore vouches for one change: the next controlled change replaces it, and a
copy of it anywhere else, or later, does not verify. The operator reads the policies afresh
whenever a new stamp appears, so removing them is noticed before a stamp written meanwhile
is believed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tradingbot_api.constants import (
    ANNOTATION_CHANGE_SOURCE,
    ANNOTATION_CHANGE_STAMP,
    ANNOTATION_CHANGED_BY,
    ANNOTATION_CHANGED_BY_GROUPS,
    ANNOTATION_CREDENTIALS_REFERENCED_BY,
    ANNOTATION_CREDENTIALS_REFERENCED_GROUPS,
    ANNOTATION_CREDENTIALS_REFERENCED_STAMP,
)
from tradingbot_api.times import parse_time

PLUGIN_MANAGER = "kubectl-tradingbot"
UNVERIFIED = "unverified"


@dataclass(frozen=True)
class PolicyState:
    """Whether the stamping admission policies are installed, and since when."""

    installed_since: datetime | None = None

    @property
    def installed(self) -> bool:
        return self.installed_since is not None


@dataclass(frozen=True)
class Identity:
    user: str | None
    source: str
    verified: bool
    groups: tuple[str, ...] = ()
    # The restart-reason annotation was written with this change (not left from an earlier one).
    reason_is_new: bool = False
    problem: str = ""
    time: datetime | None = None  # when the API server wrote the stamp
    revision: str | None = None  # the resourceVersion the stamp was written over


@dataclass(frozen=True)
class Referrer:
    """Who set the credentials reference, for the operator's own access check."""

    secret: str
    user: str
    groups: tuple[str, ...]


def parse_fields(text: str) -> dict[str, str]:
    """`uid=…;generation=…;time=…` as a dict (values never contain `;`)."""
    fields: dict[str, str] = {}
    for part in text.split(";"):
        key, sep, value = part.partition("=")
        if sep:
            fields[key] = value
    return fields


def _groups(text: str | None) -> tuple[str, ...]:
    return tuple(g for g in (text or "").split(",") if g)


def _binding_problem(
    fields: Mapping[str, str], meta: Mapping[str, Any], policies: PolicyState
) -> str:
    """Why a stamp does not vouch for this object as it is, or "" when it does."""
    if policies.installed_since is None:
        return "the stamping admission policies are not installed"
    written = parse_time(fields.get("time"))
    if written is None or written < policies.installed_since:
        return "stamp written before the admission policies were installed"
    uid = fields.get("uid", "")
    if uid and uid != str(meta.get("uid") or ""):
        return "stamp made for another object"
    return ""


def change_stamp(obj: Mapping[str, Any]) -> str:
    """The raw change stamp (empty when there is none): a new value means a new change."""
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    return "\n".join(
        annotations.get(k, "") for k in (ANNOTATION_CHANGED_BY, ANNOTATION_CHANGE_STAMP)
    )


@dataclass(frozen=True, order=True)
class StampOrder:
    """Where a stamp sits in the object's history: the time the API server wrote it and the
    resourceVersion it was written over (unique per write, so two changes in one second
    differ). resourceVersions are etcd revisions: compared as numbers when they are."""

    time: datetime
    revision: int = -1

    @classmethod
    def of(cls, time: datetime | None, revision: str | None) -> StampOrder | None:
        if time is None:
            return None
        return cls(time, int(revision) if revision and revision.isdigit() else -1)


def verified_identity(
    obj: Mapping[str, Any], policies: PolicyState, newest_seen: StampOrder | None = None
) -> Identity:
    """The change stamp on an object, trusted only if it vouches for this object as it is.

    `newest_seen` places the newest stamp already verified for this object: stamps are
    single-use, so one not newer (copied back from an earlier change) is a replay."""
    meta = obj.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    user = annotations.get(ANNOTATION_CHANGED_BY)
    stamp = annotations.get(ANNOTATION_CHANGE_STAMP)
    if not (user and stamp):
        return Identity(None, UNVERIFIED, False, problem="no change stamp")
    fields = parse_fields(stamp)
    problem = _binding_problem(fields, meta, policies)
    if not problem and fields.get("generation") != str(meta.get("generation") or 1):
        problem = "stamp made for another generation"
    written = parse_time(fields.get("time"))
    order = StampOrder.of(written, fields.get("rv"))
    if not problem and newest_seen and order and _replayed(order, newest_seen):
        problem = "stamp older than one already seen (replayed)"
    if problem:
        return Identity(None, UNVERIFIED, False, problem=problem)
    return Identity(
        user,
        annotations.get(ANNOTATION_CHANGE_SOURCE) or "api",
        True,
        groups=_groups(annotations.get(ANNOTATION_CHANGED_BY_GROUPS)),
        reason_is_new=fields.get("reason") == "new",
        time=written,
        revision=fields.get("rv") or None,
    )


def _replayed(order: StampOrder, newest: StampOrder) -> bool:
    if order.revision >= 0 and newest.revision >= 0:
        return order.revision < newest.revision
    return order.time < newest.time


def credentials_referrer(
    obj: Mapping[str, Any], secret: str, policies: PolicyState
) -> tuple[Referrer | None, str]:
    """Who set `secret` as the credentials reference, if a trusted stamp says so; else why
    not. Generation is not bound: later changes of other fields keep the referrer."""
    meta = obj.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    user = annotations.get(ANNOTATION_CREDENTIALS_REFERENCED_BY)
    stamp = annotations.get(ANNOTATION_CREDENTIALS_REFERENCED_STAMP)
    if not (user and stamp):
        return None, "no record of who set the credentials reference"
    fields = parse_fields(stamp)
    problem = _binding_problem(fields, meta, policies)
    if not problem and fields.get("secret") != secret:
        problem = "the credentials stamp names another Secret"
    if problem:
        return None, problem
    groups = _groups(annotations.get(ANNOTATION_CREDENTIALS_REFERENCED_GROUPS))
    return Referrer(secret, user, groups), ""


# -- deletions: the validating webhook sees the request, so it classifies the tool itself -------


def owned_paths(fields_v1: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted paths of the leaf fields a managedFields entry owns (`f:spec` -> `spec`)."""
    paths: list[str] = []
    for key, child in fields_v1.items():
        if key == ".":
            continue
        name = key[2:] if key.startswith("f:") else key
        path = f"{prefix}.{name}" if prefix else name
        if not isinstance(child, Mapping) or not child:
            paths.append(path)
        else:
            paths.extend(owned_paths({k: v for k, v in child.items() if k != "."}, path))
    return paths


def manager_of_change(
    managed_fields: Sequence[Mapping[str, Any]] | None, changed: Sequence[str]
) -> str | None:
    """The field manager that last wrote any of the `changed` paths (latest wins)."""
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
    """Which tool made a change, from who made it and the field manager they used (the same
    rule as the change-stamp admission policy)."""
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
