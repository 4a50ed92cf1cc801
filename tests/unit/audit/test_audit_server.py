"""The audit sidecar's HTTP API, with TokenReview/SubjectAccessReview replaced by a fake."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import test_utils

from tradingbot_api.audit_http import (
    EVENTS_PATH,
    OPERATOR_AUDIENCE,
    AuditClient,
    AuditDeliveryError,
)
from tradingbot_api.kubeclient import KubeError
from tradingbot_audit import (
    AppendResult,
    AuditFilter,
    AuditHooks,
    AuditWriteError,
    AuditWriter,
    open_writer,
    query,
    verify_log,
)
from tradingbot_audit import handlers as audit_server
from tradingbot_audit.auth import (
    AUDIT_READ,
    AccessCheck,
    AuthUnavailableError,
    CachingAuthorizer,
    Identity,
    KubeAuthorizer,
    access_review_body,
    bot_of,
    identity_from_token_review,
    token_review_body,
)
from tradingbot_audit.cli import build_parser
from tradingbot_audit.files import list_log_files
from tradingbot_audit.ingest import SerialWriter
from tradingbot_audit.serve import ServeOptions, is_loopback, parse_listen, start_server
from tradingbot_audit.server import AuditServer

from .conftest import build_event

OPERATOR = "system:serviceaccount:trading:tradingbot-operator"
AUDITOR = "alice"
BOT_A = "system:serviceaccount:trading:tradingbot-bot-a"


class FakeAuthorizer:
    """Tokens map to identities and the audiences they were issued for (none: the API
    server's own); `grants` holds (user, namespace or None for cluster-wide)."""

    def __init__(self) -> None:
        self.tokens: dict[str, Identity] = {}
        self.audiences: dict[str, tuple[str, ...]] = {}
        self.grants: set[tuple[str, str | None]] = set()
        self.checks: list[tuple[str, AccessCheck]] = []
        self.unavailable = False

    def add(self, token: str, username: str, audiences: tuple[str, ...] = ()) -> None:
        self.tokens[token] = Identity(username=username, groups=("system:authenticated",))
        self.audiences[token] = audiences

    async def authenticate(self, token: str, audiences: Sequence[str] = ()) -> Identity | None:
        if self.unavailable:
            raise AuthUnavailableError("API server down")
        if audiences and not set(audiences) & set(self.audiences.get(token, ())):
            return None
        return self.tokens.get(token)

    async def allowed(self, identity: Identity, check: AccessCheck) -> bool:
        if self.unavailable:
            raise AuthUnavailableError("API server down")
        self.checks.append((identity.username, check))
        if (check.verb, check.group, check.resource, check.subresource) != (
            "get",
            "trading.r7.dev",
            "tradingbots",
            "audit",
        ):
            return False
        user = identity.username
        return (user, None) in self.grants or (
            check.namespace is not None and (user, check.namespace) in self.grants
        )


@dataclass
class Sidecar:
    server: AuditServer
    auth: FakeAuthorizer
    ingest: test_utils.TestClient[Any, Any]
    api: test_utils.TestClient[Any, Any]
    log_dir: Path
    opened: list[FlakyWriter] = field(default_factory=list)

    async def post(self, *events: dict[str, Any]) -> aiohttp.ClientResponse:
        return await self.ingest.post("/v1/events", json={"events": list(events)})

    async def get(self, path: str, token: str | None = "auditor", **params: Any) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return await self.api.get(path, params=params, headers=headers)


class FlakyWriter:
    """A real writer whose appends can be made to fail or to take a while."""

    def __init__(self, writer: AuditWriter, control: Control) -> None:
        self.writer = writer
        self.control = control
        self.batches: list[int] = []
        self.closed = False

    def append_many(self, events: Iterable[Mapping[str, Any]]) -> list[AppendResult]:
        events = list(events)
        self.control.started.set()
        if self.control.delay:
            self.control.release.wait(self.control.delay)
        if self.control.fail:
            raise AuditWriteError("fsync failed: [Errno 5] Input/output error")
        self.batches.append(len(events))
        return self.writer.append_many(events)

    def apply_retention(self) -> list[Path]:
        return self.writer.apply_retention()

    def close(self) -> None:
        self.closed = True
        self.writer.close()


@dataclass
class Control:
    fail: bool = False
    delay: float = 0.0
    started: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


@pytest.fixture
def control() -> Control:
    return Control()


@pytest.fixture
async def sidecar(log_dir: Path, control: Control) -> AsyncIterator[Sidecar]:
    auth = FakeAuthorizer()
    auth.add("auditor", AUDITOR)
    auth.add("bot-a", BOT_A)
    auth.add("operator", OPERATOR)
    auth.add("operator-audit", OPERATOR, (OPERATOR_AUDIENCE,))
    auth.add("bot-a-audit", BOT_A, (OPERATOR_AUDIENCE,))
    auth.add("admin-audit", "kubernetes-admin", (OPERATOR_AUDIENCE,))
    auth.grants.add((AUDITOR, None))
    opened: list[FlakyWriter] = []

    def open_log(hooks: AuditHooks) -> FlakyWriter:
        writer = FlakyWriter(open_writer(log_dir, fsync=False, hooks=hooks), control)
        opened.append(writer)
        return writer

    server = AuditServer.create(log_dir, auth, open_log=open_log, operator_users=[OPERATOR])
    await server.start()
    ingest = test_utils.TestClient(test_utils.TestServer(server.ingest_app()))
    api = test_utils.TestClient(test_utils.TestServer(server.api_app()))
    await ingest.start_server()
    await api.start_server()
    yield Sidecar(server, auth, ingest, api, log_dir, opened)
    control.release.set()
    await ingest.close()
    await api.close()
    await server.close()


def op_event(key: str, **overrides: Any) -> dict[str, Any]:
    return build_event(dedup_key=key, **overrides)


def lines(log_dir: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for log_file in list_log_files(log_dir)
        for line in log_file.path.read_text().splitlines()
    ]


# -- operator ingest ----------------------------------------------------------------------------


async def test_ingest_answers_with_seq_and_hash_of_the_written_line(sidecar: Sidecar) -> None:
    response = await sidecar.post(op_event("k1"), op_event("k2", event_type="stop"))
    assert response.status == 200
    stored = (await response.json())["stored"]
    written = lines(sidecar.log_dir)
    assert [s["seq"] for s in stored] == [1, 2]
    assert [s["hash"] for s in stored] == [r["hash"] for r in written]
    assert [s["duplicate"] for s in stored] == [False, False]
    assert [r["dedup_key"] for r in written] == ["k1", "k2"]


async def test_the_same_dedup_key_twice_is_one_line(sidecar: Sidecar) -> None:
    first = await (await sidecar.post(op_event("restart/stable/1"))).json()
    again = await (await sidecar.post(op_event("restart/stable/1"))).json()
    assert again["stored"] == [{**first["stored"][0], "duplicate": True}]
    assert len(lines(sidecar.log_dir)) == 1
    # Within one request too: the repeat points at the first.
    both = await (await sidecar.post(op_event("x"), op_event("x"))).json()
    assert both["stored"][1] == {**both["stored"][0], "duplicate": True}
    assert len(lines(sidecar.log_dir)) == 2


async def test_concurrent_requests_are_written_in_shared_batches(
    sidecar: Sidecar, control: Control
) -> None:
    control.delay = 0.2  # the first batch holds the writer while the others queue up
    responses = await asyncio.gather(*(sidecar.post(op_event(f"c{i}")) for i in range(30)))
    assert [r.status for r in responses] == [200] * 30
    seqs = sorted([(await r.json())["stored"][0]["seq"] for r in responses])
    assert seqs == list(range(1, 31))
    assert len(sidecar.opened[0].batches) < 30
    assert sum(sidecar.opened[0].batches) == 30
    assert verify_log(sidecar.log_dir).ok


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"severity": "loud"}, "severity"),
        ({"action": None}, "action"),
        ({"event_type": "Not A Name"}, "event_type"),
        ({"details": ["a"]}, "details"),
        ({"seq": 5}, "seq"),
        ({"colour": "red"}, "colour"),
        ({"timestamp": "yesterday"}, "timestamp"),
        ({"dedup_key": None}, "dedup_key"),
        ({"dedup_key": ""}, "dedup_key"),
    ],
)
async def test_invalid_events_are_refused_with_the_field_named(
    sidecar: Sidecar, change: dict[str, Any], named: str
) -> None:
    response = await sidecar.post(op_event("good"), {**op_event("bad"), **change})
    assert response.status == 400
    error = (await response.json())["error"]
    assert error.startswith("events[1]")
    assert named in error
    assert lines(sidecar.log_dir) == []


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[1, 2]", b'{"events": {}}', b'{"events": [1]}', b"{}", b"[" * 100_000],
)
async def test_malformed_bodies_are_refused(sidecar: Sidecar, body: bytes) -> None:
    response = await sidecar.ingest.post("/v1/events", data=body)
    assert response.status == 400
    assert "error" in await response.json()


async def test_bodies_over_the_limits_are_refused(sidecar: Sidecar) -> None:
    huge = op_event("huge", details={"blob": "x" * (audit_server.MAX_BODY_BYTES + 10)})
    response = await sidecar.post(huge)
    assert response.status == 413
    assert "limit" in (await response.json())["error"]
    many = [op_event(f"m{i}") for i in range(audit_server.MAX_EVENTS_PER_REQUEST + 1)]
    response = await sidecar.post(*many)
    assert response.status == 413
    assert "1001 events" in (await response.json())["error"]
    assert lines(sidecar.log_dir) == []


async def test_an_empty_batch_is_fine(sidecar: Sidecar) -> None:
    response = await sidecar.post()
    assert response.status == 200
    assert await response.json() == {"stored": []}


async def test_a_failed_write_is_503_counted_and_the_writer_reopened(
    sidecar: Sidecar, control: Control
) -> None:
    control.fail = True
    response = await sidecar.post(op_event("k1"))
    assert response.status == 503
    assert response.headers["Retry-After"] == "1"
    assert "Input/output error" in (await response.json())["error"]
    assert (await sidecar.api.get("/healthz")).status == 503
    metrics = await (await sidecar.api.get("/metrics")).text()
    assert "tradingbot_operator_audit_write_errors_total 1.0" in metrics
    assert sidecar.opened[0].closed

    control.fail = False
    response = await sidecar.post(op_event("k1"))
    assert response.status == 200
    assert len(sidecar.opened) == 2  # reopened (recovery ran) before the retry
    assert (await sidecar.api.get("/healthz")).status == 200
    assert [r["dedup_key"] for r in lines(sidecar.log_dir)] == ["k1"]


async def test_one_bad_event_does_not_fail_the_requests_batched_with_it(log_dir: Path) -> None:
    # The HTTP layer validates first; the writer's own checks (here: the encoded line size)
    # can still refuse a request, and only that request may fail.
    writer = SerialWriter(lambda: open_writer(log_dir, fsync=False))
    await writer.start()
    try:
        big = op_event("big", details={"blob": "x" * (1024 * 1024)})
        outcomes = await asyncio.gather(
            writer.append([op_event("a")]),
            writer.append([big]),
            writer.append([op_event("b")]),
            return_exceptions=True,
        )
    finally:
        await writer.close()
    assert isinstance(outcomes[1], ValueError)
    assert "limit" in str(outcomes[1])
    assert [r["dedup_key"] for r in lines(log_dir)] == ["a", "b"]


async def test_metrics_count_written_events(sidecar: Sidecar) -> None:
    await sidecar.post(op_event("k1"), op_event("k2"), op_event("k3", severity="critical"))
    await sidecar.post(op_event("k1"))  # a duplicate is not a new event
    response = await sidecar.api.get("/metrics")
    assert response.status == 200
    text = await response.text()
    assert (
        'tradingbot_operator_audit_events_total{event_type="restart",severity="info"} 2.0' in text
    )
    assert (
        'tradingbot_operator_audit_events_total{event_type="restart",severity="critical"} 1.0'
        in text
    )
    assert "tradingbot_operator_audit_write_errors_total 0.0" in text


async def test_unauthenticated_writes_exist_only_on_the_ingest_listener(sidecar: Sidecar) -> None:
    response = await sidecar.api.post("/v1/events", json={"events": [op_event("k")]})
    assert response.status == 401
    assert (await sidecar.ingest.get("/v1/events")).status == 405
    assert (await sidecar.ingest.get("/v1/verify")).status == 404
    assert (await sidecar.ingest.get("/healthz")).status == 200
    assert lines(sidecar.log_dir) == []


async def post_operator(sidecar: Sidecar, token: str, *events: dict[str, Any]) -> Any:
    headers = {"Authorization": f"Bearer {token}"}
    return await sidecar.api.post("/v1/events", json={"events": list(events)}, headers=headers)


async def test_the_operator_writes_on_the_main_listener_with_a_token_for_the_sidecar(
    sidecar: Sidecar,
) -> None:
    response = await post_operator(sidecar, "operator-audit", op_event("k1"))
    assert response.status == 200
    assert (await response.json())["stored"][0]["seq"] == 1
    # The same event again (a new leader resending its predecessor's outbox): one line.
    again = await post_operator(sidecar, "operator-audit", op_event("k1"))
    assert (await again.json())["stored"][0]["duplicate"] is True
    assert [r["dedup_key"] for r in lines(sidecar.log_dir)] == ["k1"]


@pytest.mark.parametrize(
    ("token", "status", "said"),
    [
        # The operator's API-server token: a leaked copy must not be what the sidecar takes.
        ("operator", 401, "audience tradingbot-audit"),
        ("bot-a-audit", 403, "may not write operator events"),
        ("admin-audit", 403, OPERATOR),
        ("forged", 401, "invalid or expired"),
    ],
)
async def test_operator_events_need_the_operator_and_the_sidecar_audience(
    sidecar: Sidecar, token: str, status: int, said: str
) -> None:
    response = await post_operator(sidecar, token, op_event("k1"))
    assert response.status == status
    assert said in (await response.json())["error"]
    assert lines(sidecar.log_dir) == []


async def test_operator_events_on_the_main_listener_keep_the_ingest_checks(
    sidecar: Sidecar,
) -> None:
    response = await post_operator(sidecar, "operator-audit", {**op_event("k"), "dedup_key": ""})
    assert response.status == 400
    assert "dedup_key" in (await response.json())["error"]


async def test_without_operator_users_no_one_writes_operator_events(log_dir: Path) -> None:
    auth = FakeAuthorizer()
    auth.add("operator-audit", OPERATOR, (OPERATOR_AUDIENCE,))
    server = AuditServer.create(log_dir, auth)
    await server.start()
    api = test_utils.TestClient(test_utils.TestServer(server.api_app()))
    await api.start_server()
    try:
        response = await api.post(
            "/v1/events",
            json={"events": [op_event("k")]},
            headers={"Authorization": "Bearer operator-audit"},
        )
        assert response.status == 403
        assert "none configured (--operator-user)" in (await response.json())["error"]
    finally:
        await api.close()
        await server.close()


# -- bot ingest -------------------------------------------------------------------------------


def bot_event(**overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_type": "trade",
        "action": "order_filled",
        "target": "bot-a",
        "namespace": "trading",
        "details": {"symbol": "BTC/USDT", "side": "buy", "qty": 0.1},
        "dedup_key": "fill-1",
    }
    event.update(overrides)
    return event


async def post_bot(sidecar: Sidecar, *events: dict[str, Any], token: str | None = "bot-a") -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return await sidecar.api.post("/v1/bot-events", json={"events": list(events)}, headers=headers)


async def test_a_bot_reports_about_itself_with_source_and_user_set_by_the_server(
    sidecar: Sidecar,
) -> None:
    spoofed = bot_event(source="operator", user_id="alice")
    response = await post_bot(
        sidecar, spoofed, bot_event(target=None, namespace=None, dedup_key=None)
    )
    assert response.status == 200
    assert [s["duplicate"] for s in (await response.json())["stored"]] == [False, False]
    records = lines(sidecar.log_dir)
    assert {r["source"] for r in records} == {"bot"}
    assert {r["user_id"] for r in records} == {BOT_A}
    assert {(r["namespace"], r["target"]) for r in records} == {("trading", "bot-a")}
    assert records[0]["dedup_key"] == "bot/trading/bot-a/fill-1"

    again = await post_bot(sidecar, bot_event())
    assert (await again.json())["stored"][0]["duplicate"] is True


@pytest.mark.parametrize(
    "change", [{"target": "bot-b"}, {"namespace": "other"}], ids=["other bot", "other namespace"]
)
async def test_a_bot_may_not_report_about_another(sidecar: Sidecar, change: dict[str, Any]) -> None:
    response = await post_bot(sidecar, bot_event(dedup_key="ok"), bot_event(**change))
    assert response.status == 403
    error = (await response.json())["error"]
    assert "events[1]" in error and BOT_A in error
    assert lines(sidecar.log_dir) == []


async def test_bots_report_only_trades_positions_and_errors(sidecar: Sidecar) -> None:
    for allowed in ("trade", "position_change", "error"):
        response = await post_bot(sidecar, bot_event(event_type=allowed, dedup_key=allowed))
        assert response.status == 200, allowed
    response = await post_bot(sidecar, bot_event(event_type="restart"))
    assert response.status == 400
    assert "event_type" in (await response.json())["error"]


async def test_bot_events_need_a_bot_service_account(sidecar: Sidecar) -> None:
    assert (await post_bot(sidecar, bot_event(), token=None)).status == 401
    assert (await post_bot(sidecar, bot_event(), token="forged")).status == 401
    response = await post_bot(sidecar, bot_event(), token="auditor")
    assert response.status == 403
    assert "not a bot" in (await response.json())["error"]


async def test_a_bot_cannot_pre_empt_an_operator_dedup_key(sidecar: Sidecar) -> None:
    await post_bot(sidecar, bot_event(dedup_key="restart/trading/bot-a/7"))
    response = await sidecar.post(op_event("restart/trading/bot-a/7"))
    assert (await response.json())["stored"][0]["duplicate"] is False
    assert len(lines(sidecar.log_dir)) == 2


# -- read API ---------------------------------------------------------------------------------


@pytest.fixture
async def filled(sidecar: Sidecar) -> Sidecar:
    events = [
        op_event(
            "1",
            event_type="config_change",
            source="kubectl",
            user_id="bob",
            target="meme",
            timestamp="2025-01-01T10:00:00Z",
        ),
        op_event("2", event_type="restart", target="meme", timestamp="2025-01-01T11:00:00Z"),
        op_event(
            "3",
            event_type="halt",
            severity="critical",
            source="plugin",
            user_id="carol",
            target="stable",
            namespace="prod",
            timestamp="2025-01-01T12:00:00Z",
        ),
        op_event(
            "4",
            event_type="trade",
            source="bot",
            target="stable",
            namespace="prod",
            timestamp="2025-01-01T13:00:00Z",
        ),
        op_event("5", event_type="restart", target="stable", timestamp="2025-01-01T14:00:00Z"),
    ]
    assert (await sidecar.post(*events)).status == 200
    return sidecar


async def seqs(sidecar: Sidecar, **params: Any) -> list[int]:
    response = await sidecar.get("/v1/events", **params)
    assert response.status == 200, await response.text()
    return [record["seq"] for record in (await response.json())["events"]]


async def test_events_newest_first_and_filtered(filled: Sidecar) -> None:
    assert await seqs(filled) == [5, 4, 3, 2, 1]
    assert await seqs(filled, type="restart") == [5, 2]
    assert await seqs(filled, severity="critical") == [3]
    assert await seqs(filled, source="kubectl") == [1]
    assert await seqs(filled, bot="meme") == [2, 1]
    assert await seqs(filled, user="carol") == [3]
    assert await seqs(filled, namespace="prod") == [4, 3]
    assert await seqs(filled, since="2025-01-01T11:00:00Z", until="2025-01-01T13:00:00Z") == [3, 2]
    assert await seqs(filled, type="restart", bot="stable") == [5]
    assert await seqs(filled, type="") == [5, 4, 3, 2, 1]  # empty means absent


async def test_repeated_parameters_match_any_of_their_values(filled: Sidecar) -> None:
    response = await filled.api.get(
        "/v1/events?type=halt&type=config_change", headers={"Authorization": "Bearer auditor"}
    )
    assert [r["seq"] for r in (await response.json())["events"]] == [3, 1]


async def test_limit_and_truncation(filled: Sidecar) -> None:
    response = await filled.get("/v1/events", limit=2)
    body = await response.json()
    assert [r["seq"] for r in body["events"]] == [5, 4]
    assert body["truncated"] is True
    body = await (await filled.get("/v1/events", limit=0)).json()
    assert len(body["events"]) == 5
    assert body["truncated"] is False
    record = body["events"][0]
    assert set(record) >= {"seq", "hash", "prev_hash", "timestamp", "event_type", "user_id"}


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"kind": "halt"}, "kind"),
        ({"severity": "loud"}, "severity"),
        ({"limit": "many"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"limit": "10001"}, "limit"),
        ({"since": "last tuesday"}, "since"),
    ],
)
async def test_bad_query_parameters_are_refused(
    filled: Sidecar, params: dict[str, str], named: str
) -> None:
    response = await filled.get("/v1/events", **params)
    assert response.status == 400
    assert named in (await response.json())["error"]


async def test_summary_counts_in_the_api_shape(filled: Sidecar) -> None:
    response = await filled.get("/v1/summary")
    assert response.status == 200
    body = await response.json()
    assert body["total"] == 5
    assert body["by_type"] == {"restart": 2, "config_change": 1, "halt": 1, "trade": 1}
    assert body["by_severity"] == {"info": 4, "critical": 1}
    assert body["by_source"] == {"operator": 2, "bot": 1, "kubectl": 1, "plugin": 1}
    assert body["by_target"] == {"meme": 2, "stable": 3}
    narrowed = await (await filled.get("/v1/summary", namespace="prod")).json()
    assert narrowed["total"] == 2
    assert (await filled.get("/v1/summary", limit=1)).status == 400


async def test_verify_reports_ok_then_the_edited_line(filled: Sidecar) -> None:
    body = await (await filled.get("/v1/verify")).json()
    assert body["ok"] is True
    assert body["error"] is None
    assert body["summary"].startswith("ok: 5 events")
    path = list_log_files(filled.log_dir)[0].path
    path.write_bytes(path.read_bytes().replace(b'"carol"', b'"mallory"'))
    body = await (await filled.get("/v1/verify")).json()
    assert body["ok"] is False
    assert body["error"]["seq"] == 3
    assert "hash mismatch" in body["error"]["reason"]


@pytest.mark.parametrize("path", ["/v1/events", "/v1/summary", "/v1/verify"])
async def test_reads_need_a_valid_token(filled: Sidecar, path: str) -> None:
    response = await filled.get(path, token=None)
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "token" in (await response.json())["error"]
    assert (await filled.get(path, token="forged")).status == 401
    bad_scheme = await filled.api.get(path, headers={"Authorization": "Basic auditor"})
    assert bad_scheme.status == 401


@pytest.mark.parametrize("path", ["/v1/events", "/v1/summary", "/v1/verify"])
async def test_reads_need_get_on_tradingbots_audit(filled: Sidecar, path: str) -> None:
    response = await filled.get(path, token="operator")
    assert response.status == 403
    error = (await response.json())["error"]
    assert OPERATOR in error and "tradingbots/audit" in error
    assert filled.auth.checks[-1] == (OPERATOR, AUDIT_READ)


async def test_the_namespace_filter_is_the_namespace_checked(filled: Sidecar) -> None:
    filled.auth.add("dev", "dave")
    filled.auth.grants.add(("dave", "prod"))
    assert await seqs_as(filled, "dev", namespace="prod") == [4, 3]
    # Without a namespace the read is cluster-wide, and so is the check.
    assert (await filled.get("/v1/events", token="dev")).status == 403
    assert filled.auth.checks[-1][1].namespace is None
    # Every namespace asked for must be allowed, not just one of them.
    response = await filled.api.get(
        "/v1/events?namespace=prod&namespace=trading", headers={"Authorization": "Bearer dev"}
    )
    assert response.status == 403
    assert "in namespace trading" in (await response.json())["error"]
    # verify covers every namespace: cluster-wide only.
    assert (await filled.get("/v1/verify", token="dev")).status == 403


async def seqs_as(sidecar: Sidecar, token: str, **params: Any) -> list[int]:
    response = await sidecar.get("/v1/events", token=token, **params)
    assert response.status == 200, await response.text()
    return [record["seq"] for record in (await response.json())["events"]]


async def test_an_unreachable_api_server_is_503_not_401(filled: Sidecar) -> None:
    filled.auth.unavailable = True
    response = await filled.get("/v1/events")
    assert response.status == 503
    assert "Retry-After" in response.headers
    assert (await post_bot(filled, bot_event())).status == 503


async def test_healthz_needs_no_token(sidecar: Sidecar) -> None:
    response = await sidecar.api.get("/healthz")
    assert response.status == 200
    assert await response.json() == {"status": "ok"}


# -- the authorizers --------------------------------------------------------------------------


class CountingAuthorizer(FakeAuthorizer):
    def __init__(self) -> None:
        super().__init__()
        self.reviews = 0

    async def authenticate(self, token: str, audiences: Sequence[str] = ()) -> Identity | None:
        self.reviews += 1
        return await super().authenticate(token, audiences)


class Ticker:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_the_cache_remembers_answers_for_its_ttl() -> None:
    inner = CountingAuthorizer()
    inner.add("t", "alice")
    ticker = Ticker()
    cached = CachingAuthorizer(inner, ttl=10, clock=ticker)
    first = await cached.authenticate("t")
    assert first is not None and first.username == "alice"
    assert await cached.authenticate("t") == first
    assert await cached.authenticate("nope") is None
    assert await cached.authenticate("nope") is None  # invalid tokens are remembered too
    assert inner.reviews == 2
    assert not await cached.allowed(first, AUDIT_READ)
    inner.grants.add(("alice", None))
    assert not await cached.allowed(first, AUDIT_READ)  # the denial is still cached
    ticker.now += 10
    assert await cached.allowed(first, AUDIT_READ)
    await cached.authenticate("t")
    assert inner.reviews == 3


async def test_the_cache_is_bounded_and_holds_no_token() -> None:
    inner = CountingAuthorizer()
    cached = CachingAuthorizer(inner, max_entries=3)
    for i in range(10):
        inner.add(f"secret-token-{i}", f"u{i}")
        await cached.authenticate(f"secret-token-{i}")
    assert len(cached._identities) == 3
    assert "secret-token" not in repr(cached._identities)
    await cached.authenticate("secret-token-0")  # evicted, so asked again
    assert inner.reviews == 11


def test_review_bodies_and_answers() -> None:
    assert token_review_body("abc", ["api"]) == {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": "abc", "audiences": ["api"]},
    }
    identity = identity_from_token_review(
        {
            "status": {
                "authenticated": True,
                "user": {
                    "username": BOT_A,
                    "uid": "u-1",
                    "groups": ["system:serviceaccounts"],
                    "extra": {"authentication.kubernetes.io/pod-name": ["bot-a-1"]},
                },
            }
        }
    )
    assert identity == Identity(
        BOT_A,
        "u-1",
        ("system:serviceaccounts",),
        (("authentication.kubernetes.io/pod-name", ("bot-a-1",)),),
    )
    assert identity_from_token_review({"status": {"authenticated": False}}) is None
    for_sidecar = {"authenticated": True, "user": {"username": OPERATOR}}
    asked = ["tradingbot-audit"]
    assert identity_from_token_review({"status": for_sidecar}, asked) is None
    shared = {**for_sidecar, "audiences": asked}
    assert identity_from_token_review({"status": shared}, asked) == Identity(OPERATOR)
    other = {**for_sidecar, "audiences": ["https://kubernetes.default.svc"]}
    assert identity_from_token_review({"status": other}, asked) is None
    assert identity_from_token_review({"status": {"error": "expired"}}) is None
    check = AccessCheck("get", "trading.r7.dev", "tradingbots", "audit", "prod")
    assert access_review_body(identity, check)["spec"] == {
        "user": BOT_A,
        "uid": "u-1",
        "groups": ["system:serviceaccounts"],
        "extra": {"authentication.kubernetes.io/pod-name": ["bot-a-1"]},
        "resourceAttributes": {
            "verb": "get",
            "group": "trading.r7.dev",
            "resource": "tradingbots",
            "subresource": "audit",
            "namespace": "prod",
        },
    }
    cluster_wide = access_review_body(Identity("alice"), AUDIT_READ)["spec"]
    assert "namespace" not in cluster_wide["resourceAttributes"]


class FakeKube:
    """One scripted answer for every request, as the shared client gives it."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.body = body
        self.sent: list[tuple[str, Any]] = []

    async def request(self, method: str, path: str, *, body: Any = None, **_: Any) -> Any:
        self.sent.append((path, body))
        if self.status >= 400:
            raise KubeError(self.status, "refused", json.dumps(self.body))
        return self.body


async def test_kube_authorizer_posts_reviews() -> None:
    api = FakeKube(201, {"status": {"authenticated": True, "user": {"username": "alice"}}})
    kube = KubeAuthorizer(api)
    assert await kube.authenticate("tok") == Identity("alice")
    assert api.sent[0] == (KubeAuthorizer.TOKEN_REVIEWS, token_review_body("tok"))
    api.body = {"status": {"allowed": True}}
    assert await kube.allowed(Identity("alice"), AUDIT_READ)
    assert api.sent[1][0] == KubeAuthorizer.ACCESS_REVIEWS


async def test_kube_authorizer_missing_rbac_is_unavailable_and_never_echoes_the_token() -> None:
    kube = KubeAuthorizer(FakeKube(403, {"message": "forbidden"}))
    with pytest.raises(AuthUnavailableError, match="system:auth-delegator") as raised:
        await kube.authenticate("very-secret-token")
    assert "very-secret-token" not in str(raised.value)


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (KubeError(0, "ClientConnectorError", "connection refused"), "ClientConnectorError"),
        (KubeError(500, "Internal Server Error", "{}"), "HTTP 500"),
        (ValueError("Expecting value"), "not JSON"),
    ],
)
async def test_kube_authorizer_unreachable_or_odd_answers_are_unavailable(
    error: Exception, words: str
) -> None:
    class Failing:
        async def request(self, *args: Any, **kwargs: Any) -> Any:
            raise error

    with pytest.raises(AuthUnavailableError, match=words):
        await KubeAuthorizer(Failing()).allowed(Identity("alice"), AUDIT_READ)


def test_bot_service_accounts() -> None:
    assert bot_of(BOT_A) == ("trading", "bot-a")
    assert bot_of("system:serviceaccount:trading:default") is None
    assert bot_of("system:serviceaccount:trading:tradingbot-") is None
    assert bot_of("tradingbot-bot-a") is None
    assert bot_of("alice") is None


def test_listen_addresses() -> None:
    assert parse_listen("127.0.0.1:8900") == ("127.0.0.1", 8900)
    assert parse_listen("[::1]:8901") == ("::1", 8901)
    assert parse_listen(":8901") == ("0.0.0.0", 8901)
    for bad in ("8900", "host:http", "host:70000"):
        with pytest.raises(ValueError):
            parse_listen(bad)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1")


# -- the operator's client --------------------------------------------------------------------


async def test_the_client_splits_by_bytes_within_the_server_limit(sidecar: Sidecar) -> None:
    base = str(sidecar.ingest.make_url("/")).rstrip("/")
    blob = "x" * (audit_server.MAX_BODY_BYTES // 3)
    events = [op_event(f"b{i}", details={"blob": blob}) for i in range(4)]  # > 1 MiB together
    async with AuditClient(base + EVENTS_PATH) as client:
        stored = await client.send(events)
    assert [s["seq"] for s in stored] == [1, 2, 3, 4]
    assert sidecar.opened[0].batches == [2, 2]


async def test_client_sends_and_splits_large_lists(sidecar: Sidecar) -> None:
    base = str(sidecar.ingest.make_url("/")).rstrip("/")
    async with AuditClient(base + EVENTS_PATH) as client:
        stored = await client.send([op_event(f"k{i}") for i in range(1500)])
        assert [s["seq"] for s in stored] == list(range(1, 1501))
        again = await client.send([op_event("k7")])
        assert again == [{**stored[7], "duplicate": True}]
        assert await client.send([]) == []
    assert sidecar.opened[0].batches == [1000, 500, 1]


async def test_client_errors_say_whether_to_retry(sidecar: Sidecar, control: Control) -> None:
    base = str(sidecar.ingest.make_url("/")).rstrip("/")
    async with AuditClient(base + EVENTS_PATH) as client:
        with pytest.raises(AuditDeliveryError, match="severity") as refused:
            await client.send([op_event("k", severity="loud")])
        assert refused.value.status == 400 and not refused.value.retryable
        control.fail = True
        with pytest.raises(AuditDeliveryError) as failed:
            await client.send([op_event("k")])
        assert failed.value.status == 503 and failed.value.retryable
    async with AuditClient("http://127.0.0.1:9" + EVENTS_PATH, timeout=1) as client:
        with pytest.raises(AuditDeliveryError, match="unreachable") as down:
            await client.send([op_event("k")])
        assert down.value.status is None and down.value.retryable


# -- running and stopping ---------------------------------------------------------------------


async def test_stop_finishes_in_flight_writes_then_closes_the_writer(
    log_dir: Path, control: Control
) -> None:
    opened: list[FlakyWriter] = []

    def open_log(hooks: AuditHooks) -> FlakyWriter:
        opened.append(FlakyWriter(open_writer(log_dir, fsync=False, hooks=hooks), control))
        return opened[-1]

    server = AuditServer.create(log_dir, FakeAuthorizer(), open_log=open_log)
    running = await start_server(server, ingest_listen="127.0.0.1:0", listen="127.0.0.1:0")
    host, port = running.ingest_address
    control.delay = 5.0
    url = f"http://{host}:{port}/v1/events"
    async with aiohttp.ClientSession() as session:

        async def send() -> tuple[int, Any]:
            async with session.post(url, json={"events": [op_event("k")]}) as response:
                return response.status, await response.json()

        in_flight = asyncio.create_task(send())
        await asyncio.to_thread(control.started.wait, 5)
        stopping = asyncio.create_task(running.stop())
        await asyncio.sleep(0.2)
        assert not stopping.done()
        control.release.set()
        status, body = await in_flight
        assert status == 200
        assert body["stored"][0]["seq"] == 1
        await stopping
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.post(url, json={"events": []})
    assert opened[0].closed
    assert [r["dedup_key"] for r in query(log_dir, AuditFilter())] == ["k"]


async def test_an_empty_ingest_address_opens_only_the_main_listener(log_dir: Path) -> None:
    server = AuditServer.create(log_dir, FakeAuthorizer())
    running = await start_server(server, ingest_listen="", listen="127.0.0.1:0")
    try:
        assert running.ingest_address is None
        assert len(running.runners) == 1
        host, port = running.api_address
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://{host}:{port}/healthz") as response,
        ):
            assert response.status == 200
    finally:
        await running.stop()


def test_serve_command_line() -> None:
    args = build_parser().parse_args(
        [
            "--log-dir",
            "/var/audit",
            "serve",
            "--ingest-listen",
            "127.0.0.1:9900",
            "--listen",
            "0.0.0.0:9901",
            "--kubeconfig",
            "/etc/kube/config",
        ]
    )
    assert (args.command, args.ingest_listen, args.listen, args.kubeconfig) == (
        "serve",
        "127.0.0.1:9900",
        "0.0.0.0:9901",
        "/etc/kube/config",
    )
    defaults = build_parser().parse_args(["--log-dir", "/var/audit", "serve"])
    assert (defaults.ingest_listen, defaults.listen) == ("127.0.0.1:8900", "0.0.0.0:8901")
    assert defaults.operator_user == []


def test_every_serve_option_comes_from_the_command_line() -> None:
    """`ServeOptions.from_args` reads each field by name: a field without its flag fails."""
    line = "--log-dir /var/audit serve --head-configmap ns/head --head-interval 0.5"
    users = ["--operator-user", "system:serviceaccount:a:op", "--operator-user", "b"]
    args = build_parser().parse_args(
        [*line.split(), "--accept-head-mismatch", "--retention-days", "7", *users]
    )
    options = ServeOptions.from_args(args)
    assert options.operator_user == ("system:serviceaccount:a:op", "b")
    assert options.log_dir == Path("/var/audit") and options.head_configmap == "ns/head"
    assert (options.head_interval, options.accept_head_mismatch) == (0.5, True)
    assert options.retention_days == 7
    defaults = ServeOptions.from_args(build_parser().parse_args(["--log-dir", "/a", "serve"]))
    assert defaults == ServeOptions(log_dir=Path("/a"), listen="0.0.0.0:8901")
