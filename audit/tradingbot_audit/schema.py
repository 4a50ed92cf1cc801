"""The audit event schema (SPEC §6): validation, normalisation and secret redaction.

Everything here is pure: it takes data and returns data, so the writer, the CLI and the
tests share one definition of what a valid audit record is.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

from tradingbot_api.constants import EventType, Severity
from tradingbot_api.times import NoOffsetError, micro_time, parse_zoned

# A stored record is a plain JSON object; this alias documents intent without forcing callers
# to build a class for every event.
Record = dict[str, Any]

SEVERITIES: Final = tuple(str(s) for s in Severity)

# The event types and sources the operator and the bots emit today. The schema keeps both open
# ("…" in SPEC §6): a new component may add its own without a schema change, as long as the
# name has the same shape (see NAME_PATTERN).
KNOWN_EVENT_TYPES: Final = tuple(str(t) for t in EventType)
KNOWN_SOURCES: Final = ("kubectl", "gitops", "plugin", "operator", "bot", "webhook")

# Fields a caller may supply. `seq`, `prev_hash` and `hash` belong to the writer alone.
INPUT_FIELDS: Final = (
    "timestamp",
    "event_type",
    "severity",
    "source",
    "target",
    "action",
    "details",
    "user_id",
    "namespace",
    "dedup_key",
)
CHAIN_FIELDS: Final = ("seq", "prev_hash", "hash")
RECORD_FIELDS: Final = INPUT_FIELDS + CHAIN_FIELDS

# Lower-case identifiers such as `config_change` or `rate_limited`; dots and dashes allow
# namespaced names (`bot.fill`) without opening the door to free text in a label value.
NAME_PATTERN: Final = re.compile(r"^[a-z][a-z0-9_.-]{0,62}$")

MAX_TEXT_LENGTH: Final = 512
MAX_DEDUP_KEY_LENGTH: Final = 256

REDACTED: Final = "***"

# Substrings of a normalised key (lower case, no `_`, `-`, `.` or spaces) that mark a secret.
SECRET_KEY_WORDS: Final = (
    "apikey",
    "apisecret",
    "secret",
    "password",
    "passwd",
    "passphrase",
    "token",
    "privatekey",
    "accesskey",
    "authorization",
    "credential",
    "cookie",
    "sessionid",
    "signature",
)
# Keys that name a secret rather than hold one (`credentialsSecretRef`, `secretName`): the
# audit must keep them, because "which Secret did this bot switch to" is exactly what an
# investigator needs to see.
SECRET_REFERENCE_SUFFIXES: Final = ("ref", "refs", "secretname", "refname")

TIMESTAMP_FORMAT: Final = "%Y-%m-%dT%H:%M:%S.%fZ"


class AuditSchemaError(ValueError):
    """An event does not match the audit schema; the message names the field."""


def format_timestamp(moment: datetime) -> str:
    """Render an aware datetime in the one fixed-width UTC form the log stores.

    A fixed width (microseconds, `Z`) makes timestamps compare correctly as strings, which
    the query path relies on to filter without parsing every line.
    """
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise AuditSchemaError(
            f"timestamp {moment.isoformat()!r} has no UTC offset; audit times must be "
            "timezone-aware"
        )
    return micro_time(moment)  # the same text as TIMESTAMP_FORMAT


def parse_timestamp(value: str) -> datetime:
    """Parse an ISO 8601 timestamp with an offset (`Z` or `+hh:mm`) into an aware datetime."""
    try:
        return parse_zoned(value)
    except NoOffsetError:
        raise AuditSchemaError(
            f"timestamp {value!r} has no UTC offset; write it as e.g. 2025-01-02T03:04:05Z"
        ) from None
    except ValueError as exc:
        raise AuditSchemaError(f"timestamp {value!r} is not ISO 8601") from exc


def normalize_timestamp(value: object) -> str:
    """Accept an ISO string or an aware datetime; return the stored UTC form."""
    if isinstance(value, datetime):
        return format_timestamp(value)
    if isinstance(value, str):
        return format_timestamp(parse_timestamp(value))
    raise AuditSchemaError(f"timestamp must be an ISO 8601 string, got {type(value).__name__}")


_KEY_SEPARATORS: Final = str.maketrans("", "", " _.-\t")
_SECRET_WORD: Final = re.compile("|".join(SECRET_KEY_WORDS))


def normalize_key(key: str) -> str:
    return key.translate(_KEY_SEPARATORS).lower()


@functools.lru_cache(maxsize=4096)
def is_secret_key(key: str) -> bool:
    """True when a details key looks like it holds a credential (apiKey, password, token...).

    Cached: details keys repeat endlessly (symbol, side, qty), so this costs a dict lookup.
    """
    norm = normalize_key(key)
    if norm.endswith(SECRET_REFERENCE_SUFFIXES):
        return False
    return _SECRET_WORD.search(norm) is not None


def is_secret_value(value: str) -> bool:
    """True for values that are credentials whatever their key: PEM keys, bearer tokens."""
    if "PRIVATE KEY-----" in value:
        return True
    head = value[:64].lstrip()
    return head[:7].lower() == "bearer " and bool(head[7:].strip())


def redact_secrets(value: Any) -> Any:
    """Return a copy of `value` with every secret-looking key's value replaced by "***".

    Recurses through dicts and lists so a secret nested in an old/new config diff is caught
    too. The original object is never modified: callers keep their data.
    """
    if isinstance(value, Mapping):
        return {
            key: REDACTED if isinstance(key, str) and is_secret_key(key) else redact_secrets(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact_secrets(item) for item in value]
    if isinstance(value, str) and is_secret_value(value):
        return REDACTED
    return value


def clean_details(value: Any, path: str = "details") -> Any:
    """Redact secrets and reject what canonical JSON cannot represent exactly, in one pass.

    The hash is computed over canonical JSON, so a value that JSON would silently coerce
    (an int dict key, NaN, a Decimal) would make the stored record differ from what the
    caller passed. Failing loudly, with the path, is kinder than a surprising log line.
    Secrets are redacted before they are checked: a credential is never echoed in an error.
    """
    if isinstance(value, str):
        return REDACTED if is_secret_value(value) else value
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise AuditSchemaError(f"{path} is {value!r}; JSON has no NaN or infinity")
        return value
    if isinstance(value, Mapping):
        result = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise AuditSchemaError(
                    f"{path} has a non-string key {key!r}; JSON object keys are strings"
                )
            result[key] = REDACTED if is_secret_key(key) else clean_details(item, f"{path}.{key}")
        return result
    if isinstance(value, list | tuple):
        return [clean_details(item, f"{path}[{index}]") for index, item in enumerate(value)]
    raise AuditSchemaError(
        f"{path} has type {type(value).__name__}, which is not JSON; convert it first "
        "(e.g. Decimal to str, datetime to an ISO string)"
    )


def _name(event: Mapping[str, Any], field: str, *, default: str | None = None) -> str:
    value = event.get(field, default)
    if value is None:
        raise AuditSchemaError(f"{field} is required")
    if not isinstance(value, str) or not NAME_PATTERN.match(value):
        raise AuditSchemaError(
            f"{field} {value!r} is not a valid name: use lower case letters, digits and _ "
            f"(for example {KNOWN_EVENT_TYPES[0]!r})"
        )
    return value


def _optional_text(event: Mapping[str, Any], field: str, max_length: int) -> str | None:
    value = event.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        raise AuditSchemaError(f"{field} must be a string or null, got {type(value).__name__}")
    if not value:
        # Empty and absent must not be two different things in counts and filters.
        raise AuditSchemaError(f"{field} must not be empty; omit it or use null instead")
    if len(value) > max_length:
        raise AuditSchemaError(f"{field} is longer than {max_length} characters")
    return value


def normalize_event(event: Mapping[str, Any], now: datetime) -> Record:
    """Validate a caller's event and return the record body the writer will chain.

    Fills `timestamp` from `now` when absent and `severity` with "info"; every field of the
    schema is present in the result (null when absent) so every stored line has one shape.
    Raises AuditSchemaError (a ValueError) naming the offending field.
    """
    if not isinstance(event, Mapping):
        raise AuditSchemaError(f"an audit event must be a JSON object, got {type(event).__name__}")
    writer_owned = sorted(set(event) & set(CHAIN_FIELDS))
    if writer_owned:
        raise AuditSchemaError(
            f"{', '.join(writer_owned)} are assigned by the audit writer; remove them from the "
            "event"
        )
    unknown = sorted(str(key) for key in set(event) - set(INPUT_FIELDS))
    if unknown:
        raise AuditSchemaError(
            f"unknown field(s) {', '.join(unknown)}; allowed fields are {', '.join(INPUT_FIELDS)} "
            "(put anything else under details)"
        )

    severity = event.get("severity", "info")
    if severity not in SEVERITIES:
        raise AuditSchemaError(f"severity {severity!r} is not one of {', '.join(SEVERITIES)}")

    action = event.get("action")
    if not isinstance(action, str) or not action:
        raise AuditSchemaError("action is required and must be a non-empty string")
    if len(action) > MAX_TEXT_LENGTH:
        raise AuditSchemaError(f"action is longer than {MAX_TEXT_LENGTH} characters")

    details = event.get("details")
    if details is None:
        details = {}
    if not isinstance(details, Mapping):
        raise AuditSchemaError(f"details must be an object, got {type(details).__name__}")

    timestamp = event.get("timestamp")
    return {
        "timestamp": format_timestamp(now) if timestamp is None else normalize_timestamp(timestamp),
        "event_type": _name(event, "event_type"),
        "severity": severity,
        "source": _name(event, "source"),
        "target": _optional_text(event, "target", MAX_TEXT_LENGTH),
        "action": action,
        "details": clean_details(details),
        "user_id": _optional_text(event, "user_id", MAX_TEXT_LENGTH),
        "namespace": _optional_text(event, "namespace", MAX_TEXT_LENGTH),
        "dedup_key": _optional_text(event, "dedup_key", MAX_DEDUP_KEY_LENGTH),
    }
