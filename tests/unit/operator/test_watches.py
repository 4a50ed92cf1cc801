"""Node heartbeats and Lease expiry, as the operator judges them."""

from __future__ import annotations

import datetime as dt

import pytest

from tradingbot_api.constants import FLEET_SWITCH_KEY, HaltMode
from tradingbot_operator.watches import FleetSwitch, NodeHeartbeats, lease_expired, stale_nodes

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


def _with_uid(lease: dict, version: str) -> dict:
    lease["metadata"].update(uid=f"uid-{lease['metadata']['name']}", resourceVersion=version)
    lease["metadata"].setdefault("namespace", "kube-node-lease")
    return lease


def test_nodes_are_judged_from_the_watched_leases_only_once_listed() -> None:
    nodes = NodeHeartbeats(client=None, poll=2.0)  # type: ignore[arg-type]
    nodes.informer.store.observe(_with_uid(_lease("dead", "2026-12-01T11:59:00.000000Z"), "1"))
    assert nodes.judge(_NOW) == set()  # before the first list: no verdict
    nodes.informer.synced.set()
    nodes.informer.store.observe(_with_uid(_lease("live", "2026-12-01T11:59:59.000000Z"), "2"))
    assert nodes.judge(_NOW) == {"dead"}
    assert nodes.lost("dead") and not nodes.lost("live") and not nodes.lost(None)
    assert nodes.known == {"dead", "live"}
    assert nodes.judge(_NOW) == set()  # already stale: not news
    # Ten seconds on without a renewal the live node is lost too; by the clock, no request.
    assert nodes.judge(_NOW + dt.timedelta(seconds=20)) == {"live"}


def test_the_fleet_switch_follows_its_config_map_and_wakes_on_a_change() -> None:
    switch = FleetSwitch(client=None, namespace="ops", name="fleet")  # type: ignore[arg-type]
    assert switch.informer.query == {"fieldSelector": "metadata.name=fleet"}
    woken: list[int] = []
    switch._on_change = lambda: woken.append(1)
    key = ("ops", "fleet")
    switch._changed(key, {"data": {FLEET_SWITCH_KEY: "drain"}})
    assert switch.mode == HaltMode.DRAIN and woken == [1]
    switch._changed(key, {"data": {FLEET_SWITCH_KEY: "drain"}})
    assert woken == [1]  # no change, no wake-up
    switch._changed(key, None)  # the ConfigMap deleted: no fleet-wide halt
    assert switch.mode is None and woken == [1, 1]
