"""The sidecar with a chain head store: published after batches, checked on start."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tradingbot_audit import AuditFilter, AuditWriter, open_writer, query
from tradingbot_audit.handlers import HttpError, parse_verify_params
from tradingbot_audit.head import ChainHead, HeadStoreError
from tradingbot_audit.ingest import head_after
from tradingbot_audit.serve import start_server
from tradingbot_audit.server import AuditServer, HeadSettings
from tradingbot_audit.writer import AppendResult

from .conftest import build_event
from .test_audit_server import FakeAuthorizer

Filler = Callable[..., None]
WriterFactory = Callable[..., AuditWriter]


@dataclass
class FakeStore:
    """The head ConfigMap in memory; writes can be made to fail or to wait."""

    head: ChainHead | None = None
    writes: list[ChainHead] = field(default_factory=list)
    fail_writes: int = 0
    read_error: BaseException | None = None
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    ref: str = "trading-system/tb-audit-head"

    def __post_init__(self) -> None:
        self.gate.set()

    async def read(self) -> ChainHead | None:
        if self.read_error is not None:
            raise self.read_error
        return self.head

    async def write(self, head: ChainHead) -> None:
        await asyncio.wait_for(self.gate.wait(), 10)
        if self.fail_writes:
            self.fail_writes -= 1
            raise HeadStoreError("the API server is down", 503)
        self.writes.append(head)
        self.head = head


def auditor() -> FakeAuthorizer:
    auth = FakeAuthorizer()
    auth.add("auditor", "alice")
    auth.add("bot", "system:serviceaccount:trading:tradingbot-bot-a")
    auth.grants.add(("alice", None))
    return auth


@dataclass
class Running:
    server: AuditServer
    ingest: str | None
    api: str
    session: aiohttp.ClientSession

    async def post(self, *events: dict[str, Any]) -> tuple[int, Any]:
        assert self.ingest is not None
        async with self.session.post(
            f"{self.ingest}/v1/events", json={"events": list(events)}
        ) as response:
            return response.status, await response.json()

    async def get(self, path: str, **params: str) -> tuple[int, Any]:
        headers = {"Authorization": "Bearer auditor"}
        async with self.session.get(f"{self.api}{path}", params=params, headers=headers) as got:
            return got.status, await got.json()

    async def metric(self, name: str) -> float:
        async with self.session.get(f"{self.api}/metrics") as response:
            text = await response.text()
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise AssertionError(f"{name} not exported")


Start = Callable[..., Any]


@pytest.fixture
async def start(log_dir: Path) -> AsyncIterator[Start]:
    stops: list[Any] = []
    session = aiohttp.ClientSession()

    async def _start(store: FakeStore, **settings: Any) -> Running:
        settings.setdefault("min_interval", 0.0)
        server = AuditServer.create(
            log_dir, auditor(), fsync=False, head=HeadSettings(store, **settings)
        )
        running = await start_server(server, ingest_listen="127.0.0.1:0", listen="127.0.0.1:0")
        stops.append(running)
        ingest = None
        if running.ingest_address is not None:
            ingest = "http://{}:{}".format(*running.ingest_address)
        return Running(server, ingest, "http://{}:{}".format(*running.api_address), session)

    yield _start
    for running in stops:
        await running.stop()
    await session.close()


def op(key: str, **overrides: Any) -> dict[str, Any]:
    return build_event(dedup_key=key, **overrides)


async def until(predicate: Callable[[], bool], what: str) -> None:
    for _ in range(400):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def head_of(log_dir: Path, writer_factory: WriterFactory, fill: Filler, count: int) -> ChainHead:
    writer = writer_factory(log_dir=log_dir, fsync=False)
    fill(writer, count)
    head = ChainHead(writer.last_seq, writer.last_hash)
    writer.close()
    return head


def cut_last_lines(log_dir: Path, count: int) -> None:
    (path,) = sorted(log_dir.glob("audit-*.jsonl"))
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-count]))


# -- publishing after batches -----------------------------------------------------------------


async def test_a_first_start_creates_the_head_and_appends_move_it(start: Start) -> None:
    store = FakeStore()
    sidecar = await start(store)
    await until(lambda: store.writes == [ChainHead(0, "0" * 64)], "the genesis head")
    status, body = await sidecar.post(op("a"), op("b"))
    assert status == 200
    newest = body["stored"][-1]
    await until(lambda: store.head is not None and store.head.seq == 2, "the head at seq 2")
    assert store.head is not None and store.head.hash == newest["hash"]
    assert store.head.file.startswith("audit-") and store.head.file.endswith(".jsonl")
    assert await sidecar.metric("tradingbot_audit_head_seq") == 2
    assert await sidecar.metric("tradingbot_audit_head_mismatch") == 0


async def test_one_request_per_event_is_not_one_head_write_per_event(start: Start) -> None:
    store = FakeStore()
    sidecar = await start(store, min_interval=0.05)
    await until(lambda: len(store.writes) == 1, "the first head")
    results = await asyncio.gather(*(sidecar.post(op(f"k{i}")) for i in range(300)))
    assert all(status == 200 for status, _body in results)
    await until(lambda: store.head is not None and store.head.seq == 300, "the newest head")
    assert len(store.writes) < 30, len(store.writes)
    assert [h.seq for h in store.writes] == sorted(h.seq for h in store.writes)


async def test_a_slow_or_failing_api_server_never_delays_an_acknowledgement(
    start: Start,
) -> None:
    store = FakeStore()
    sidecar = await start(store)
    await until(lambda: len(store.writes) == 1, "the first head")
    store.gate.clear()  # the next head write hangs
    store.fail_writes = 2
    assert (await sidecar.post(op("a")))[0] == 200
    for i in range(20):
        status, _ = await asyncio.wait_for(sidecar.post(op(f"k{i}")), 2)
        assert status == 200
    store.gate.set()
    await until(lambda: store.head is not None and store.head.seq == 21, "the head after errors")
    assert await sidecar.metric("tradingbot_audit_head_write_errors_total") == 2


async def test_duplicates_do_not_move_the_head() -> None:
    record = {"seq": 4, "hash": "a" * 64}
    results = [AppendResult({"seq": 3, "hash": "b" * 64}, duplicate=True), AppendResult(record)]
    assert head_after(results, Path("/x/audit-1.jsonl")) == ChainHead(4, "a" * 64, "audit-1.jsonl")
    assert head_after(results[:1], None) is None


# -- the check on start -----------------------------------------------------------------------


async def test_a_log_that_reaches_the_head_is_continued(
    start: Start, log_dir: Path, writer_factory: WriterFactory, fill: Filler
) -> None:
    head = head_of(log_dir, writer_factory, fill, 10)
    later = writer_factory(fsync=False)
    fill(later, 2)  # appended after the head's last update
    later.close()
    store = FakeStore(head=head)
    sidecar = await start(store)
    assert sidecar.ingest is not None and sidecar.server.refusal is None
    status, body = await sidecar.post(op("next"))
    assert (status, body["stored"][0]["seq"]) == (200, 13)


async def test_a_truncated_log_is_refused_with_the_reason_everywhere(
    start: Start, log_dir: Path, writer_factory: WriterFactory, fill: Filler
) -> None:
    head = head_of(log_dir, writer_factory, fill, 10)
    cut_last_lines(log_dir, 3)
    store = FakeStore(head=head)
    sidecar = await start(store)
    assert sidecar.ingest is None  # no ingest listener at all
    reason = sidecar.server.refusal
    assert reason is not None
    assert "the log ends at seq 7 but the chain head recorded outside the log volume" in reason
    assert "--accept-head-mismatch" in reason
    status, body = await sidecar.get("/healthz")
    assert (status, body["status"]) == (503, "refusing")
    assert await sidecar.metric("tradingbot_audit_head_mismatch") == 1
    # The read API stays up for the investigation, and verify agrees.
    status, body = await sidecar.get("/v1/verify", head=str(head))
    assert (status, body["ok"]) == (200, False)
    assert "the tail was truncated" in body["summary"]
    status, body = await sidecar.get("/v1/verify")
    assert (status, body["ok"]) == (200, True)
    # Bot reports go through the same store and are refused too.
    trade = {"event_type": "trade", "action": "order_filled", "dedup_key": "f1"}
    async with sidecar.session.post(
        f"{sidecar.api}/v1/bot-events",
        json={"events": [trade]},
        headers={"Authorization": "Bearer bot"},
    ) as response:
        assert response.status == 503
    await asyncio.sleep(0.05)
    assert store.writes == []  # the recorded head is left as evidence
    assert len(query(log_dir, AuditFilter(), limit=None)) == 7


async def test_a_rewritten_tail_is_refused(
    start: Start, log_dir: Path, writer_factory: WriterFactory, fill: Filler
) -> None:
    head = head_of(log_dir, writer_factory, fill, 10)
    cut_last_lines(log_dir, 3)
    forger = writer_factory(fsync=False)
    fill(forger, 5, target="forged")
    forger.close()
    sidecar = await start(FakeStore(head=head))
    assert sidecar.ingest is None
    assert sidecar.server.refusal is not None and "rewritten" in sidecar.server.refusal


async def test_the_override_continues_and_puts_the_acceptance_on_the_chain(
    start: Start, log_dir: Path, writer_factory: WriterFactory, fill: Filler
) -> None:
    head = head_of(log_dir, writer_factory, fill, 10)
    cut_last_lines(log_dir, 3)
    store = FakeStore(head=head)
    sidecar = await start(store, accept_mismatch=True)
    assert sidecar.ingest is not None and sidecar.server.refusal is None
    records = query(log_dir, AuditFilter(), limit=None, oldest_first=True)
    accepted = records[-1]
    assert (accepted["seq"], accepted["severity"], accepted["action"]) == (
        8,
        "critical",
        "chain_head_mismatch_accepted",
    )
    assert accepted["details"]["recorded_seq"] == 10
    assert accepted["details"]["log_seq"] == 7
    assert "the tail was truncated" in accepted["details"]["reason"]
    await until(lambda: store.head is not None and store.head.seq == 8, "the replaced head")
    assert store.head is not None and store.head.hash == accepted["hash"]
    assert await sidecar.metric("tradingbot_audit_head_mismatch") == 1


async def test_a_malformed_recorded_head_is_refused_too(start: Start) -> None:
    store = FakeStore(read_error=ValueError("configmap x/y holds no valid chain head: seq"))
    sidecar = await start(store)
    assert sidecar.ingest is None
    assert sidecar.server.refusal is not None and "no valid chain head" in sidecar.server.refusal


async def test_without_access_to_the_head_the_sidecar_does_not_start(
    log_dir: Path, start: Start
) -> None:
    store = FakeStore(read_error=HeadStoreError("the API server refused to get", 403))
    with pytest.raises(HeadStoreError, match="refused"):
        await start(store)
    # The directory lock was released: another attempt may open the log.
    open_writer(log_dir, fsync=False).close()


async def test_an_unreachable_api_server_is_retried_until_the_read_timeout(start: Start) -> None:
    store = FakeStore(read_error=HeadStoreError("unreachable"))
    with pytest.raises(HeadStoreError, match="unreachable"):
        await asyncio.wait_for(start(store, read_timeout=0.6), 5)


async def test_verify_takes_only_a_head() -> None:
    assert parse_verify_params({}) is None
    assert parse_verify_params({"head": [f"3:{'a' * 64}"]}) == ChainHead(3, "a" * 64)
    for bad in ({"head": ["3:zz"]}, {"other": ["1"]}, {"head": [f"1:{'a' * 64}"] * 2}):
        with pytest.raises(HttpError, match=r"head|unknown"):
            parse_verify_params(bad)


async def test_the_api_answers_400_to_a_bad_head(start: Start) -> None:
    sidecar = await start(FakeStore())
    status, body = await sidecar.get("/v1/verify", head="12")
    assert status == 400 and "SEQ:HASH" in body["error"]
    status, _body = await sidecar.get("/v1/verify", what="x")
    assert status == 400


async def test_serve_flags_reach_the_options() -> None:
    from tradingbot_audit.cli import build_parser

    args = build_parser().parse_args(
        [
            "--log-dir",
            "/var/audit",
            "serve",
            "--head-configmap",
            "ns/tb-audit-head",
            "--head-interval",
            "0.5",
            "--accept-head-mismatch",
        ]
    )
    assert (args.head_configmap, args.head_interval, args.accept_head_mismatch) == (
        "ns/tb-audit-head",
        0.5,
        True,
    )
    defaults = build_parser().parse_args(["--log-dir", "/var/audit", "serve"])
    assert (defaults.head_configmap, defaults.accept_head_mismatch) == (None, False)
