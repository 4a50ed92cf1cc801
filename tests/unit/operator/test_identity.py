"""Change stamps: who changed a bot, trusted only when they vouch for this object as it is."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tradingbot_api.constants import (
    ANNOTATION_CHANGE_SOURCE,
    ANNOTATION_CHANGE_STAMP,
    ANNOTATION_CHANGED_BY,
    ANNOTATION_CHANGED_BY_GROUPS,
    ANNOTATION_CREDENTIALS_REFERENCED_BY,
    ANNOTATION_CREDENTIALS_REFERENCED_GROUPS,
    ANNOTATION_CREDENTIALS_REFERENCED_STAMP,
)
from tradingbot_operator.identity import (
    UNVERIFIED,
    PolicyState,
    Referrer,
    StampOrder,
    change_source,
    credentials_referrer,
    manager_of_change,
    owned_paths,
    verified_identity,
)


def bot(**spec: object) -> dict:
    return {
        "metadata": {"name": "bot-a", "namespace": "ns", "annotations": {}},
        "spec": {"profile": "stable", "risk": {"maxOpenPositions": 2}, **spec},
    }


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


POLICIES = PolicyState(datetime(2026, 11, 29, 9, 0, tzinfo=UTC))


def stamped_bot(
    *,
    user: str = "alice",
    uid: str = "u-1",
    generation: int = 2,
    stamp_uid: str | None = None,
    stamp_generation: int | None = None,
    time: str = "2026-11-29T10:00:00Z",
    reason: str = "kept",
) -> dict:
    obj = bot()
    obj["metadata"].update(uid=uid, generation=generation)
    obj["metadata"]["annotations"] = {
        ANNOTATION_CHANGED_BY: user,
        ANNOTATION_CHANGED_BY_GROUPS: "system:authenticated,traders",
        ANNOTATION_CHANGE_SOURCE: "kubectl",
        ANNOTATION_CHANGE_STAMP: f"uid={uid if stamp_uid is None else stamp_uid};"
        f"generation={generation if stamp_generation is None else stamp_generation};"
        f"time={time};reason={reason}",
    }
    return obj


def test_a_stamp_written_by_the_installed_policies_vouches_for_its_user() -> None:
    identity = verified_identity(stamped_bot(), POLICIES)
    assert (identity.user, identity.source, identity.verified) == ("alice", "kubectl", True)
    assert identity.groups == ("system:authenticated", "traders")


def test_a_creation_stamp_has_no_uid_yet_and_verifies_at_generation_one() -> None:
    obj = stamped_bot(generation=1, stamp_uid="")
    assert verified_identity(obj, POLICIES).verified is True


@pytest.mark.parametrize(
    ("sentence", "obj", "policies", "problem"),
    [
        ("no stamp at all", bot(), POLICIES, "no change stamp"),
        (
            "the policies are not installed",
            stamped_bot(),
            PolicyState(None),
            "the stamping admission policies are not installed",
        ),
        (
            "a stamp older than the policies (forged while they were absent)",
            stamped_bot(time="2026-11-29T08:59:59Z"),
            POLICIES,
            "stamp written before the admission policies were installed",
        ),
        (
            "a stamp without a time",
            stamped_bot(time=""),
            POLICIES,
            "stamp written before the admission policies were installed",
        ),
        (
            "a stamp copied from another bot",
            stamped_bot(stamp_uid="u-other"),
            POLICIES,
            "stamp made for another object",
        ),
        (
            "a stamp left from an earlier generation (the spec changed without one)",
            stamped_bot(stamp_generation=1),
            POLICIES,
            "stamp made for another generation",
        ),
    ],
)
def test_a_stamp_that_does_not_vouch_for_this_object_reads_as_unverified(
    sentence: str, obj: dict, policies: PolicyState, problem: str
) -> None:
    identity = verified_identity(obj, policies)
    assert (identity.user, identity.source, identity.verified) == (None, UNVERIFIED, False)
    assert identity.problem == problem


def test_the_reason_counts_only_when_it_was_written_with_the_change() -> None:
    assert verified_identity(stamped_bot(reason="new"), POLICIES).reason_is_new is True
    assert verified_identity(stamped_bot(reason="kept"), POLICIES).reason_is_new is False


def test_the_credentials_referrer_is_trusted_only_for_the_secret_it_names() -> None:
    obj = stamped_bot()
    obj["metadata"]["annotations"].update(
        {
            ANNOTATION_CREDENTIALS_REFERENCED_BY: "alice",
            ANNOTATION_CREDENTIALS_REFERENCED_GROUPS: "system:authenticated",
            ANNOTATION_CREDENTIALS_REFERENCED_STAMP: (
                "secret=keys;uid=u-1;time=2026-11-29T10:00:00Z"
            ),
        }
    )
    referrer, problem = credentials_referrer(obj, "keys", POLICIES)
    assert referrer == Referrer("keys", "alice", ("system:authenticated",)) and problem == ""
    assert credentials_referrer(obj, "other-keys", POLICIES)[0] is None
    assert credentials_referrer(obj, "keys", PolicyState(None))[0] is None
    assert credentials_referrer(bot(), "keys", POLICIES) == (
        None,
        "no record of who set the credentials reference",
    )


def test_a_stamp_older_than_one_already_verified_is_a_replay() -> None:
    newest = StampOrder(datetime(2026, 11, 29, 11, 0, tzinfo=UTC))
    replayed = verified_identity(stamped_bot(time="2026-11-29T10:00:00Z"), POLICIES, newest)
    assert replayed.verified is False
    assert replayed.problem == "stamp older than one already seen (replayed)"
    same = verified_identity(stamped_bot(time="2026-11-29T11:00:00Z"), POLICIES, newest)
    assert same.verified is True  # the same stamp read again


def test_two_changes_in_one_second_are_told_apart_by_the_revision_they_were_written_over() -> None:
    obj = stamped_bot()
    annotations = obj["metadata"]["annotations"]
    annotations[ANNOTATION_CHANGE_STAMP] = (
        "uid=u-1;rv=100;generation=2;time=2026-11-29T10:00:00Z;reason=kept"
    )
    same_second = StampOrder(datetime(2026, 11, 29, 10, 0, tzinfo=UTC), 120)
    assert verified_identity(obj, POLICIES, same_second).verified is False
    earlier = StampOrder(datetime(2026, 11, 29, 10, 0, tzinfo=UTC), 90)
    identity = verified_identity(obj, POLICIES, earlier)
    assert identity.verified is True and identity.revision == "100"
