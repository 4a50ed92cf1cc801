"""Fills reported to the audit sidecar: events built from journal entries, what is sent,
acknowledgements, back-off, redaction, and the reporter against an in-process sidecar."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.fakeapi import FakeApiServer
from tradingbot.audit import (
    MAX_EVENTS_PER_REQUEST,
    AuditReporter,
    JournalView,
    backoff_delay,
    bot_events_client,
    build_events,
    classify_status,
    events_per_fill,
    fill_key,
    mark_audited,
    position_action,
    select_unaudited,
    stored_flags,
    unaudited_removed,
)
from tradingbot.config import ConfigError, Settings
from tradingbot.kube import KubeApi, KubeClient
from tradingbot.ledger import Execution, apply_fill
from tradingbot.logsetup import SENSITIVE_FIELD_NAMES, SecretRedactor
from tradingbot.metrics import BotMetrics
from tradingbot.state import Fill, StateCheckpoint, decode_state, encode_state
from tradingbot_audit.handlers import prepare_bot_event
from tradingbot_audit.schema import is_secret_key, normalize_event

BOT, NS = "alpha", "bots"
T0 = "2026-03-01T12:00:00.000Z"


def fill(
    seq: int,
    side: str = "buy",
    *,
    before: float | None = 0.0,
    after: float | None = 1.0,
    audited: bool = False,
    coid: str | None = None,
    time: str = T0,
    reason: str = "entry",
) -> Fill:
    return Fill(
        seq=seq,
        time=time,
        symbol="BTC/USDT",
        side=side,
        amount=0.5,
        price=60_000.0,
        cost=30_000.0,
        fee=30.0,
        fee_currency="USDT",
        order_id=f"paper-{seq}",
        client_order_id=f"tb{seq:030d}" if coid is None else coid,
        realized_pnl=12.5 if side == "sell" else 0.0,
        day=time[:10],
        day_realized_pnl=0.0,
        reason=reason,
        position_before=before,
        position_after=after,
        audited=audited,
    )


async def until(predicate: Callable[[], Any], limit: float = 10.0) -> Any:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


def events_of(f: Fill, checkpoint_seq: int = 7) -> list[dict[str, Any]]:
    return build_events(f, bot=BOT, namespace=NS, checkpoint_seq=checkpoint_seq)


# -- events from journal entries ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("side", "before", "after", "trade_action", "position"),
    [
        ("buy", 0.0, 0.5, "buy", "opened"),
        ("buy", 0.5, 1.0, "buy", "increased"),
        ("sell", 1.0, 0.5, "sell", "reduced"),
        ("sell", 0.5, 0.0, "sell", "closed"),
        ("sell", None, None, "sell", None),  # written before positions were recorded
    ],
)
def test_events_of_a_journal_entry(
    side: str, before: float | None, after: float | None, trade_action: str, position: str | None
) -> None:
    f = fill(3, side, before=before, after=after)
    events = events_of(f)
    assert position_action(f) == position
    assert len(events) == events_per_fill(f) == (1 if position is None else 2)
    trade = events[0]
    assert trade == {
        "timestamp": "2026-03-01T12:00:00.000000Z",
        "event_type": "trade",
        "severity": "info",
        "target": BOT,
        "namespace": NS,
        "action": trade_action,
        "details": {
            "symbol": "BTC/USDT",
            "side": side,
            "amount": 0.5,
            "price": 60_000.0,
            "cost": 30_000.0,
            "fee": 30.0,
            "feeCurrency": "USDT",
            "realizedPnl": f.realized_pnl,
            "reason": "entry",
            "fillTime": T0,
            "orderId": "paper-3",
            "clientOrderId": f.client_order_id,
            "tradeSeq": 3,
            "checkpointSeq": 7,
        },
        "dedup_key": f.client_order_id,
    }
    if position is not None:
        change = events[1]
        assert change["event_type"] == "position_change"
        assert change["action"] == position
        assert change["dedup_key"] == f"{f.client_order_id}/position"
        assert change["details"]["amountBefore"] == before
        assert change["details"]["amountAfter"] == after
        assert change["details"]["tradeSeq"] == 3
        assert change["timestamp"] == trade["timestamp"]


def test_dedup_keys_are_deterministic_and_fit_the_sidecar() -> None:
    f = fill(1)
    assert [e["dedup_key"] for e in events_of(f)] == [e["dedup_key"] for e in events_of(f, 99)]
    # Without a clientOrderId: the exchange's order id and the fill time.
    assert fill_key(fill(1, coid="")) == f"paper-1@{T0}"
    long = fill_key(fill(1, coid="x" * 300))
    assert long.startswith("sha256-") and len(long) <= 100
    assert long == fill_key(fill(1, coid="x" * 300))


def test_event_time_is_the_fill_time_in_utc_or_left_to_the_sidecar() -> None:
    (trade, _) = events_of(fill(1, time="2026-03-01T13:00:00+01:00"))
    assert trade["timestamp"] == "2026-03-01T12:00:00.000000Z"
    (trade, _) = events_of(fill(1, time="yesterday"))
    assert "timestamp" not in trade and trade["details"]["fillTime"] == "yesterday"


def test_events_pass_the_sidecars_own_checks_unchanged() -> None:
    now = datetime(2026, 3, 1, tzinfo=UTC)
    for f in (fill(1), fill(2, "sell", before=1.0, after=0.0), fill(3, before=None, after=None)):
        for event in events_of(f):
            user = f"system:serviceaccount:{NS}:tradingbot-{BOT}"
            record = normalize_event(prepare_bot_event(event, 0, NS, BOT, user), now)
            assert record["details"] == event["details"]  # nothing needed redacting
            assert record["source"] == "bot" and record["target"] == BOT


def test_details_never_carry_credentials() -> None:
    redactor = SecretRedactor()
    api_key, secret = "AKIA-live-key-0123456789", "s3cr3t-value-abcdef"
    redactor.add(api_key, secret)
    # Even if a credential value ended up in a string of the fill, it is masked.
    leaky = fill(1, reason=f"entry {api_key}", coid=f"tb-{secret}")
    events = build_events(leaky, bot=BOT, namespace=NS, checkpoint_seq=1, redact=redactor.redact)
    text = json.dumps(events)
    assert api_key not in text and secret not in text
    for event in events:
        for key in event["details"]:
            assert not is_secret_key(key), key
            assert not any(word in key.lower() for word in SENSITIVE_FIELD_NAMES), key


# -- what is sent, acknowledgements, trimming ---------------------------------------------------


def test_selection_takes_the_oldest_stored_unaudited_fills_in_whole() -> None:
    journal = [
        fill(1, audited=True),
        fill(2),
        fill(3, before=None, after=None),
        fill(4),
        fill(5),  # not in a stored checkpoint yet
    ]
    assert [f.seq for f in select_unaudited(journal, durable_seq=4)] == [2, 3, 4]
    assert [f.seq for f in select_unaudited(journal, durable_seq=4, skip={3})] == [2, 4]
    # 2 + 1 events fit in 4, the next fill's 2 do not: fills are never split.
    assert [f.seq for f in select_unaudited(journal, durable_seq=5, max_events=4)] == [2, 3]
    assert select_unaudited(journal, durable_seq=0) == []
    many = [fill(i) for i in range(1, 400)]
    batch = select_unaudited(many, durable_seq=400)
    assert sum(events_per_fill(f) for f in batch) <= MAX_EVENTS_PER_REQUEST == 500
    assert len(batch) == 250


def test_acks_mark_entries_and_the_flag_survives_a_checkpoint() -> None:
    state = StateCheckpoint(journal=(fill(1), fill(2), fill(3)))
    marked = mark_audited(state, {1, 3, 42})
    assert [f.audited for f in marked.journal] == [True, False, True]
    assert mark_audited(marked, {1}) is marked  # nothing to change
    assert mark_audited(marked, set()) is marked
    text, _ = encode_state(marked.next(reason="periodic", writer_pod="p"))
    restored = decode_state(text)
    assert [f.audited for f in restored.journal] == [True, False, True]
    assert [f.position_after for f in restored.journal] == [1.0, 1.0, 1.0]
    # Delivery bookkeeping, not the trade: the same fill compares equal either way.
    assert restored.journal == state.journal


def test_state_written_before_audit_flags_reads_as_unaudited() -> None:
    text, _ = encode_state(StateCheckpoint(journal=(fill(1),)).next(reason="fill", writer_pod="p"))
    doc = json.loads(text)
    for entry in doc["journal"]:
        for key in ("audited", "positionBefore", "positionAfter"):
            del entry[key]
    (old,) = decode_state(json.dumps(doc)).journal
    assert old.audited is False and old.position_before is None
    assert events_per_fill(old) == 1
    doc["journal"][0]["audited"] = "yes"
    with pytest.raises(Exception, match="audited"):
        decode_state(json.dumps(doc))


def test_apply_fill_records_the_position_around_the_fill() -> None:
    state = StateCheckpoint(balances={"USDT": 10_000.0})

    def ex(side: str, amount: float, n: int) -> Execution:
        return Execution(
            "BTC/USDT", side, amount, 100.0, amount * 100, 0.0, "USDT", str(n), f"c{n}", T0
        )

    actions = []
    for n, (side, amount) in enumerate([("buy", 1.0), ("buy", 1.0), ("sell", 0.5), ("sell", 1.5)]):
        state, f = apply_fill(state, ex(side, amount, n))
        actions.append((f.position_before, f.position_after, position_action(f)))
    assert actions == [
        (0.0, 1.0, "opened"),
        (1.0, 2.0, "increased"),
        (2.0, 1.5, "reduced"),
        (1.5, 0.0, "closed"),
    ]


def test_trimmed_unaudited_entries_are_the_lost_ones() -> None:
    before = [fill(1, audited=True), fill(2), fill(3), fill(4)]
    assert [f.seq for f in unaudited_removed(before, before[2:])] == [2]
    assert unaudited_removed(before, before) == []
    assert [f.seq for f in unaudited_removed(before[1:3], ())] == [2, 3]


# -- back-off and answers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failures", "delay"),
    [(0, 0.0), (1, 0.5), (2, 1.0), (3, 2.0), (6, 16.0), (7, 30.0), (50, 30.0), (10**6, 30.0)],
)
def test_backoff_doubles_up_to_a_cap(failures: int, delay: float) -> None:
    assert backoff_delay(failures) == delay


def test_backoff_jitter_only_shortens_a_little() -> None:
    for jitter in (0.0, 0.3, 0.999):
        assert 24.0 <= backoff_delay(9, jitter=jitter) <= 30.0
    assert backoff_delay(3, cap=1.5) == 1.5


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, "acked"),
        (500, "retry"),
        (503, "retry"),
        (401, "retry"),  # token rotated or not yet known: try again with a fresh one
        (429, "retry"),
        (400, "split"),
        (413, "split"),
        (403, "rejected"),
        (404, "rejected"),
    ],
)
def test_answers_are_classified(status: int, outcome: str) -> None:
    assert classify_status(status) == outcome


def test_stored_flags_need_one_entry_per_event() -> None:
    assert stored_flags({"stored": [{"duplicate": False}, {"duplicate": True}]}, 2) == [
        False,
        True,
    ]
    assert stored_flags({"stored": [{"duplicate": False}]}, 2) is None
    assert stored_flags({"nope": 1}, 0) is None
    assert stored_flags(None, 1) is None


# -- configuration ----------------------------------------------------------------------------


def test_audit_url_from_the_environment() -> None:
    base = {"BOT_NAME": BOT, "POD_NAMESPACE": NS}
    assert Settings.from_env(base).audit_url is None
    assert Settings.from_env({**base, "AUDIT_URL": " "}).audit_url is None
    url = "http://audit.tradingbot-system.svc:8901/"
    assert Settings.from_env({**base, "AUDIT_URL": url}).audit_url == url.rstrip("/")
    with pytest.raises(ConfigError, match="AUDIT_URL"):
        Settings.from_env({**base, "AUDIT_URL": "audit:8901"})


async def test_bearer_token_is_what_the_kubernetes_client_uses(tmp_path: Path) -> None:
    from tradingbot_api.audit_http import read_token
    from tradingbot_api.kubeclient import Credentials

    def token_of(client: KubeClient) -> Any:
        source = KubeApi(client).token_source()
        assert source is not None
        return read_token(source)

    server = "https://127.0.0.1:6443"
    assert await token_of(KubeClient(Credentials(server, token="abc.def"))) == "abc.def"
    assert await token_of(KubeClient(Credentials(server))) is None  # client certificates
    # In a pod the projected token rotates: it is read again on every call.
    token_file = tmp_path / "token"
    token_file.write_text("first\n")
    in_cluster = KubeClient(Credentials(server, token_file=str(token_file)))
    assert await token_of(in_cluster) == "first"
    token_file.write_text("second")
    assert await token_of(in_cluster) == "second"
    # A transport without credentials of its own offers none: audit reporting stays off.
    assert KubeApi(fake_kube()).token_source() is None


# -- the reporter against an in-process sidecar --------------------------------------------------


@dataclass
class FakeSidecar:
    """`POST /v1/bot-events` with the real one's answers: dedup by key, 200 with one stored
    entry per event; scripted failures."""

    url: str = ""
    stored: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[list[dict[str, Any]]] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)  # answered first, one per request
    refuse_keys: set[str] = field(default_factory=set)  # 400 for a batch holding one of them
    delay: float = 0.0

    async def handle(self, request: web.Request) -> web.Response:
        self.tokens.append(request.headers.get("Authorization", ""))
        events = (await request.json())["events"]
        self.requests.append(events)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.statuses:
            status = self.statuses.pop(0)
            return web.json_response({"error": f"scripted {status}"}, status=status)
        for index, event in enumerate(events):
            if event["dedup_key"] in self.refuse_keys:
                return web.json_response({"error": f"events[{index}]: bad"}, status=400)
        answer = []
        for event in events:
            duplicate = event["dedup_key"] in self.stored
            self.stored.setdefault(event["dedup_key"], event)
            answer.append({"seq": len(self.stored), "hash": "h", "duplicate": duplicate})
        return web.json_response({"stored": answer})


@pytest.fixture
async def sidecar() -> AsyncIterator[FakeSidecar]:
    fake = FakeSidecar()
    app = web.Application()
    app.router.add_post("/v1/bot-events", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    fake.url = f"http://127.0.0.1:{port}/"
    yield fake
    await runner.cleanup()


@dataclass
class Journal:
    """The runtime's side of the reporter: its journal, durable seq and acknowledgements."""

    state: StateCheckpoint
    durable_seq: int
    checkpoint_seq: int = 9

    def view(self) -> JournalView:
        return JournalView(self.state.journal, self.durable_seq, self.checkpoint_seq)

    def acked(self, seqs: set[int]) -> None:
        self.state = mark_audited(self.state, seqs)

    def audited(self) -> list[int]:
        return [f.seq for f in self.state.journal if f.audited]


def reporter(
    sidecar: FakeSidecar,
    journal: Journal,
    metrics: BotMetrics,
    token: Callable[[], str | None] = lambda: "tok",
    **kwargs: Any,
) -> AuditReporter:
    return AuditReporter(
        bot_events_client(sidecar.url, token),
        bot=BOT,
        namespace=NS,
        metrics=metrics,
        view=journal.view,
        on_acked=journal.acked,
        **kwargs,
    )


def sent(metrics: BotMetrics, result: str) -> float:
    value = metrics.registry.get_sample_value(
        "tradingbot_audit_events_sent_total", {"result": result}
    )
    return value or 0.0


def journal_of(count: int, **kwargs: Any) -> Journal:
    fills = tuple(fill(i) for i in range(1, count + 1))
    return Journal(StateCheckpoint(journal=fills), **{"durable_seq": count, **kwargs})


async def test_flush_delivers_and_acknowledges_every_stored_fill(sidecar: FakeSidecar) -> None:
    journal = journal_of(4, durable_seq=3)
    metrics = BotMetrics(BOT)
    r = reporter(sidecar, journal, metrics)
    assert await r.flush()
    assert journal.audited() == [1, 2, 3]  # 4 is not in a stored checkpoint yet
    assert len(sidecar.stored) == 6 and sent(metrics, "ok") == 6
    assert sidecar.tokens == ["Bearer tok"]
    trade = sidecar.stored[fill_key(fill(1))]
    assert trade["details"]["checkpointSeq"] == 9
    # A resend (acknowledgement lost in a crash) is harmless: the sidecar reports duplicates.
    journal.state = replace(journal.state, journal=tuple(fill(i) for i in range(1, 5)))
    journal.durable_seq = 4
    assert await r.flush()
    assert sent(metrics, "duplicate") == 6 and sent(metrics, "ok") == 8
    assert len(sidecar.stored) == 8
    await r.close()


async def test_batches_stay_within_the_request_limit(sidecar: FakeSidecar) -> None:
    journal = journal_of(600)
    r = reporter(sidecar, journal, BotMetrics(BOT))
    assert await r.flush()
    assert [len(events) for events in sidecar.requests] == [500, 500, 200]
    assert len(journal.audited()) == 600
    await r.close()


async def test_a_refused_event_is_isolated_and_dropped_alone(sidecar: FakeSidecar) -> None:
    journal = journal_of(8)
    bad = fill_key(fill(5))
    sidecar.refuse_keys.add(bad)
    metrics = BotMetrics(BOT)
    r = reporter(sidecar, journal, metrics)
    assert await r.flush()
    assert journal.audited() == list(range(1, 9))  # settled: nothing offered again
    assert bad not in sidecar.stored and len(sidecar.stored) == 14
    assert sent(metrics, "rejected") == 2 and sent(metrics, "ok") == 14
    await r.close()


async def test_forbidden_drops_the_batch_server_errors_keep_it(sidecar: FakeSidecar) -> None:
    journal = journal_of(3)
    metrics = BotMetrics(BOT)
    r = reporter(sidecar, journal, metrics)
    sidecar.statuses = [503]
    assert not await r.flush()
    assert journal.audited() == [] and sent(metrics, "error") == 6 and r.failures == 1
    sidecar.statuses = [403]
    assert await r.flush()
    assert journal.audited() == [1, 2, 3] and sent(metrics, "rejected") == 6
    assert sidecar.stored == {}
    await r.close()


async def test_background_sends_retry_with_backoff_until_delivered(
    sidecar: FakeSidecar,
) -> None:
    journal = journal_of(2)
    metrics = BotMetrics(BOT)
    tokens = iter(["t1", "t2", "t3", "t4", "t5"])
    r = reporter(sidecar, journal, metrics, token=lambda: next(tokens), backoff_cap=0.2)
    sidecar.statuses = [500, 502]
    started = time.monotonic()
    r.start()
    await until(lambda: journal.audited() == [1, 2], 5)
    assert journal.audited() == [1, 2]
    assert time.monotonic() - started >= 2 * 0.2 * 0.8  # two pauses at the 0.2 s cap
    assert sent(metrics, "error") == 8 and sent(metrics, "ok") == 4  # 2 failed requests
    # The token is read again for every request (it rotates).
    assert sidecar.tokens == ["Bearer t1", "Bearer t2", "Bearer t3"]
    # New fills wake the reporter.
    journal.state = replace(journal.state, journal=(*journal.state.journal, fill(3)))
    journal.durable_seq = 3
    r.notify()
    await until(lambda: journal.audited() == [1, 2, 3], 5)
    assert journal.audited() == [1, 2, 3]
    await r.close()


async def test_no_token_is_a_retryable_failure(sidecar: FakeSidecar) -> None:
    journal = journal_of(1)
    metrics = BotMetrics(BOT)
    r = reporter(sidecar, journal, metrics, token=lambda: None)
    assert not await r.flush()
    assert sidecar.requests == [] and sent(metrics, "error") == 2
    await r.close()


async def test_unreachable_sidecar_costs_only_the_request_timeout() -> None:
    journal = journal_of(1)
    metrics = BotMetrics(BOT)
    fake = FakeSidecar(url="http://127.0.0.1:9/")  # discard port: refused
    r = reporter(fake, journal, metrics)
    started = time.monotonic()
    assert not await r.flush()
    assert time.monotonic() - started < 3
    assert sent(metrics, "error") == 2 and journal.audited() == []
    await r.close()


async def test_stop_flushes_once_within_its_budget(sidecar: FakeSidecar) -> None:
    journal = journal_of(2)
    r = reporter(sidecar, journal, BotMetrics(BOT), resend_interval=60)
    r.start()
    await until(lambda: journal.audited() == [1, 2], 5)
    journal.state = replace(journal.state, journal=(*journal.state.journal, fill(3)))
    journal.durable_seq = 3  # no notify: only the shutdown flush can send it
    await r.stop(flush_budget=1.0)
    assert journal.audited() == [1, 2, 3]

    # A sidecar that hangs does not hold the shutdown longer than the budget.
    sidecar.delay = 1.5
    journal.state = replace(journal.state, journal=(*journal.state.journal, fill(4)))
    journal.durable_seq = 4
    r.start()
    await asyncio.sleep(0.1)  # the background send is now in flight
    started = time.monotonic()
    await r.stop(flush_budget=0.5)
    assert time.monotonic() - started < 1.0
    assert 4 not in journal.audited()
    await r.close()


# -- the runtime: reports its fills, stores the flags, never waits for the audit ---------------

TB = "trading.r7.dev/v1alpha1"
FAST_PARAMS = {
    "lookback": 2,
    "entryThresholdPct": 0.05,
    "exitThresholdPct": 0.0,
    "priceFeed": "seeded",
    "seed": 5,
}


def fake_kube() -> FakeApiServer:
    kube = FakeApiServer()
    kube.put(
        {
            "apiVersion": TB,
            "kind": "TradingBot",
            "metadata": {"name": BOT, "namespace": NS},
            "spec": {
                "profile": "volatile",
                "exchange": {"id": "binance", "mode": "paper"},
                "symbols": ["BTC/USDT", "ETH/USDT"],
                "strategy": {"params": dict(FAST_PARAMS)},
            },
        },
    )
    return kube


def runtime_settings(audit_url: str | None, pod: str = "pod-a") -> Settings:
    return Settings(
        bot_name=BOT,
        namespace=NS,
        pod_name=pod,
        metrics_port=0,
        tick_seconds=0.01,
        checkpoint_interval_seconds=0.2,
        lease_duration_seconds=3,
        grace_period_seconds=10,
        audit_url=audit_url,
    )


def trade_keys(sidecar: FakeSidecar) -> list[str]:
    return sorted(k for k, e in sidecar.stored.items() if e["event_type"] == "trade")


async def test_runtime_reports_each_fill_and_stores_the_flags(sidecar: FakeSidecar) -> None:
    from tradingbot.runtime import EXIT_OK, BotRuntime
    from tradingbot.state import MemoryStateStore

    store = MemoryStateStore()
    runtime = BotRuntime(
        runtime_settings(sidecar.url),
        api=KubeApi(fake_kube()),
        store=store,
        audit_token=lambda: "tok",
    )
    running = asyncio.create_task(runtime.run())
    await until(lambda: runtime.state.stats.total_trades >= 4)
    await until(lambda: len(trade_keys(sidecar)) >= 4)
    runtime.request_stop("test")
    assert await asyncio.wait_for(running, 10) == EXIT_OK
    final = decode_state(store.current or "")
    assert final.reason == "shutdown"
    assert all(f.audited for f in final.journal)  # the shutdown checkpoint holds the flags
    assert trade_keys(sidecar) == sorted(fill_key(f) for f in final.journal)
    changes = [e for e in sidecar.stored.values() if e["event_type"] == "position_change"]
    assert len(changes) == len(final.journal)
    assert {e["target"] for e in sidecar.stored.values()} == {BOT}
    assert sidecar.tokens and set(sidecar.tokens) == {"Bearer tok"}
    # Only fills already in a stored checkpoint are reported, each with that checkpoint.
    for f in final.journal:
        stored_at = sidecar.stored[fill_key(f)]["details"]["checkpointSeq"]
        holding = [s.checkpoint_seq for s in store.saved if f in s.journal]
        assert stored_at in holding

    # A restart offers nothing again: the flags were stored.
    before = len(sidecar.requests)
    second = BotRuntime(
        runtime_settings(sidecar.url, "pod-b"),
        api=KubeApi(fake_kube()),
        store=store,
        audit_token=lambda: "tok",
    )
    running = asyncio.create_task(second.run())
    await until(lambda: second.health.ready)
    second.request_stop("test")
    await asyncio.wait_for(running, 10)
    resent = [e for events in sidecar.requests[before:] for e in events]
    assert not {e["dedup_key"] for e in resent} & {fill_key(f) for f in final.journal}


async def test_restart_sends_what_a_killed_process_left_unaudited(sidecar: FakeSidecar) -> None:
    from tradingbot.runtime import BotRuntime
    from tradingbot.state import MemoryStateStore

    left = StateCheckpoint(
        balances={"USDT": 10_000.0}, journal=(fill(1, audited=True), fill(2), fill(3))
    )
    store = MemoryStateStore(current=encode_state(left.next(reason="fill", writer_pod="old"))[0])
    runtime = BotRuntime(
        runtime_settings(sidecar.url),
        api=KubeApi(fake_kube()),
        store=store,
        audit_token=lambda: "tok",
    )
    running = asyncio.create_task(runtime.run())
    await until(lambda: {fill_key(fill(2)), fill_key(fill(3))} <= set(sidecar.stored))
    assert fill_key(fill(1)) not in sidecar.stored  # acknowledged before the kill
    runtime.request_stop("test")
    await asyncio.wait_for(running, 10)
    final = decode_state(store.current or "")
    assert [f.audited for f in final.journal[:3]] == [True, True, True]


async def test_a_missing_sidecar_never_holds_up_trading(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import tradingbot.ledger
    from tradingbot.runtime import EXIT_OK, BotRuntime
    from tradingbot.state import MemoryStateStore

    monkeypatch.setattr(tradingbot.ledger, "MAX_JOURNAL_ENTRIES", 3)
    store = MemoryStateStore()
    runtime = BotRuntime(
        runtime_settings("http://127.0.0.1:9"),  # nothing listens there
        api=KubeApi(fake_kube()),
        store=store,
        audit_token=lambda: "tok",
    )
    running = asyncio.create_task(runtime.run())
    await until(lambda: runtime.state.stats.total_trades >= 6)
    dropped = runtime.metrics.registry.get_sample_value("tradingbot_audit_events_dropped_total")
    assert dropped is not None and dropped >= 2 * (6 - 3)
    assert any("audit events are lost" in r.getMessage() for r in caplog.records)
    assert len(runtime.state.journal) == 3
    stopped = time.monotonic()
    runtime.request_stop("test")
    assert await asyncio.wait_for(running, 10) == EXIT_OK
    assert time.monotonic() - stopped < 2.5
    final = decode_state(store.current or "")
    assert final.reason == "shutdown" and not any(f.audited for f in final.journal)
    errors = runtime.metrics.registry.get_sample_value(
        "tradingbot_audit_events_sent_total", {"result": "error"}
    )
    assert errors and errors > 0


async def test_without_audit_url_nothing_is_sent_and_one_line_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from tradingbot.runtime import BotRuntime
    from tradingbot.state import MemoryStateStore

    caplog.set_level("INFO", logger="tradingbot")
    runtime = BotRuntime(runtime_settings(None), api=KubeApi(fake_kube()), store=MemoryStateStore())
    running = asyncio.create_task(runtime.run())
    await until(lambda: runtime.state.stats.total_trades >= 1)
    runtime.request_stop("test")
    await asyncio.wait_for(running, 10)
    assert runtime.audit is None
    lines = [r for r in caplog.records if "audit reporting off" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelname == "INFO"
    text = runtime.metrics.render().decode()
    assert 'tradingbot_audit_events_sent_total{result="ok"} 0.0' in text
    assert "tradingbot_audit_events_dropped_total 0.0" in text
