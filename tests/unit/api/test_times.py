"""The shared timestamp formats and parsers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from tradingbot_api.times import (
    format_time,
    kube_time,
    micro_time,
    milli_time,
    parse_time,
    parse_time_or_none,
    parse_zoned,
)

WHOLE = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
FRACTION = WHOLE.replace(microsecond=123456)
PLUS_TWO = timezone(timedelta(hours=2))


@pytest.mark.parametrize(
    ("moment", "kube", "micro", "milli", "auto"),
    [
        (
            WHOLE,
            "2026-03-04T05:06:07Z",
            "2026-03-04T05:06:07.000000Z",
            "2026-03-04T05:06:07.000Z",
            "2026-03-04T05:06:07Z",
        ),
        (
            FRACTION,
            "2026-03-04T05:06:07Z",
            "2026-03-04T05:06:07.123456Z",
            "2026-03-04T05:06:07.123Z",
            "2026-03-04T05:06:07.123456Z",
        ),
        (
            FRACTION.astimezone(PLUS_TWO),
            "2026-03-04T05:06:07Z",
            "2026-03-04T05:06:07.123456Z",
            "2026-03-04T05:06:07.123Z",
            "2026-03-04T05:06:07.123456Z",
        ),
    ],
)
def test_formats_are_utc_with_z(
    moment: datetime, kube: str, micro: str, milli: str, auto: str
) -> None:
    assert kube_time(moment) == kube
    assert micro_time(moment) == micro
    assert milli_time(moment) == milli
    assert format_time(moment) == auto
    assert micro_time(moment) == moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-03-04T05:06:07Z", WHOLE),
        ("2026-03-04T05:06:07.123456Z", FRACTION),
        ("2026-03-04T07:06:07+02:00", WHOLE),
        ("2026-03-04T05:06:07", WHOLE),  # no offset: UTC
        (WHOLE.replace(tzinfo=None), WHOLE),
        (None, None),
        ("", None),
    ],
)
def test_parse_time(text: str | datetime | None, expected: datetime | None) -> None:
    assert parse_time(text) == expected
    assert parse_time_or_none(text) == expected


@pytest.mark.parametrize("junk", ["yesterday", "2026-13-01T00:00:00Z", 5, [], {}])
def test_junk_raises_or_is_none(junk: object) -> None:
    assert parse_time_or_none(junk) is None
    if isinstance(junk, str):
        with pytest.raises(ValueError):
            parse_time(junk)


def test_round_trip() -> None:
    for moment in (WHOLE, FRACTION):
        assert parse_time(format_time(moment)) == moment
        assert parse_time(micro_time(moment)) == moment


def test_zoned_times_must_say_their_offset() -> None:
    assert parse_zoned("2026-03-04T07:06:07+02:00") == WHOLE
    assert parse_zoned("2026-03-04T05:06:07Z").tzinfo == UTC
    with pytest.raises(ValueError, match="no UTC offset"):
        parse_zoned("2026-03-04T05:06:07")
    with pytest.raises(ValueError):
        parse_zoned("soon")
