"""Node heartbeats and Lease expiry, as the operator judges them."""

from __future__ import annotations

import datetime as dt

import pytest

from tradingbot_operator.watches import lease_expired, stale_nodes

_NOW = dt.datetime(2026, 12, 1, 12, 0, 0, tzinfo=dt.UTC)


def _lease(name: str, renewed: str | None, duration: int | None = 10, holder: str = "x") -> dict:
    spec: dict = {"holderIdentity": holder}
    if renewed:
        spec["renewTime"] = renewed
    if duration is not None:
        spec["leaseDurationSeconds"] = duration
    return {"metadata": {"name": name}, "spec": spec}


@pytest.mark.parametrize(
    ("sentence", "lease", "expired"),
    [
        ("renewed just now", _lease("a", "2026-12-01T11:59:59.000000Z"), False),
        ("renewed within its duration", _lease("a", "2026-12-01T11:59:51.000000Z"), False),
        ("not renewed within its duration", _lease("a", "2026-12-01T11:59:49.000000Z"), True),
        ("released (no holder)", _lease("a", "2026-12-01T11:59:59.000000Z", holder=""), True),
        ("never renewed", _lease("a", None), True),
        ("no duration", _lease("a", "2026-12-01T11:59:59.000000Z", duration=None), True),
        ("absent", None, True),
    ],
)
def test_a_lease_expires_when_not_renewed_within_its_duration(
    sentence: str, lease: dict | None, expired: bool
) -> None:
    assert lease_expired(lease, _NOW) is expired


def test_a_node_is_stale_only_past_its_duration_and_the_skew_margin() -> None:
    leases = [
        _lease("fresh", "2026-12-01T11:59:58.000000Z"),
        _lease("late-but-within-margin", "2026-12-01T11:59:47.000000Z"),
        _lease("gone", "2026-12-01T11:59:40.000000Z"),
    ]
    assert stale_nodes(leases, _NOW) == {"gone"}
