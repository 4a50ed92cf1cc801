"""The audit sidecar against the real API server: TokenReview, SubjectAccessReview, SIGKILL."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests import kube
from tests.integration.conftest import SidecarProcess, wait_allowed
from tradingbot_api.audit_http import EVENTS_PATH, AuditClient, AuditDeliveryError
from tradingbot_audit import AuditFilter, query, verify_log

GROUP = "trading.r7.dev"
StartSidecar = Callable[..., SidecarProcess]


def event(key: str, namespace: str, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "event_type": "restart",
        "severity": "info",
        "source": "operator",
        "target": "bot-a",
        "namespace": namespace,
        "action": "restart_completed",
        "details": {"reason": "config change"},
        "user_id": "system:serviceaccount:trading-system:tradingbot-operator",
        "dedup_key": key,
    }
    body.update(overrides)
    return body


def grant(
    rbac: client.RbacAuthorizationV1Api, namespace: str, account: str, resources: list[str]
) -> None:
    """A Role allowing `get` on `resources` of the TradingBot API, bound to the account."""
    name = f"{account}-read"
    rbac.create_namespaced_role(
        namespace,
        client.V1Role(
            metadata=client.V1ObjectMeta(name=name),
            rules=[client.V1PolicyRule(api_groups=[GROUP], resources=resources, verbs=["get"])],
        ),
    )
    rbac.create_namespaced_role_binding(
        namespace,
        client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name=name),
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="Role", name=name
            ),
            subjects=[
                client.RbacV1Subject(kind="ServiceAccount", name=account, namespace=namespace)
            ],
        ),
    )


@pytest.fixture
def cluster_auditor(
    api_client: client.ApiClient, rbac_api: client.RbacAuthorizationV1Api, namespace: str
) -> Iterator[str]:
    """A ServiceAccount allowed `get tradingbots/audit` cluster-wide; yields its token."""
    name = f"audit-reader-{uuid.uuid4().hex[:8]}"
    token = kube.service_account_token(api_client, namespace, "auditor")
    rbac_api.create_cluster_role(
        client.V1ClusterRole(
            metadata=client.V1ObjectMeta(name=name),
            rules=[
                client.V1PolicyRule(
                    api_groups=[GROUP], resources=["tradingbots/audit"], verbs=["get"]
                )
            ],
        )
    )
    rbac_api.create_cluster_role_binding(
        client.V1ClusterRoleBinding(
            metadata=client.V1ObjectMeta(name=name),
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=name
            ),
            subjects=[
                client.RbacV1Subject(kind="ServiceAccount", name="auditor", namespace=namespace)
            ],
        )
    )
    wait_allowed(
        api_client,
        f"system:serviceaccount:{namespace}:auditor",
        None,
        GROUP,
        "tradingbots",
        subresource="audit",
    )
    yield token
    with contextlib.suppress(client.ApiException):
        rbac_api.delete_cluster_role_binding(name)
    with contextlib.suppress(client.ApiException):
        rbac_api.delete_cluster_role(name)


def test_reading_the_audit_needs_get_on_tradingbots_audit(
    api_client: client.ApiClient,
    rbac_api: client.RbacAuthorizationV1Api,
    namespace: str,
    start_sidecar: StartSidecar,
    cluster_auditor: str,
) -> None:
    sidecar = start_sidecar()
    events = [event(f"k{i}", namespace) for i in range(3)] + [event("elsewhere", "other-ns")]
    status, body = sidecar.request("POST", "/v1/events", body={"events": events}, ingest=True)
    assert status == 200, body

    plain = kube.service_account_token(api_client, namespace, "plain-reader")
    auditor = kube.service_account_token(api_client, namespace, "audit-reader")
    grant(rbac_api, namespace, "plain-reader", ["tradingbots"])
    grant(rbac_api, namespace, "audit-reader", ["tradingbots/audit"])
    for account in ("plain-reader", "audit-reader"):
        wait_allowed(
            api_client,
            f"system:serviceaccount:{namespace}:{account}",
            namespace,
            GROUP,
            "tradingbots",
            subresource="audit" if account == "audit-reader" else None,
        )
    in_namespace = f"/v1/events?namespace={namespace}"

    # get on tradingbots is not get on tradingbots/audit.
    status, body = sidecar.request("GET", in_namespace, token=plain)
    assert status == 403, body
    assert "tradingbots/audit" in body["error"]

    status, body = sidecar.request("GET", in_namespace, token=auditor)
    assert status == 200, body
    assert [e["dedup_key"] for e in body["events"]] == ["k2", "k1", "k0"]
    status, body = sidecar.request("GET", f"/v1/summary?namespace={namespace}", token=auditor)
    assert (status, body["total"], body["by_type"]) == (200, 3, {"restart": 3})

    # A namespaced grant does not reach other namespaces, nor the whole log.
    status, _ = sidecar.request("GET", "/v1/events?namespace=other-ns", token=auditor)
    assert status == 403
    for path in ("/v1/events", "/v1/summary", "/v1/verify"):
        assert sidecar.request("GET", path, token=auditor)[0] == 403, path

    # A cluster-wide grant reads everything.
    status, body = sidecar.request("GET", "/v1/events", token=cluster_auditor)
    assert status == 200 and len(body["events"]) == 4
    status, body = sidecar.request("GET", "/v1/verify", token=cluster_auditor)
    assert (status, body["ok"], body["error"]) == (200, True, None)

    # No token, or one the API server does not recognise.
    status, body = sidecar.request("GET", in_namespace)
    assert status == 401, body
    assert sidecar.request("GET", in_namespace, token="not-a-token")[0] == 401


def test_the_plugin_reads_through_the_sidecar(
    namespace: str, start_sidecar: StartSidecar, cluster_auditor: str
) -> None:
    from tradingbot_plugin.plugin import AuditQuery, HttpAuditSource

    sidecar = start_sidecar()
    events = [event("a", namespace, event_type="halt", severity="critical"), event("b", namespace)]
    assert sidecar.request("POST", "/v1/events", body={"events": events}, ingest=True)[0] == 200
    source = HttpAuditSource(sidecar.api_url, cluster_auditor)
    found = source.events(AuditQuery(namespace=namespace, severity="critical"), 0)
    assert [e["dedup_key"] for e in found] == ["a"]
    assert source.summary(AuditQuery(namespace=namespace))["by_type"] == {"halt": 1, "restart": 1}
    assert source.verify()["ok"] is True


def test_a_bot_reports_only_about_itself(
    api_client: client.ApiClient, namespace: str, start_sidecar: StartSidecar
) -> None:
    sidecar = start_sidecar()
    bot_token = kube.service_account_token(api_client, namespace, "tradingbot-bot-a")
    other_token = kube.service_account_token(api_client, namespace, "default")
    fill = {
        "event_type": "trade",
        "action": "order_filled",
        "target": "bot-a",
        "namespace": namespace,
        "details": {"symbol": "BTC/USDT", "side": "buy", "qty": 0.01, "price": 50000},
        "dedup_key": "fill-1",
    }

    status, body = sidecar.request(
        "POST", "/v1/bot-events", token=bot_token, body={"events": [fill]}
    )
    assert status == 200, body
    assert body["stored"][0]["duplicate"] is False

    about_b = {**fill, "target": "bot-b", "dedup_key": "fill-2"}
    status, body = sidecar.request(
        "POST", "/v1/bot-events", token=bot_token, body={"events": [about_b]}
    )
    assert status == 403, body
    status, _ = sidecar.request(
        "POST", "/v1/bot-events", token=other_token, body={"events": [fill]}
    )
    assert status == 403
    status, _ = sidecar.request("POST", "/v1/bot-events", body={"events": [fill]})
    assert status == 401

    sidecar.stop()
    records = query(sidecar.log_dir, AuditFilter(), limit=None)
    assert len(records) == 1
    assert records[0]["source"] == "bot"
    assert records[0]["user_id"] == f"system:serviceaccount:{namespace}:tradingbot-bot-a"
    assert (records[0]["namespace"], records[0]["target"]) == (namespace, "bot-a")


# -- crash safety ----------------------------------------------------------------------------

EVENTS = 400
PER_REQUEST = 5
SENDERS = 4


async def _stream(
    url: str,
    batches: list[list[dict[str, Any]]],
    acked: dict[int, list[dict[str, Any]]],
    kill_after: int,
    kill: Callable[[], None],
) -> None:
    """Several senders post batches until the sidecar dies under them."""
    pending = list(range(len(batches)))

    async def sender(client: AuditClient) -> None:
        while pending:
            index = pending.pop(0)
            try:
                acked[index] = await client.send(batches[index])
            except AuditDeliveryError as err:
                assert err.retryable, err
                return
            if len(acked) == kill_after:
                # Others are mid-request now: the kill lands on writes in flight.
                await asyncio.to_thread(kill)

    async with AuditClient(url + EVENTS_PATH, timeout=10) as client:
        await asyncio.gather(*(sender(client) for _ in range(SENDERS)))


def test_sigkill_mid_stream_then_resend_leaves_every_event_exactly_once(
    namespace: str, start_sidecar: StartSidecar, tmp_path: Path
) -> None:
    log_dir = tmp_path / "audit"
    keys = [f"{namespace}/event-{i}" for i in range(EVENTS)]
    batches = [
        [event(key, namespace, details={"n": i}) for i, key in enumerate(keys[j : j + PER_REQUEST])]
        for j in range(0, EVENTS, PER_REQUEST)
    ]
    first = start_sidecar(log_dir)
    acked: dict[int, list[dict[str, Any]]] = {}
    asyncio.run(_stream(first.ingest_url, batches, acked, len(batches) // 4, first.kill))
    assert first.proc is not None and first.proc.returncode == -9
    assert len(batches) // 4 <= len(acked) < len(batches)

    second = start_sidecar(log_dir)
    unacked = [i for i in range(len(batches)) if i not in acked]
    again = sorted(acked)[:5]

    async def resend() -> dict[int, list[dict[str, Any]]]:
        async with AuditClient(second.ingest_url + EVENTS_PATH) as client:
            return {i: await client.send(batches[i]) for i in unacked + again}

    resent = asyncio.run(resend())
    for index in again:
        # Acknowledged before the crash: the same records, marked duplicate.
        assert resent[index] == [{**stored, "duplicate": True} for stored in acked[index]]
    assert second.stop() == 0, second.logs()

    records = query(log_dir, AuditFilter(), limit=None, oldest_first=True)
    assert sorted(r["dedup_key"] for r in records) == sorted(keys)  # each exactly once
    assert [r["seq"] for r in records] == list(range(1, EVENTS + 1))
    result = verify_log(log_dir)
    assert result.ok, result.summary()
    assert result.events == EVENTS
    # Every acknowledgement points at the line that holds the event.
    by_seq = {r["seq"]: r for r in records}
    for index, stored in {**acked, **resent}.items():
        for position, entry in enumerate(stored):
            assert by_seq[entry["seq"]]["dedup_key"] == batches[index][position]["dedup_key"]
            assert by_seq[entry["seq"]]["hash"] == entry["hash"]
