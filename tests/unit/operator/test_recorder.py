"""Audit events: outbox round trip, redaction, deterministic Event names."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Sequence

from tradingbot_operator.recorder import (
    AuditEvent,
    AuditRecorder,
    InvolvedObject,
    kube_event_body,
    kube_event_name,
)

NOW = dt.datetime(2026, 11, 29, 12, 0, 0, 123000, tzinfo=dt.UTC)
BOT = InvolvedObject("trading.r7.dev/v1alpha1", "TradingBot", "ns", "bot-a", "uid-1")


def event(**details: object) -> AuditEvent:
    return AuditEvent(
        event_type="config_change",
        severity="info",
        source="kubectl",
        namespace="ns",
        target="bot-a",
        action="ConfigChanged",
        reason="ConfigChanged",
        message="changed",
        details=details,
        user_id="alice",
    ).stamped(NOW, "uid-1/42/0")


def test_outbox_round_trip_keeps_everything_but_secrets() -> None:
    original = event(new={"spec.strategy.params.apiKey": "sk-live-123", "spec.symbols": ["X"]})
    stored = original.to_outbox()
    assert "sk-live-123" not in repr(stored)
    restored = AuditEvent.from_outbox(stored)
    assert restored.dedup_key == "uid-1/42/0"
    assert restored.timestamp == "2026-11-29T12:00:00.123000Z"
    assert restored.details["new"]["spec.symbols"] == ["X"]


def test_audit_record_has_the_spec_schema_fields() -> None:
    record = event().audit_record()
    assert set(record) == {
        "timestamp",
        "event_type",
        "severity",
        "source",
        "namespace",
        "target",
        "action",
        "details",
        "user_id",
        "dedup_key",
    }
    assert record["user_id"] == "alice" and record["dedup_key"] == "uid-1/42/0"


def test_kube_event_names_are_deterministic_per_event() -> None:
    assert kube_event_name(BOT, event()) == kube_event_name(BOT, event())
    other = AuditEvent.from_outbox({**event().to_outbox(), "dedup_key": "uid-1/42/1"})
    assert kube_event_name(BOT, other) != kube_event_name(BOT, event())
    body = kube_event_body(event(), BOT, "host")
    assert body["type"] == "Normal" and "(by alice via kubectl)" in body["message"]


def test_delivery_reports_failure_of_a_durable_sink_but_not_of_a_best_effort_one() -> None:
    seen: list[str] = []

    async def ok(events: Sequence[AuditEvent], involved: InvolvedObject) -> None:
        seen.extend(e.dedup_key or "" for e in events)

    async def broken(events: Sequence[AuditEvent], involved: InvolvedObject) -> None:
        raise OSError("down")

    errors: list[str] = []
    assert asyncio.run(AuditRecorder([ok], [broken]).deliver([event()], BOT)) is True
    failing = AuditRecorder([broken], [ok], on_error=lambda e, kind: errors.append(kind))
    assert asyncio.run(failing.deliver([event()], BOT)) is False
    assert errors == ["OSError"]
    assert seen == ["uid-1/42/0", "uid-1/42/0"]
