"""Canonical encoding and line hashing."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tradingbot_audit.chain import (
    GENESIS_HASH,
    canonical_json,
    compute_hash,
    encode_line,
    line_hash_ok,
    parse_line,
    split_hash,
    std_parse_line,
)


def body(**overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "timestamp": "2025-01-01T00:00:00.000000Z",
        "event_type": "trade",
        "severity": "info",
        "source": "bot",
        "target": "meme",
        "action": "fill",
        "details": {"symbol": "DOGE/USDT", "qty": 10.5, "note": "ünïcode ✓"},
        "user_id": None,
        "namespace": "trading",
        "dedup_key": "meme:fill:1",
        "seq": 1,
        "prev_hash": GENESIS_HASH,
    }
    record.update(overrides)
    return record


def test_canonical_json_sorts_keys_and_has_no_spaces() -> None:
    assert (
        canonical_json({"b": 1, "a": {"d": [1, 2], "c": None}})
        == b'{"a":{"c":null,"d":[1,2]},"b":1}'
    )


def test_canonical_json_keeps_unicode_as_utf8() -> None:
    assert canonical_json({"x": "é"}) == '{"x":"é"}'.encode()


def test_canonical_json_refuses_nan() -> None:
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


def test_the_genesis_hash_is_64_zeros() -> None:
    assert GENESIS_HASH == "0" * 64


def test_a_line_is_the_canonical_record_with_its_hash_as_the_last_field() -> None:
    line, digest = encode_line(body())
    assert line.endswith(f',"hash":"{digest}"}}\n'.encode())
    assert json.loads(line)["hash"] == digest


def test_the_line_hash_equals_the_hash_of_the_parsed_record_without_hash() -> None:
    # What an independent tool would do: parse, drop hash, re-encode canonically, hash.
    line, digest = encode_line(body())
    assert compute_hash(json.loads(line)) == digest


def test_split_hash_returns_exactly_the_hashed_bytes() -> None:
    line, digest = encode_line(body())
    parts = split_hash(line.rstrip(b"\n"))
    assert parts == (canonical_json(body()), digest)


@pytest.mark.parametrize(
    ("mangle", "ok"),
    [
        pytest.param(lambda line: line, True, id="an untouched line passes"),
        pytest.param(
            lambda line: line.replace(b"DOGE", b"D0GE"), False, id="a changed character fails"
        ),
        pytest.param(
            lambda line: line.replace(b'"qty":10.5', b'"qty":10.50'),
            False,
            id="an equivalent but different spelling fails",
        ),
        pytest.param(lambda line: line[:-3] + b'x"}', False, id="a changed hash fails"),
        pytest.param(lambda line: line[:-2], False, id="a line cut short fails"),
        pytest.param(lambda line: b"not json", False, id="garbage fails"),
    ],
)
def test_line_hash_ok_detects_any_change(mangle: Any, ok: bool) -> None:
    line, _digest = encode_line(body())
    assert line_hash_ok(mangle(line.rstrip(b"\n"))) is ok


def test_encode_line_refuses_a_record_that_already_has_a_hash() -> None:
    with pytest.raises(ValueError):
        encode_line(body(hash="x"))


def test_the_fast_line_parser_reads_lines_exactly_like_the_standard_library() -> None:
    line, _digest = encode_line(body(details={"f": 0.1 + 0.2, "big": 2**53, "s": "é\u2028\\"}))
    assert parse_line(line) == std_parse_line(line) == json.loads(line)
