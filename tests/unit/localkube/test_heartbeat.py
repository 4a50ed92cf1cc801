"""The node heartbeat's Lease: its body, its renewal rhythm, when it counts as expired."""

from __future__ import annotations

import datetime as dt

import pytest

from localkube.heartbeat import (
    NODE_LEASE_DURATION_SECONDS,
    NODE_LEASE_NAMESPACE,
    lease_body,
    lease_expired,
    node_status,
    renew_interval,
    retry_delay,
)

NOW = dt.datetime(2026, 12, 1, 20, 0, 0, 250000, tzinfo=dt.UTC)


def test_the_lease_is_the_kubelets() -> None:
    body = lease_body("node-a", "uid-a", 10, NOW)
    assert NODE_LEASE_NAMESPACE == "kube-node-lease" and NODE_LEASE_DURATION_SECONDS == 10
    assert body["metadata"]["name"] == "node-a"
    assert body["metadata"]["namespace"] == "kube-node-lease"
    assert body["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Node", "name": "node-a", "uid": "uid-a"}
    ]
    assert body["spec"] == {
        "holderIdentity": "node-a",
        "leaseDurationSeconds": 10,
        "renewTime": "2026-12-01T20:00:00.250000Z",  # MicroTime
    }
    assert "ownerReferences" not in lease_body("node-a", None, 10, NOW)["metadata"]


@pytest.mark.parametrize(
    ("renewed_ago", "duration", "expired"),
    [
        (0.0, 10, False),
        (9.9, 10, False),
        (10.0, 10, False),  # the boundary itself still holds
        (10.1, 10, True),
        (3.0, 2, True),
        (None, 10, True),  # never renewed
        (0.0, None, True),  # no duration: nothing to hold
        (0.0, 0, True),
    ],
)
def test_lease_expired(renewed_ago: float | None, duration: int | None, expired: bool) -> None:
    renew = None if renewed_ago is None else NOW - dt.timedelta(seconds=renewed_ago)
    assert lease_expired(renew, duration, NOW) is expired


def test_a_naive_renew_time_is_taken_as_utc() -> None:
    naive = (NOW - dt.timedelta(seconds=11)).replace(tzinfo=None)
    assert lease_expired(naive, 10, NOW)


@pytest.mark.parametrize(
    ("duration", "interval"), [(10, 2.5), (40, 10.0), (4, 1.0), (1, 0.25), (0.4, 0.2)]
)
def test_the_lease_is_renewed_every_quarter_of_its_duration(
    duration: float, interval: float
) -> None:
    assert renew_interval(duration) == interval


@pytest.mark.parametrize(
    ("failures", "interval", "delay"),
    [(1, 2.5, 0.2), (2, 2.5, 0.4), (3, 2.5, 0.8), (4, 2.5, 1.6), (5, 2.5, 2.5), (50, 2.5, 2.5)],
)
def test_a_failed_renewal_is_retried_sooner(failures: int, interval: float, delay: float) -> None:
    assert retry_delay(failures, interval) == pytest.approx(delay)


def test_the_node_status_carries_the_ready_heartbeat() -> None:
    since = NOW - dt.timedelta(minutes=5)
    (ready,) = node_status("node-a", NOW, ready=True, since=since, message="ok")["conditions"]
    assert ready["type"] == "Ready" and ready["status"] == "True"
    assert ready["lastHeartbeatTime"] == "2026-12-01T20:00:00Z"
    assert ready["lastTransitionTime"] == "2026-12-01T19:55:00Z"
    (down,) = node_status("node-a", NOW, ready=False, since=NOW, message="stopped")["conditions"]
    assert down["status"] == "False" and down["reason"] == "KubeletNotReady"
