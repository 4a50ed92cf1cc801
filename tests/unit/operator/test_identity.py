"""Identity stamps: who changed a bot, verifiable, not forgeable by writing annotations."""

from __future__ import annotations

import copy

import pytest

from tradingbot_operator.identity import (
    ANNOTATION_CHANGE_SOURCE,
    ANNOTATION_CHANGED_BY,
    change_source,
    manager_of_change,
    owned_paths,
    stamp_changes,
    verified_identity,
)

KEY = b"k" * 32


def bot(**spec: object) -> dict:
    return {
        "metadata": {"name": "bot-a", "namespace": "ns", "annotations": {}},
        "spec": {"profile": "stable", "risk": {"maxOpenPositions": 2}, **spec},
    }


def stamped(obj: dict, user: str, old: dict | None = None) -> dict:
    out = copy.deepcopy(obj)
    for key, value in stamp_changes(old, obj, user, KEY).items():
        if value is None:
            out["metadata"]["annotations"].pop(key, None)
        else:
            out["metadata"]["annotations"][key] = value
    return out


@pytest.mark.parametrize(
    ("user", "manager", "source"),
    [
        ("alice", "kubectl-edit", "kubectl"),
        ("alice", "kubectl-client-side-apply", "kubectl"),
        ("alice", "kubectl-tradingbot", "plugin"),
        (
            "system:serviceaccount:argocd:argocd-application-controller",
            "argocd-controller",
            "gitops",
        ),
        ("system:serviceaccount:argocd:argocd-server", None, "gitops"),
        ("bob", "helm", "helm"),
        ("bob", "OpenAPI-Generator", "api"),
        ("system:serviceaccount:tb:operator", "kopf", "operator"),
    ],
)
def test_the_source_comes_from_the_user_and_their_field_manager(
    user: str, manager: str | None, source: str
) -> None:
    assert change_source(user, manager, "system:serviceaccount:tb:operator") == source


def test_ownership_is_of_leaves_not_containers() -> None:
    fields = {
        "f:spec": {
            ".": {},
            "f:risk": {".": {}, "f:maxOpenPositions": {}},
            "f:symbols": {".": {}, 'v:"BTC/USDT"': {}},
        }
    }
    assert owned_paths(fields) == ["spec.risk.maxOpenPositions", 'spec.symbols.v:"BTC/USDT"']


def test_the_manager_of_a_change_is_the_one_owning_the_changed_field() -> None:
    managed = [
        {
            "manager": "creator",
            "time": "2026-11-29T10:00:00Z",
            "fieldsV1": {"f:spec": {".": {}, "f:profile": {}, "f:risk": {".": {}}}},
        },
        {
            "manager": "kubectl-edit",
            "time": "2026-11-29T10:00:00Z",
            "fieldsV1": {"f:spec": {"f:risk": {"f:maxOpenPositions": {}}}},
        },
        {
            "manager": "kopf",
            "time": "2026-11-29T10:00:00Z",
            "subresource": "status",
            "fieldsV1": {"f:status": {}},
        },
    ]
    assert manager_of_change(managed, ["spec.risk.maxOpenPositions"]) == "kubectl-edit"
    assert manager_of_change(managed, ["spec.symbols"]) in ("creator", "kubectl-edit")


def test_a_controlled_change_is_stamped_with_its_user() -> None:
    obj = stamped(bot(), "alice")
    identity = verified_identity(obj, KEY)
    assert (identity.user, identity.verified) == ("alice", True)


def test_a_write_that_changes_nothing_controlled_cannot_alter_the_stamp() -> None:
    before = stamped(bot(), "alice")
    forged = copy.deepcopy(before)
    forged["metadata"]["annotations"][ANNOTATION_CHANGED_BY] = "mallory"
    forged["metadata"]["annotations"][ANNOTATION_CHANGE_SOURCE] = "gitops"
    restored = stamped(forged, "mallory", old=before)
    assert restored["metadata"]["annotations"] == before["metadata"]["annotations"]


def test_a_change_by_someone_claiming_another_name_is_stamped_with_their_own() -> None:
    before = stamped(bot(), "alice")
    edit = copy.deepcopy(before)
    edit["spec"]["risk"]["maxOpenPositions"] = 5
    edit["metadata"]["annotations"][ANNOTATION_CHANGED_BY] = "alice"
    after = stamped(edit, "mallory", old=before)
    assert verified_identity(after, KEY).user == "mallory"


def test_a_stamp_moved_onto_another_config_or_signed_with_another_key_does_not_verify() -> None:
    obj = stamped(bot(), "alice")
    moved = copy.deepcopy(obj)
    moved["spec"]["risk"]["maxOpenPositions"] = 9  # written while the webhook was down
    assert verified_identity(moved, KEY).verified is False
    assert verified_identity(moved, KEY).source == "unverified"
    assert verified_identity(obj, b"another key").verified is False
    halted = copy.deepcopy(obj)
    halted["metadata"]["annotations"]["trading.r7.dev/halt"] = "true"
    assert verified_identity(halted, KEY).verified is False
