"""The bot's halt and error audit events: what they hold, that the real sidecar's checks
accept them, the bounded queue, and delivery against an in-process sidecar."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web

from tests.unit.bot.test_audit_reporting import FakeSidecar
from tradingbot.audit import bot_events_client
from tradingbot.metrics import BotMetrics
from tradingbot.notices import MAX_TEXT, NoticeSender, enqueue, error_event, halt_event
from tradingbot_audit.handlers import prepare_bot_event
from tradingbot_audit.schema import normalize_event

BOT, NS = "alpha", "bots"
T0 = "2026-03-01T12:00:00.000Z"


def halt(action: str = "true", **kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "bot": BOT,
        "namespace": NS,
        "action": action,
        "mode": "true",
        "source": "bot",
        "observed_at": T0,
        "positions": {"BTC/USDT": 0.5},
    }
    args.update(kw)
    return halt_event(**args)


def error(**kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "bot": BOT,
        "namespace": NS,
        "error_type": "NetworkError",
        "category": "exchange",
        "at": T0,
    }
    args.update(kw)
    return error_event(**args)


def stored(event: dict[str, Any]) -> dict[str, Any]:
    """The record the real sidecar would write for this event from the bot's account."""
    prepared = prepare_bot_event(event, 0, NS, BOT, f"system:serviceaccount:{NS}:tradingbot-{BOT}")
    return normalize_event(prepared, datetime.now(UTC))


@pytest.mark.parametrize(
    ("action", "severity"),
    [("true", "critical"), ("flatten", "critical"), ("drain", "warning"), ("flat", "info")],
)
def test_halt_events_carry_the_positions_before(action: str, severity: str) -> None:
    record = stored(halt(action, cancelled_orders=2))
    assert (record["event_type"], record["source"], record["action"]) == ("halt", "bot", action)
    assert record["severity"] == severity
    assert record["details"]["positions"] == {"BTC/USDT": 0.5}
    assert record["details"]["cancelledOrders"] == 2
    assert record["timestamp"].startswith("2026-03-01T12:00:00")
    assert record["dedup_key"].startswith(f"bot/{NS}/{BOT}/halt/")


def test_each_halt_event_has_its_own_key() -> None:
    assert halt()["dedup_key"] != halt()["dedup_key"]


def test_error_events_are_bounded_and_redacted() -> None:
    secret = "apikey-0123456789abcdef"
    event = error(
        message=f"binance GET /account?key={secret} " + "x" * 1000,
        method="fetch_balance",
        suppressed=7,
        redact=lambda text: text.replace(secret, "***"),
    )
    record = stored(event)
    details = record["details"]
    assert (record["event_type"], record["action"]) == ("error", "exchange")
    assert details["errorType"] == "NetworkError" and details["suppressed"] == 7
    assert details["method"] == "fetch_balance"
    assert secret not in details["message"] and len(details["message"]) == MAX_TEXT


def test_the_queue_drops_errors_before_halts() -> None:
    pending: deque[dict[str, Any]] = deque()
    first_error = error()
    assert enqueue(pending, first_error, 3)
    assert enqueue(pending, halt(), 3)
    assert enqueue(pending, error(), 3)
    assert enqueue(pending, halt("flat"), 3)  # full: the oldest error makes room
    assert first_error not in pending and len(pending) == 3
    assert enqueue(pending, halt("resumed"), 3)  # the other error goes
    assert [e["event_type"] for e in pending] == ["halt", "halt", "halt"]
    assert not enqueue(pending, error(), 3)  # an error never pushes out a halt
    assert enqueue(pending, halt("true"), 3)  # a newer halt pushes out the oldest
    assert [e["action"] for e in pending] == ["flat", "resumed", "true"]


@pytest.fixture
async def sidecar() -> AsyncIterator[FakeSidecar]:
    fake = FakeSidecar()
    app = web.Application()
    app.router.add_post("/v1/bot-events", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    fake.url = f"http://127.0.0.1:{runner.addresses[0][1]}/"
    yield fake
    await runner.cleanup()


async def until_true(predicate: Any, limit: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def test_events_are_retried_until_the_sidecar_stores_them(sidecar: FakeSidecar) -> None:
    sidecar.statuses = [503, 503]
    sender = NoticeSender(
        bot_events_client(sidecar.url, lambda: "tok"), metrics=BotMetrics(BOT), backoff_cap=0.05
    )
    sender.start()
    try:
        event = halt()
        sender.report(event)
        await until_true(lambda: event["dedup_key"] in sidecar.stored)
        assert len(sidecar.requests) == 3 and not sender.pending
        assert sidecar.tokens[-1] == "Bearer tok"
    finally:
        await sender.close()


async def test_refused_events_are_dropped_not_retried(sidecar: FakeSidecar) -> None:
    sender = NoticeSender(bot_events_client(sidecar.url, lambda: "tok"), metrics=BotMetrics(BOT))
    sender.start()
    try:
        event = error()
        sidecar.refuse_keys.add(event["dedup_key"])
        sender.report(event)
        await until_true(lambda: not sender.pending)
        await asyncio.sleep(0.05)
        assert len(sidecar.requests) == 1 and sidecar.stored == {}
    finally:
        await sender.close()


async def test_reporting_never_waits_for_the_network() -> None:
    # Port 9 (discard) on loopback: nothing answers, every send fails.
    sender = NoticeSender(
        bot_events_client("http://127.0.0.1:9", lambda: "tok"), metrics=BotMetrics(BOT)
    )
    sender.start()
    try:
        for _ in range(1000):
            sender.report(error())  # a plain call: queued, never awaited
        assert len(sender.pending) == sender.limit  # bounded
    finally:
        await sender.close()
