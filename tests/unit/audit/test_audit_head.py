"""The chain head kept outside the log volume: parsing, comparing, publishing, verifying."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tradingbot_api.kubeclient import KubeError
from tradingbot_audit import AuditWriter, verify_log
from tradingbot_audit.chain import GENESIS, ChainState
from tradingbot_audit.cli import main
from tradingbot_audit.files import list_log_files, read_anchor
from tradingbot_audit.head import (
    WHERE,
    ChainHead,
    ConfigMapHeadStore,
    HeadPublisher,
    HeadStatus,
    HeadStoreError,
    check_log,
    compare_head,
    hash_at,
    head_data,
    head_from_data,
    log_tail,
    parse_configmap_ref,
    parse_head,
)

Filler = Callable[..., None]
WriterFactory = Callable[..., AuditWriter]

H1 = "1" * 64
H2 = "2" * 64
NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


# -- parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"12:{H1}", ChainHead(12, H1)),
        (f" 0:{'0' * 64} ", ChainHead(0, "0" * 64)),
        (f"7:{'AB' * 32}", ChainHead(7, "ab" * 32)),
    ],
)
def test_parse_head(text: str, expected: ChainHead) -> None:
    assert parse_head(text) == expected
    assert str(expected) == f"{expected.seq}:{expected.hash}"


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("12", "must be SEQ:HASH"),
        (f"x:{H1}", "is not a number"),
        (f"-1:{H1}", ">= 0"),
        ("12:abc", "64 hexadecimal digits"),
        (f"12:{'g' * 64}", "64 hexadecimal digits"),
    ],
)
def test_parse_head_refuses(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_head(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("trading-system/tb-audit-head", ("trading-system", "tb-audit-head")),
        ("a/b.c", ("a", "b.c")),
    ],
)
def test_parse_configmap_ref(text: str, expected: tuple[str, str]) -> None:
    assert parse_configmap_ref(text) == expected


@pytest.mark.parametrize(
    "text", ["no-slash", "/name", "ns/", "Upper/name", "ns/Name", "ns/a/b", "ns.dot/name"]
)
def test_parse_configmap_ref_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="NAMESPACE/NAME"):
        parse_configmap_ref(text)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (None, None),
        ({}, None),
        ({"other": "x"}, None),
        ({"seq": "5", "hash": H1}, ChainHead(5, H1)),
        (
            {"seq": "5", "hash": H1, "file": "audit-x.jsonl", "updatedAt": "t"},
            ChainHead(5, H1, "audit-x.jsonl", "t"),
        ),
    ],
)
def test_head_from_configmap_data(data: dict[str, str] | None, expected: ChainHead | None) -> None:
    assert head_from_data(data) == expected


@pytest.mark.parametrize("data", [{"seq": "5"}, {"hash": H1}, {"seq": "five", "hash": H1}])
def test_malformed_configmap_data_is_an_error_not_an_absent_head(data: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        head_from_data(data)


def test_head_data_round_trips() -> None:
    head = ChainHead(9, H1, "audit-20250101-000000000001.jsonl")
    data = head_data(head, NOW)
    assert data == {
        "seq": "9",
        "hash": H1,
        "file": "audit-20250101-000000000001.jsonl",
        "updatedAt": "2025-01-01T12:00:00.000+00:00",
    }
    assert head_from_data(data) == ChainHead(9, H1, head.file, data["updatedAt"])


# -- comparing --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "last", "found", "status", "message"),
    [
        (ChainHead(10, H1), ChainState(10, H1), H1, HeadStatus.MATCH, "the log ends at"),
        (ChainHead(10, H1), ChainState(12, H2), H1, HeadStatus.AHEAD, "2 line(s) after"),
        (
            ChainHead(10, H1),
            ChainState(7, H2),
            None,
            HeadStatus.TRUNCATED,
            f"the log ends at seq 7 but {WHERE} is at seq 10: the tail was truncated "
            "(3 line(s) missing)",
        ),
        (
            ChainHead(10, H1),
            ChainState(0, GENESIS.hash),
            None,
            HeadStatus.TRUNCATED,
            f"the log ends at seq 0 but {WHERE} is at seq 10",
        ),
        (
            ChainHead(10, H1),
            ChainState(10, H2),
            H2,
            HeadStatus.DIVERGED,
            "the line at seq 10 hashes to 222222222222… but",
        ),
        (ChainHead(10, H1), ChainState(12, H2), None, HeadStatus.UNCHECKABLE, "no longer holds"),
    ],
)
def test_compare_head(
    head: ChainHead, last: ChainState, found: str | None, status: HeadStatus, message: str
) -> None:
    check = compare_head(head, last, found)
    assert check.status is status
    assert check.ok is (status in (HeadStatus.MATCH, HeadStatus.AHEAD))
    assert message in check.message()


# -- the log's side ---------------------------------------------------------------------------


def test_tail_and_hash_at_over_rotated_files(
    log_dir: Path, writer_factory: WriterFactory, fill: Filler
) -> None:
    writer = writer_factory(max_file_bytes=4096)
    fill(writer, 60)
    files = list_log_files(log_dir)
    assert len(files) > 3
    last, file = log_tail(log_dir)
    assert (last.seq, last.hash, file) == (60, writer.last_hash, files[-1].name)
    records = {
        json.loads(line)["seq"]: json.loads(line)["hash"]
        for f in files
        for line in f.path.read_text().splitlines()
    }
    for seq in (1, files[1].first_seq - 1, files[1].first_seq, 59, 60):
        assert hash_at(log_dir, seq) == records[seq]
    assert hash_at(log_dir, 0) == GENESIS.hash
    assert hash_at(log_dir, 61) is None


def test_an_empty_log_ends_at_genesis(log_dir: Path) -> None:
    log_dir.mkdir()
    assert log_tail(log_dir) == (GENESIS, "")
    assert check_log(log_dir, ChainHead(3, H1)).status is HeadStatus.TRUNCATED


def test_after_retention_the_head_may_sit_on_the_anchor(
    log_dir: Path, writer_factory: WriterFactory, fill: Filler, clock: Any
) -> None:
    writer = writer_factory(retention_days=1)
    fill(writer, 10)
    old = ChainHead(5, hash_at(log_dir, 5) or "")
    clock.advance(days=3)
    fill(writer, 5)  # rotates; retention removes seq 1..10 and anchors at 10
    anchor = read_anchor(log_dir)
    assert anchor is not None and anchor.seq == 10
    assert check_log(log_dir, ChainHead(10, anchor.hash)).status is HeadStatus.AHEAD
    # A head older than anything kept cannot be checked, which is not the same as a pass.
    assert check_log(log_dir, old).status is HeadStatus.UNCHECKABLE


# -- verify against a head --------------------------------------------------------------------


@pytest.fixture
def ten(log_dir: Path, writer_factory: WriterFactory, fill: Filler) -> ChainHead:
    """A log of ten lines in one file; returns its head."""
    writer = writer_factory()
    fill(writer, 10)
    head = ChainHead(writer.last_seq, writer.last_hash)
    writer.close()
    return head


def only_file(log_dir: Path) -> Path:
    (log_file,) = list_log_files(log_dir)
    return log_file.path


def cut_last_lines(path: Path, count: int) -> None:
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-count]))


def test_verify_passes_at_and_after_the_head(
    log_dir: Path, ten: ChainHead, writer_factory: WriterFactory, fill: Filler
) -> None:
    result = verify_log(log_dir, head=ten)
    assert result.ok and result.head == ten
    assert result.summary() == (
        "ok: 10 events in 1 files, last seq 10; the chain head recorded outside the log "
        "volume (seq 10) matches"
    )
    fill(writer_factory(), 3)  # written after the head's last update: fine
    assert verify_log(log_dir, head=ten).ok
    earlier = ChainHead(4, hash_at(log_dir, 4) or "")
    assert verify_log(log_dir, head=earlier, jobs=2).ok


def test_verify_names_a_truncated_tail(log_dir: Path, ten: ChainHead) -> None:
    path = only_file(log_dir)
    cut_last_lines(path, 3)
    assert verify_log(log_dir).ok  # the chain alone cannot tell
    result = verify_log(log_dir, head=ten)
    assert not result.ok and result.error is not None
    assert (result.error.file, result.error.line, result.error.seq) == (path.name, 7, 7)
    assert result.error.reason == (
        "the log ends at seq 7 but the chain head recorded outside the log volume is at seq "
        "10: the tail was truncated (3 line(s) missing)"
    )
    assert result.summary().startswith(f"FAILED: {path.name}:7 (seq 7): the log ends at seq 7")


def test_verify_names_a_rewritten_tail_even_when_it_chains(
    log_dir: Path, ten: ChainHead, writer_factory: WriterFactory, fill: Filler
) -> None:
    cut_last_lines(only_file(log_dir), 4)
    fill(writer_factory(), 6, target="forged")  # a valid chain, longer than the head
    assert verify_log(log_dir).ok
    result = verify_log(log_dir, head=ten)
    assert result.error is not None
    assert result.error.reason.startswith("the line at seq 10 hashes to")
    assert "rewritten" in result.error.reason


def test_verify_of_a_log_with_no_lines_against_a_head(log_dir: Path) -> None:
    log_dir.mkdir()
    result = verify_log(log_dir, head=ChainHead(4, H1))
    assert result.summary() == (
        "FAILED: seq 0: the log ends at seq 0 but the chain head recorded outside the log "
        "volume is at seq 4: the tail was truncated (4 line(s) missing)"
    )


def test_a_broken_chain_is_reported_before_the_head(log_dir: Path, ten: ChainHead) -> None:
    path = only_file(log_dir)
    path.write_text(path.read_text().replace('"i":3', '"i":33'))
    result = verify_log(log_dir, head=ChainHead(20, H1))
    assert result.error is not None and "hash mismatch" in result.error.reason


# -- the command line -------------------------------------------------------------------------


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_cli_verify_with_head(log_dir: Path, ten: ChainHead) -> None:
    code, out, _err = run("--log-dir", str(log_dir), "verify", "--head", str(ten))
    assert (code, out.split(";")[0]) == (0, "ok: 10 events in 1 files, last seq 10")
    cut_last_lines(only_file(log_dir), 2)
    assert run("--log-dir", str(log_dir), "verify")[0] == 0
    code, out, _err = run("--log-dir", str(log_dir), "verify", "--head", str(ten))
    assert code == 1
    assert "the log ends at seq 8 but the chain head recorded outside the log volume" in out


def test_cli_verify_head_arguments(log_dir: Path, ten: ChainHead) -> None:
    code, _out, err = run("--log-dir", str(log_dir), "verify", "--head", "10:nothex")
    assert code == 1 and "hexadecimal" in err
    code, _out, err = run("--log-dir", str(log_dir), "verify", "--kubeconfig", "/x")
    assert code == 1 and "--kubeconfig goes with --head-configmap" in err
    code, _out, err = run("--log-dir", str(log_dir), "verify", "--head-configmap", "bad")
    assert code == 1 and "NAMESPACE/NAME" in err
    with pytest.raises(SystemExit) as usage:
        run("--log-dir", str(log_dir), "verify", "--head", str(ten), "--head-configmap", "a/b")
    assert usage.value.code == 2


# -- the ConfigMap store ----------------------------------------------------------------------


class FakeApi:
    """Answers the store's requests from a script, as the shared client would (a status of
    400 or more is a KubeError); records what was asked."""

    def __init__(self, *answers: tuple[int, Any] | BaseException) -> None:
        self.answers = list(answers)
        self.sent: list[tuple[str, str, Any, str]] = []

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float = 5.0,
    ) -> Any:
        self.sent.append((method, path, body, content_type))
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        status, payload = answer
        if status >= 400:
            raise KubeError(status, "refused", json.dumps(payload))
        return payload


PATH = "/api/v1/namespaces/trading-system/configmaps/tb-audit-head"


def store(api: FakeApi) -> ConfigMapHeadStore:
    return ConfigMapHeadStore(api, "trading-system", "tb-audit-head", clock=lambda: NOW)


async def test_store_reads_the_head_or_none() -> None:
    api = FakeApi((404, {"kind": "Status"}), (200, {"data": {"seq": "3", "hash": H1}}))
    assert await store(api).read() is None
    assert await store(api).read() == ChainHead(3, H1)
    assert [(m, p) for m, p, _b, _c in api.sent] == [("GET", PATH), ("GET", PATH)]


async def test_store_patches_and_creates_when_absent() -> None:
    head = ChainHead(3, H1, "f.jsonl")
    api = FakeApi((200, {}), (404, {}), (201, {}), (404, {}), (409, {}), (200, {}))
    await store(api).write(head)
    method, path, body, content_type = api.sent[0]
    assert (method, path, content_type) == ("PATCH", PATH, "application/merge-patch+json")
    assert body == {"data": head_data(head, NOW)}
    await store(api).write(head)
    method, path, body, _ = api.sent[2]
    assert (method, path) == ("POST", "/api/v1/namespaces/trading-system/configmaps")
    assert body["metadata"]["name"] == "tb-audit-head" and body["data"]["seq"] == "3"
    await store(api).write(head)  # created by someone else in between: patched after all
    assert [m for m, _p, _b, _c in api.sent[3:]] == ["PATCH", "POST", "PATCH"]


@pytest.mark.parametrize(
    ("answer", "retryable", "words"),
    [
        ((403, {"message": "forbidden: no"}), False, "needs get, update and patch"),
        ((500, {"message": "etcd down"}), True, "HTTP 500: etcd down"),
        ((429, {}), True, "HTTP 429"),
        (KubeError(0, "ClientConnectorError", "refused"), True, "ClientConnectorError"),
        (ConnectionRefusedError("refused"), True, "ConnectionRefusedError"),
    ],
)
async def test_store_errors_say_whether_to_retry(
    answer: tuple[int, Any] | BaseException, retryable: bool, words: str
) -> None:
    with pytest.raises(HeadStoreError, match=words) as raised:
        await store(FakeApi(answer)).write(ChainHead(1, H1))
    assert raised.value.retryable is retryable


async def test_store_names_a_malformed_head() -> None:
    with pytest.raises(ValueError, match="holds no valid chain head"):
        await store(FakeApi((200, {"data": {"seq": "x", "hash": H1}}))).read()


# -- publishing -------------------------------------------------------------------------------


class FakeWrites:
    """A write function whose calls block until released; counts concurrency."""

    def __init__(self) -> None:
        self.written: list[ChainHead] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.started = asyncio.Event()
        self.failures = 0

    async def __call__(self, head: ChainHead) -> None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        self.started.set()
        try:
            await self.gate.wait()
            if self.failures:
                self.failures -= 1
                raise HeadStoreError("API server unreachable")
            self.written.append(head)
        finally:
            self.in_flight -= 1


def heads(count: int, start: int = 1) -> list[ChainHead]:
    return [ChainHead(seq, f"{seq:064x}") for seq in range(start, start + count)]


async def settle(publisher: HeadPublisher, head: ChainHead) -> None:
    for _ in range(200):
        if publisher.written == head:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"{head} never written; last {publisher.written}")


async def test_heads_offered_during_a_write_are_coalesced_into_the_newest() -> None:
    writes = FakeWrites()
    publisher = HeadPublisher(writes, min_interval=0)
    publisher.start()
    writes.gate.clear()
    first, *rest = heads(1000)
    publisher.offer(first)
    await writes.started.wait()
    for head in rest:
        publisher.offer(head)  # returns at once: nothing waits for the API server
    assert writes.written == []
    writes.gate.set()
    await settle(publisher, rest[-1])
    assert writes.written == [first, rest[-1]]
    assert writes.most_in_flight == 1
    await publisher.close(1)


async def test_an_older_head_never_replaces_a_newer_one() -> None:
    writes = FakeWrites()
    publisher = HeadPublisher(writes, min_interval=0)
    newer, older = ChainHead(5, H1), ChainHead(4, H2)
    publisher.offer(newer)
    publisher.offer(older)
    publisher.start()
    await settle(publisher, newer)
    await publisher.close(1)
    assert writes.written == [newer]


async def test_writes_are_spaced_by_the_interval() -> None:
    writes = FakeWrites()
    now = [100.0]
    naps: list[float] = []

    async def sleep(seconds: float) -> None:
        naps.append(seconds)
        now[0] += seconds

    publisher = HeadPublisher(writes, min_interval=0.2, clock=lambda: now[0], sleep=sleep)
    publisher.start()
    one, two, three = heads(3)
    publisher.offer(one)
    await settle(publisher, one)
    now[0] += 0.05
    publisher.offer(two)
    publisher.offer(three)
    await settle(publisher, three)
    assert writes.written == [one, three]
    assert naps == [pytest.approx(0.15)]
    await publisher.close(1)


async def test_failed_writes_back_off_are_counted_and_retry_with_the_newest_head() -> None:
    writes = FakeWrites()
    writes.failures = 3
    naps: list[float] = []
    errors: list[BaseException] = []
    recorded: list[int] = []

    async def sleep(seconds: float) -> None:
        naps.append(seconds)
        await asyncio.sleep(0)

    publisher = HeadPublisher(
        writes,
        min_interval=0,
        backoff_initial=0.5,
        backoff_max=1.5,
        on_error=errors.append,
        on_written=lambda head: recorded.append(head.seq),
        sleep=sleep,
    )
    publisher.start()
    one, two = heads(2)
    publisher.offer(one)
    await writes.started.wait()
    publisher.offer(two)
    await settle(publisher, two)
    assert naps == [0.5, 1.0, 1.5]
    assert len(errors) == 3 and publisher.failures == 3
    assert writes.written == [two] and recorded == [2]
    await publisher.close(1)


async def test_close_writes_the_last_head_or_gives_up_after_the_grace() -> None:
    writes = FakeWrites()
    publisher = HeadPublisher(writes, min_interval=60)
    publisher.start()
    one, two = heads(2)
    publisher.offer(one)
    await settle(publisher, one)
    publisher.offer(two)  # the interval is not waited for on the way out
    await publisher.close(1)
    assert writes.written == [one, two]

    hanging = FakeWrites()
    hanging.gate.clear()
    stuck = HeadPublisher(hanging)
    stuck.start()
    stuck.offer(one)
    await hanging.started.wait()
    await asyncio.wait_for(stuck.close(0.05), 1)
    assert hanging.written == []


async def test_a_failing_callback_does_not_stop_publishing() -> None:
    writes = FakeWrites()

    def broken(head: ChainHead) -> None:
        raise RuntimeError("metrics bug")

    publisher = HeadPublisher(writes, min_interval=0, on_written=broken)
    publisher.start()
    one, two = heads(2)
    publisher.offer(one)
    await settle(publisher, one)
    publisher.offer(two)
    await settle(publisher, two)
    await publisher.close(1)
