"""The controller's gather and apply steps against the shared fake API server.

`decide` is tested as a pure function elsewhere; these tests check what the reconciler reads
and writes around it: which objects it creates, that its status writes and pod deletions
carry the preconditions that stop it from acting on a stale picture, and that nothing it
decided is lost when a write fails.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from tests.fakeapi import Call, FakeApiServer
from tradingbot_api.constants import (
    ANNOTATION_CONFIG_HASH,
    ANNOTATION_RESTARTED_AT,
    LABEL_BOT,
    lease_name,
    state_configmap_name,
)
from tradingbot_api.kubeclient import KubeError
from tradingbot_operator.decide_outcome import Decision
from tradingbot_operator.kubeapi import KubeApi
from tradingbot_operator.metrics import OperatorMetrics
from tradingbot_operator.reconcile import BotReconciler, Fleet, _Gone
from tradingbot_operator.recorder import AuditEvent, AuditRecorder, InvolvedObject
from tradingbot_operator.settings import OperatorSettings

NS, BOT = "trading", "bot-a"
SPEC = {
    "profile": "stable",
    "exchange": {"id": "binance"},
    "symbols": ["BTC/USDT"],
    "restartPolicy": {"coalesceSeconds": 0},
}


class Log:
    """A durable audit sink that can be made to fail."""

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []
        self.down = False

    async def __call__(self, events: Sequence[AuditEvent], involved: InvolvedObject) -> None:
        if self.down:
            raise ConnectionError("audit sidecar down")
        self.events.extend(events)


@pytest.fixture
def server() -> FakeApiServer:
    server = FakeApiServer()
    server.put(
        {
            "apiVersion": "trading.r7.dev/v1alpha1",
            "kind": "TradingBot",
            "metadata": {"name": BOT, "namespace": NS},
            "spec": SPEC,
        }
    )
    return server


@pytest.fixture
def audit() -> Log:
    return Log()


@pytest.fixture
def fleet(server: FakeApiServer, audit: Log) -> Fleet:
    return Fleet(
        settings=OperatorSettings(node_heartbeats=False),
        api=KubeApi(server),  # type: ignore[arg-type]
        recorder=AuditRecorder(durable=[audit]),
        metrics=OperatorMetrics(),
    )


def reconciler(fleet: Fleet) -> BotReconciler:
    return BotReconciler(fleet, NS, BOT)


def status(server: FakeApiServer) -> dict[str, Any]:
    bot = server.get("TradingBot", NS, BOT)
    assert bot is not None
    return dict(bot.get("status") or {})


def pods(server: FakeApiServer) -> list[dict[str, Any]]:
    return server.all("Pod", NS)


def make_ready(server: FakeApiServer) -> None:
    """Play the kubelet: every bot pod runs and is Ready."""
    for pod in pods(server):
        path = f"/api/v1/namespaces/{NS}/pods/{pod['metadata']['name']}/status"
        server.handle(
            "PATCH",
            path,
            body={
                "status": {
                    "phase": "Running",
                    "conditions": [{"type": "Ready", "status": "True"}],
                    "containerStatuses": [{"name": "bot", "restartCount": 0, "ready": True}],
                }
            },
            content_type="application/merge-patch+json",
        )


def finish_deletions(server: FakeApiServer) -> None:
    for pod in pods(server):
        if pod["metadata"].get("deletionTimestamp"):
            server.remove("Pod", NS, pod["metadata"]["name"])


async def running(fleet: Fleet, server: FakeApiServer) -> dict[str, Any]:
    """Reconcile a new bot until its pod runs; the pod."""
    await reconciler(fleet).reconcile_once()
    make_ready(server)
    await reconciler(fleet).reconcile_once()
    assert status(server)["phase"] == "Running"
    (pod,) = pods(server)
    return pod


def user_patch(server: FakeApiServer, patch: dict[str, Any]) -> None:
    server.handle(
        "PATCH",
        f"/apis/trading.r7.dev/v1alpha1/namespaces/{NS}/tradingbots/{BOT}",
        body=patch,
        content_type="application/merge-patch+json",
    )


async def test_a_new_bot_gets_its_identity_state_and_one_pod(
    fleet: Fleet, server: FakeApiServer, audit: Log
) -> None:
    decision = await reconciler(fleet).reconcile_once()
    (pod,) = pods(server)
    assert pod["metadata"]["labels"][LABEL_BOT] == BOT
    assert pod["metadata"]["annotations"][ANNOTATION_CONFIG_HASH] == decision.actions[0].config_hash  # type: ignore[union-attr]
    account = server.get("ServiceAccount", NS, f"tradingbot-{BOT}")
    assert account is not None
    assert server.get("Role", NS, f"tradingbot-{BOT}") is not None
    assert server.get("Lease", NS, lease_name(BOT)) is not None
    assert server.get("ConfigMap", NS, state_configmap_name(BOT)) is not None
    assert status(server)["phase"] == "Starting"
    # The pod was checked by a dry run first, and the intent written before the pod exists.
    posts = [c for c in server.writes("POST") if c.path.endswith("/pods")]
    assert [c.query.get("dryRun") for c in posts] == ["All", None]
    writes = server.writes()
    status_write = next(i for i, c in enumerate(writes) if c.path.endswith("/status"))
    assert writes.index(posts[1]) > status_write


async def test_the_bots_state_is_never_overwritten(fleet: Fleet, server: FakeApiServer) -> None:
    """The state ConfigMap and the Lease are created when absent, never applied over."""
    server.put(
        {
            "kind": "ConfigMap",
            "metadata": {"name": state_configmap_name(BOT), "namespace": NS},
            "data": {"state.json": '{"positions": {"BTC/USDT": 1}}'},
        }
    )
    await reconciler(fleet).reconcile_once()
    state = server.get("ConfigMap", NS, state_configmap_name(BOT))
    assert state is not None
    assert state["data"] == {"state.json": '{"positions": {"BTC/USDT": 1}}'}


async def test_the_status_write_fails_when_the_bot_changed_since_it_was_read(
    fleet: Fleet, server: FakeApiServer
) -> None:
    """A pass decides on what it read; if someone writes the bot in between, its status
    write is refused and it acts on nothing (the next pass decides again)."""

    def concurrent_writer(call: Call) -> None:
        if call.method == "PATCH" and call.path.endswith("/status"):
            server.before = None
            user_patch(server, {"metadata": {"annotations": {"someone": "else"}}})

    server.before = concurrent_writer
    with pytest.raises(KubeError) as raised:
        await reconciler(fleet).reconcile_once()
    assert raised.value.conflict
    assert [p for p in pods(server)] == []
    assert "phase" not in status(server)
    # ...and the restart slot it may have taken is given back.
    assert fleet.restart_slots == set()
    await reconciler(fleet).reconcile_once()
    assert len(pods(server)) == 1


async def test_a_pod_deletion_names_the_uid_it_decided_on(
    fleet: Fleet, server: FakeApiServer
) -> None:
    """Deleting by name alone could remove a pod that replaced the one decided on."""
    pod = await running(fleet, server)
    user_patch(server, {"metadata": {"annotations": {ANNOTATION_RESTARTED_AT: "1"}}})
    await reconciler(fleet).reconcile_once()
    (delete,) = server.writes("DELETE")
    assert delete.body["preconditions"] == {"uid": pod["metadata"]["uid"]}
    assert delete.body["gracePeriodSeconds"] == 30


async def test_a_stale_deletion_leaves_the_pod_that_replaced_it(
    fleet: Fleet, server: FakeApiServer
) -> None:
    pod = await running(fleet, server)
    name = pod["metadata"]["name"]

    def replaced_meanwhile(call: Call) -> None:
        if call.method == "DELETE" and call.path.endswith(f"/pods/{name}"):
            server.before = None
            server.remove("Pod", NS, name)
            server.put({**pod, "metadata": {**pod["metadata"], "uid": "uid-replacement"}})

    server.before = replaced_meanwhile
    user_patch(server, {"metadata": {"annotations": {ANNOTATION_RESTARTED_AT: "1"}}})
    await reconciler(fleet).reconcile_once()  # the conflict is not an error: the pod differs
    (survivor,) = pods(server)
    assert survivor["metadata"]["uid"] == "uid-replacement"


async def test_a_restart_is_stop_then_start_never_two_pods(
    fleet: Fleet, server: FakeApiServer
) -> None:
    server.graceful_pods = True
    old = await running(fleet, server)
    user_patch(server, {"spec": {"risk": {"maxOpenPositions": 2}}})
    for _ in range(3):
        await reconciler(fleet).reconcile_once()
        alive = [p for p in pods(server) if not p["metadata"].get("deletionTimestamp")]
        assert len(alive) <= 1
        # While the old pod is terminating, no new one is created.
        assert len(pods(server)) == 1
    finish_deletions(server)
    await reconciler(fleet).reconcile_once()
    (new,) = pods(server)
    assert new["metadata"]["uid"] != old["metadata"]["uid"]
    make_ready(server)
    await reconciler(fleet).reconcile_once()
    assert status(server)["restarts"]["total"] == 1


async def test_an_earlier_pass_creating_the_pod_is_not_an_error(
    fleet: Fleet, server: FakeApiServer
) -> None:
    """The operator died after creating the pod and before seeing it: same name, same hash."""

    def created_by_an_earlier_pass(call: Call) -> None:
        if call.method == "POST" and call.path.endswith("/pods") and not call.query:
            server.before = None
            server.put(call.body)

    server.before = created_by_an_earlier_pass
    await reconciler(fleet).reconcile_once()
    assert status(server)["phase"] == "Starting"
    assert len(pods(server)) == 1
    assert [c.method for c in server.calls[-1:]] == ["POST"]  # the 409, then nothing else


async def test_audit_events_wait_in_status_until_the_log_has_them(
    fleet: Fleet, server: FakeApiServer, audit: Log
) -> None:
    await running(fleet, server)
    audit.down = True
    user_patch(server, {"metadata": {"annotations": {ANNOTATION_RESTARTED_AT: "1"}}})
    decision = await reconciler(fleet).reconcile_once()
    outbox = status(server)["auditOutbox"]
    assert [e["reason"] for e in outbox] == ["RestartRequested", "RestartStarted"]
    assert decision.requeue_after is not None and decision.requeue_after <= 2.0
    audit.down = False
    await reconciler(fleet).reconcile_once()
    assert "auditOutbox" not in status(server)
    assert [e.reason for e in audit.events][-2:] == ["RestartRequested", "RestartStarted"]
    # Emptied with a precondition: an outbox written meanwhile is not thrown away.
    (last_clear,) = [
        c
        for c in server.writes("PATCH")
        if c.path.endswith("/status") and c.body["status"] == {"auditOutbox": None}
    ][-1:]
    assert last_clear.body["metadata"]["resourceVersion"]


async def test_a_deleted_bot_ends_its_loop(fleet: Fleet, server: FakeApiServer) -> None:
    server.remove("TradingBot", NS, BOT)
    with pytest.raises(_Gone):
        await reconciler(fleet).reconcile_once()


async def test_an_unreachable_api_server_changes_nothing(
    fleet: Fleet, server: FakeApiServer
) -> None:
    server.fail_next(0, method="GET", path_contains="/pods")
    with pytest.raises(KubeError) as raised:
        await reconciler(fleet).reconcile_once()
    assert raised.value.status == 0
    assert server.writes() == []


async def test_passes_in_flight_are_bounded_fleet_wide(
    server: FakeApiServer, audit: Log, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Thousands of loops starting at once wait for a pass slot, not in the HTTP pool (where
    the wait counts against the connect timeout and fails the pass)."""
    fleet = Fleet(
        settings=OperatorSettings(node_heartbeats=False, max_concurrent_passes=3),
        api=KubeApi(server),  # type: ignore[arg-type]
        recorder=AuditRecorder(durable=[audit]),
        metrics=OperatorMetrics(),
    )
    running, most = 0, 0

    async def a_pass(self: BotReconciler, deleting: bool) -> Any:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.01)
        running -= 1
        return Decision(finalize=True)

    monkeypatch.setattr(BotReconciler, "_reconcile_once", a_pass)
    loops = [BotReconciler(fleet, NS, f"bot-{i}") for i in range(20)]
    await asyncio.gather(*(loop.reconcile_once() for loop in loops))
    await asyncio.gather(*(loop.finalize_once() for loop in loops[:5]))
    assert most == 3
