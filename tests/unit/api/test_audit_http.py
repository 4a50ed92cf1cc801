"""The audit HTTP client's pure parts: how events are split into requests, what a refusal says."""

from __future__ import annotations

import json
import math

import pytest

from tradingbot_api.audit_http import (
    MAX_BODY_BYTES,
    MAX_EVENTS_PER_REQUEST,
    AuditDeliveryError,
    chunks,
    problem_text,
    request_body,
)


def event(i: int, size: int = 10) -> dict[str, object]:
    return {"event_type": "trade", "dedup_key": f"k{i}", "details": {"blob": "x" * size}}


@pytest.mark.parametrize(
    ("count", "size", "requests"),
    [
        (0, 10, 0),
        (1, 10, 1),
        (MAX_EVENTS_PER_REQUEST, 10, 1),
        (MAX_EVENTS_PER_REQUEST + 1, 10, 2),
        (4, MAX_BODY_BYTES // 3, 2),  # two per request by bytes, well under the count limit
    ],
)
def test_requests_stay_within_the_sidecars_limits(count: int, size: int, requests: int) -> None:
    found = chunks([event(i, size) for i in range(count)])
    assert len(found) == requests
    assert sum(len(c) for c in found) == count
    for encoded in found:
        body = request_body(encoded)
        assert len(encoded) <= MAX_EVENTS_PER_REQUEST and len(body) <= MAX_BODY_BYTES
        assert [e["dedup_key"] for e in json.loads(body)["events"]] == [
            json.loads(e)["dedup_key"] for e in encoded
        ]


def test_an_event_that_cannot_fit_or_is_not_json_is_refused_before_sending() -> None:
    with pytest.raises(AuditDeliveryError) as too_big:
        chunks([event(0), event(1, MAX_BODY_BYTES)])
    assert too_big.value.status == 413 and not too_big.value.retryable
    assert "events[1]" in str(too_big.value)
    with pytest.raises(AuditDeliveryError) as not_json:
        chunks([{"details": {"price": math.nan}}])
    assert not_json.value.status == 400 and not not_json.value.retryable


@pytest.mark.parametrize(
    ("status", "retryable"), [(None, True), (500, True), (503, True), (429, True), (400, False)]
)
def test_retryable_follows_the_status(status: int | None, retryable: bool) -> None:
    assert AuditDeliveryError("x", status).retryable is retryable


@pytest.mark.parametrize(
    ("status", "raw", "said"),
    [
        (400, b'{"error": "events[0].severity: unknown"}', "events[0].severity: unknown"),
        (502, b"<html>\n bad   gateway </html>", "<html> bad gateway </html>"),
        (503, b"", "HTTP 503"),
        (400, b'{"error": ""}', '{"error": ""}'),
    ],
)
def test_the_problem_is_one_short_line(status: int, raw: bytes, said: str) -> None:
    try:
        payload = json.loads(raw)
    except ValueError:
        payload = None
    assert problem_text(status, payload, raw) == said
    assert len(problem_text(status, None, b"y" * 5000)) == 300
