"""Timestamps, in one place for every program: RFC 3339 in UTC with a `Z`, as Kubernetes
writes them (Time: whole seconds; MicroTime: six fractional digits) and as the bot's state
and logs carry them (milliseconds)."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> datetime:
    return datetime.now(UTC)


def parse_time(value: str | datetime | None) -> datetime | None:
    """An aware datetime (no offset means UTC); None for None or ""; ValueError for text that
    is no ISO 8601 time."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def parse_time_or_none(value: object) -> datetime | None:
    """`parse_time` for values read from objects anyone may write: None for anything that is
    not a readable time."""
    if not isinstance(value, str | datetime):
        return None
    try:
        return parse_time(value)
    except ValueError:
        return None


class NoOffsetError(ValueError):
    """An ISO 8601 time without `Z` or `+hh:mm`, where one is required."""


def parse_zoned(text: str) -> datetime:
    """A time that must state its offset (`Z` or `+hh:mm`), in UTC; NoOffsetError without
    one, ValueError for text that is no ISO 8601 time."""
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise NoOffsetError(f"{text!r} has no UTC offset")
    return parsed.astimezone(UTC)


def kube_time(moment: datetime) -> str:
    """Kubernetes Time: whole seconds."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_time(moment: datetime | None = None) -> str:
    """Kubernetes MicroTime (Lease renewTime/acquireTime, the audit log): exactly six
    fractional digits, so such times also compare correctly as strings."""
    moment = moment or utc_now()
    # isoformat with a fixed timespec is the same text as strftime's %f, and faster.
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def format_time(moment: datetime) -> str:
    """Whole seconds when the time has no fraction, else MicroTime."""
    return micro_time(moment) if moment.microsecond else kube_time(moment)


def milli_time(moment: datetime) -> str:
    """Milliseconds: the bot's state, fills and log times."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def utc_now_iso() -> str:
    return milli_time(utc_now())
