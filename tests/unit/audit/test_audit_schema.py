"""The audit schema: validation, defaults, timestamps and secret redaction."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from tradingbot_audit.schema import (
    INPUT_FIELDS,
    REDACTED,
    AuditSchemaError,
    is_secret_key,
    normalize_event,
    redact_secrets,
)

NOW = datetime(2025, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)


def valid(**overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_type": "config_change",
        "severity": "warning",
        "source": "kubectl",
        "target": "meme",
        "action": "spec_updated",
        "details": {"changedFields": ["spec.risk.stopLossPct"]},
        "user_id": "alice@example.com",
        "namespace": "trading",
    }
    event.update(overrides)
    return event


def without(field: str) -> dict[str, Any]:
    event = valid()
    del event[field]
    return event


@pytest.mark.parametrize(
    ("event", "message"),
    [
        pytest.param(
            valid(severity="fatal"),
            "severity 'fatal' is not one of info, warning, critical",
            id="an unknown severity is rejected and the allowed values are listed",
        ),
        pytest.param(
            without("event_type"), "event_type is required", id="a missing event type is rejected"
        ),
        pytest.param(
            valid(event_type="Config Change"),
            "event_type 'Config Change' is not a valid name",
            id="an event type with spaces and capitals is rejected",
        ),
        pytest.param(without("source"), "source is required", id="a missing source is rejected"),
        pytest.param(valid(action=""), "action is required", id="an empty action is rejected"),
        pytest.param(
            valid(details=["x"]),
            "details must be an object",
            id="details that are not an object are rejected",
        ),
        pytest.param(
            valid(seq=5),
            "seq are assigned by the audit writer",
            id="a caller cannot choose the seq",
        ),
        pytest.param(
            valid(hash="ab"),
            "hash are assigned by the audit writer",
            id="a caller cannot choose the hash",
        ),
        pytest.param(
            valid(evnt_type="x"),
            "unknown field(s) evnt_type",
            id="a misspelt field is rejected rather than silently kept",
        ),
        pytest.param(
            valid(target=""),
            "target must not be empty",
            id="an empty target is rejected so that empty and absent stay one thing",
        ),
        pytest.param(
            valid(user_id=42),
            "user_id must be a string or null",
            id="a user id that is not a string is rejected",
        ),
        pytest.param(
            valid(timestamp="yesterday"),
            "timestamp 'yesterday' is not ISO 8601",
            id="a timestamp that is not ISO 8601 is rejected",
        ),
        pytest.param(
            valid(timestamp="2025-01-01T00:00:00"),
            "has no UTC offset",
            id="a timestamp without an offset is rejected as ambiguous",
        ),
        pytest.param(
            valid(details={"pnl": math.nan}),
            "details.pnl is nan",
            id="NaN in details is rejected because JSON cannot carry it",
        ),
        pytest.param(
            valid(details={"pnl": Decimal("1.5")}),
            "details.pnl has type Decimal",
            id="a Decimal in details is rejected with a hint to convert it",
        ),
        pytest.param(
            valid(details={"a": {1: "x"}}),
            "details.a has a non-string key 1",
            id="a non-string key deep in details is rejected with its path",
        ),
        pytest.param(
            valid(dedup_key="k" * 300),
            "dedup_key is longer than 256",
            id="an overlong dedup key is rejected",
        ),
    ],
)
def test_invalid_events_are_rejected_with_a_message_naming_the_field(
    event: dict[str, Any], message: str
) -> None:
    with pytest.raises(AuditSchemaError) as raised:
        normalize_event(event, NOW)
    assert message in str(raised.value)


def test_schema_errors_are_value_errors_so_callers_can_catch_either() -> None:
    with pytest.raises(ValueError, match="severity"):
        normalize_event(valid(severity="loud"), NOW)


def test_a_valid_event_keeps_its_fields_and_gets_every_schema_field() -> None:
    record = normalize_event(valid(), NOW)
    assert set(record) == set(INPUT_FIELDS)
    assert record["event_type"] == "config_change"
    assert record["severity"] == "warning"
    assert record["dedup_key"] is None


def test_a_missing_timestamp_is_filled_from_the_clock_in_utc() -> None:
    assert normalize_event(valid(), NOW)["timestamp"] == "2025-03-04T05:06:07.890123Z"


def test_a_missing_severity_defaults_to_info() -> None:
    assert normalize_event(without("severity"), NOW)["severity"] == "info"


def test_optional_fields_default_to_null() -> None:
    event = {"event_type": "halt", "source": "plugin", "action": "halt"}
    record = normalize_event(event, NOW)
    assert (record["target"], record["user_id"], record["namespace"]) == (None, None, None)
    assert record["details"] == {}


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        pytest.param(
            "2025-01-02T03:04:05Z",
            "2025-01-02T03:04:05.000000Z",
            id="a Z timestamp is stored with microseconds",
        ),
        pytest.param(
            "2025-01-02T05:04:05+02:00",
            "2025-01-02T03:04:05.000000Z",
            id="an offset timestamp is converted to UTC",
        ),
        pytest.param(
            datetime(2025, 1, 2, 3, 4, 5, 6, tzinfo=timezone(timedelta(hours=-5))),
            "2025-01-02T08:04:05.000006Z",
            id="an aware datetime is accepted",
        ),
    ],
)
def test_timestamps_are_stored_in_one_fixed_width_utc_form(given: Any, stored: str) -> None:
    assert normalize_event(valid(timestamp=given), NOW)["timestamp"] == stored


def test_unknown_event_types_and_sources_of_the_right_shape_are_accepted() -> None:
    record = normalize_event(valid(event_type="backtest_started", source="scheduler"), NOW)
    assert (record["event_type"], record["source"]) == ("backtest_started", "scheduler")


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        pytest.param("apiKey", True, id="apiKey is a secret"),
        pytest.param("api_key", True, id="api_key is a secret"),
        pytest.param("secret", True, id="secret is a secret"),
        pytest.param("exchangeSecret", True, id="a key ending in Secret is a secret"),
        pytest.param("password", True, id="password is a secret"),
        pytest.param("DB_PASSWORD", True, id="an upper case password key is a secret"),
        pytest.param("token", True, id="token is a secret"),
        pytest.param("refresh-token", True, id="a dashed token key is a secret"),
        pytest.param("privateKey", True, id="privateKey is a secret"),
        pytest.param("passphrase", True, id="passphrase is a secret"),
        pytest.param("Authorization", True, id="an Authorization header is a secret"),
        pytest.param("credentials", True, id="a credentials block is a secret"),
        pytest.param("credentialsSecretRef", False, id="a reference to a Secret is kept"),
        pytest.param("secretName", False, id="the name of a Secret is kept"),
        pytest.param("symbol", False, id="an ordinary key is kept"),
        pytest.param("changedFields", False, id="changedFields is kept"),
    ],
)
def test_secret_keys_are_recognised_by_name(key: str, secret: bool) -> None:
    assert is_secret_key(key) is secret


def test_secrets_are_redacted_recursively_through_dicts_and_lists() -> None:
    details = {
        "old": {"exchange": {"apiKey": "AKIA123", "id": "binance"}},
        "new": {"exchange": {"apiKey": "AKIA456", "credentialsSecretRef": {"name": "keys"}}},
        "attempts": [{"token": "t0"}, {"ok": True}],
        "header": "Bearer abc.def",
        "pem": "-----BEGIN EC PRIVATE KEY-----\nMHc...",
    }
    assert redact_secrets(details) == {
        "old": {"exchange": {"apiKey": REDACTED, "id": "binance"}},
        "new": {"exchange": {"apiKey": REDACTED, "credentialsSecretRef": {"name": "keys"}}},
        "attempts": [{"token": REDACTED}, {"ok": True}],
        "header": REDACTED,
        "pem": REDACTED,
    }


def test_a_whole_secret_block_is_redacted_not_only_its_leaves() -> None:
    assert redact_secrets({"credentials": {"apiKey": "a", "secret": "b"}}) == {
        "credentials": REDACTED
    }


def test_redaction_does_not_modify_the_callers_event() -> None:
    event = valid(details={"password": "hunter2"})
    record = normalize_event(event, NOW)
    assert record["details"] == {"password": REDACTED}
    assert event["details"] == {"password": "hunter2"}


def test_a_secret_is_redacted_even_when_its_value_is_not_json() -> None:
    record = normalize_event(valid(details={"privateKey": b"\x00raw key bytes"}), NOW)
    assert record["details"] == {"privateKey": REDACTED}
