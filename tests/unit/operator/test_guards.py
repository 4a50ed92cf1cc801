"""The operator's own checks before it runs a new config (behind the admission policies)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.integration.invalid_specs import INVALID_SPECS, VALID_SPECS
from tradingbot_api.constants import BlockReason
from tradingbot_operator.guards import (
    AccessQuery,
    credentials_blocker,
    image_blocker,
    read_policy_state,
    spec_blocker,
    spec_problems,
)
from tradingbot_operator.identity import PolicyState

POLICIES = PolicyState(datetime(2026, 11, 29, 9, 0, tzinfo=UTC))


@pytest.mark.parametrize(("sentence", "spec"), VALID_SPECS, ids=[s for s, _ in VALID_SPECS])
def test_valid_specs_are_not_blocked(sentence: str, spec: dict) -> None:
    parsed, problems = spec_problems(spec)
    assert parsed is not None and problems == ()
    assert spec_blocker(problems) is None


@pytest.mark.parametrize(
    ("sentence", "spec", "field"), INVALID_SPECS, ids=[s for s, _, _ in INVALID_SPECS]
)
def test_invalid_specs_are_blocked_naming_the_field(sentence: str, spec: dict, field: str) -> None:
    parsed, problems = spec_problems(spec)
    assert parsed is None
    blocker = spec_blocker(problems)
    assert blocker is not None and blocker.reason == BlockReason.SPEC_INVALID
    assert field in blocker.message
    assert len(blocker.message) <= 512  # a megabyte of input is not copied into status


def test_only_allowed_images_run() -> None:
    allowed = ("ghcr.io/r7/tradingbot:0.1.0",)
    assert image_blocker(None, allowed) is None
    assert image_blocker(allowed[0], allowed) is None
    blocker = image_blocker("evil/miner:1", allowed)
    assert blocker is not None and blocker.reason == BlockReason.IMAGE_NOT_ALLOWED


class Reviewer:
    def __init__(self, allowed: bool) -> None:
        self.allowed = allowed
        self.asked: list[tuple[str, tuple[str, ...], str]] = []

    async def may(self, query: AccessQuery) -> tuple[bool, str]:
        self.asked.append((query.user, query.groups, f"{query.verb} {query.resource}/{query.name}"))
        return self.allowed, "" if self.allowed else "RBAC: no rule"


def referenced_by(user: str, secret: str = "keys", time: str = "2026-11-29T10:00:00Z") -> dict:
    return {
        "metadata": {
            "name": "b",
            "namespace": "ns",
            "uid": "u-1",
            "annotations": {
                "trading.r7.dev/credentials-referenced-by": user,
                "trading.r7.dev/credentials-referenced-groups": "system:authenticated",
                "trading.r7.dev/credentials-referenced-stamp": f"secret={secret};uid=;time={time}",
            },
        }
    }


def check(body: dict, approved: str | None, reviewer: Reviewer, policies: PolicyState) -> Any:
    return asyncio.run(credentials_blocker(reviewer, body, "keys", approved, policies))


def test_a_secret_approved_before_needs_no_new_review() -> None:
    reviewer = Reviewer(allowed=False)
    assert check(referenced_by("eve"), "keys", reviewer, PolicyState(None)) is None
    assert reviewer.asked == []


def test_the_user_who_referenced_the_secret_must_be_able_to_read_it() -> None:
    reviewer = Reviewer(allowed=True)
    assert check(referenced_by("alice"), None, reviewer, POLICIES) is None
    assert reviewer.asked == [("alice", ("system:authenticated",), "get secrets/keys")]
    denied = check(referenced_by("eve"), None, Reviewer(allowed=False), POLICIES)
    assert denied.reason == BlockReason.SECRET_NOT_ALLOWED
    assert "eve" in denied.message and "keys" in denied.message


@pytest.mark.parametrize(
    ("sentence", "body", "policies"),
    [
        ("no admission policies", referenced_by("alice"), PolicyState(None)),
        (
            "a stamp from before the policies",
            referenced_by("alice", time="2026-01-01T00:00:00Z"),
            POLICIES,
        ),
        ("a stamp naming another Secret", referenced_by("alice", secret="other"), POLICIES),
        ("no stamp", {"metadata": {"name": "b", "namespace": "ns", "uid": "u-1"}}, POLICIES),
    ],
)
def test_without_a_trusted_record_of_who_referenced_it_the_secret_is_refused(
    sentence: str, body: dict, policies: PolicyState
) -> None:
    reviewer = Reviewer(allowed=True)
    blocker = check(body, None, reviewer, policies)
    assert blocker is not None and blocker.reason == BlockReason.SECRET_NOT_ALLOWED
    assert reviewer.asked == []  # nobody to ask about


class Reader:
    def __init__(self, objects: dict[str, str]) -> None:
        self.objects = objects

    async def get_cluster_object(
        self, group: str, version: str, plural: str, name: str
    ) -> dict[str, Any] | None:
        created = self.objects.get(f"{plural}/{name}")
        return {"metadata": {"creationTimestamp": created}} if created else None


ALL_POLICY_OBJECTS = {
    "mutatingadmissionpolicies/change-stamp.trading.r7.dev": "2026-11-29T08:00:00Z",
    "mutatingadmissionpolicybindings/change-stamp.trading.r7.dev": "2026-11-29T08:00:00Z",
    "mutatingadmissionpolicies/credentials-stamp.trading.r7.dev": "2026-11-29T08:00:00Z",
    "mutatingadmissionpolicybindings/credentials-stamp.trading.r7.dev": "2026-11-29T09:00:00Z",
    "validatingadmissionpolicies/admission.trading.r7.dev": "2026-11-29T08:00:00Z",
    "validatingadmissionpolicybindings/admission.trading.r7.dev": "2026-11-29T08:30:00Z",
}


def test_the_policies_count_as_installed_since_the_newest_of_them() -> None:
    state = asyncio.run(read_policy_state(Reader(ALL_POLICY_OBJECTS)))
    assert state == POLICIES


@pytest.mark.parametrize("missing", sorted(ALL_POLICY_OBJECTS))
def test_any_missing_policy_or_binding_means_not_installed(missing: str) -> None:
    objects = {k: v for k, v in ALL_POLICY_OBJECTS.items() if k != missing}
    assert asyncio.run(read_policy_state(Reader(objects))).installed is False


def test_a_thousand_bots_asking_afresh_at_once_share_one_read_of_the_policies() -> None:
    from tradingbot_operator.guards import PolicyWatch

    class Counting(Reader):
        reads = 0

        async def get_cluster_object(
            self, group: str, version: str, plural: str, name: str
        ) -> dict[str, Any] | None:
            Counting.reads += 1
            return await super().get_cluster_object(group, version, plural, name)

    watch = PolicyWatch(Counting(ALL_POLICY_OBJECTS))

    async def many() -> list[PolicyState]:
        return await asyncio.gather(*(watch.state(fresh=True) for _ in range(1000)))

    states = asyncio.run(many())
    assert all(s == POLICIES for s in states)
    assert Counting.reads == len(ALL_POLICY_OBJECTS)  # one read of each object, not 1,000
