"""Block readers: forward and backward, torn tails, lines longer than a block."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tradingbot_audit import files
from tradingbot_audit.files import (
    Block,
    complete_size,
    iter_blocks,
    iter_blocks_reverse,
    iter_lines_reverse,
    read_line_at,
)
from tradingbot_audit.reader import candidate_lines


@pytest.fixture(autouse=True)
def tiny_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    # Blocks far smaller than a line exercise every carry-over path with little data.
    monkeypatch.setattr(files, "FIRST_BLOCK_SIZE", 7)
    monkeypatch.setattr(files, "READ_BLOCK_SIZE", 32)


def sample_lines(count: int, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    return [f"line-{i}-".encode() + b"x" * rng.randint(0, 90) for i in range(count)]


@pytest.mark.parametrize(
    "tail",
    [
        pytest.param(b"", id="a file of whole lines"),
        pytest.param(b"torn-without-newline", id="a file ending in a torn line"),
    ],
)
def test_reading_backwards_yields_every_whole_line_newest_first_with_its_offset(
    tmp_path: Path, tail: bytes
) -> None:
    lines = sample_lines(60)
    path = tmp_path / "f"
    path.write_bytes(b"".join(line + b"\n" for line in lines) + tail)
    got = list(iter_lines_reverse(path))
    assert [line for _offset, line in got] == lines[::-1]
    for offset, line in got:
        assert read_line_at(path, offset) == line


@pytest.mark.parametrize(
    "reader",
    [
        pytest.param(iter_blocks, id="forwards"),
        pytest.param(iter_blocks_reverse, id="backwards"),
    ],
)
def test_blocks_are_whole_lines_that_cover_the_file_up_to_its_last_newline(
    tmp_path: Path, reader: Callable[..., Iterator[Block]]
) -> None:
    lines = sample_lines(40, seed=2)
    data = b"".join(line + b"\n" for line in lines)
    path = tmp_path / "f"
    path.write_bytes(data + b"partial")
    pieces = []
    for block in reader(path):
        whole = block.data[block.start : block.stop]
        assert whole.endswith(b"\n")
        assert data[block.offset + block.start : block.offset + block.stop] == whole
        assert block.lines() == whole[:-1].split(b"\n")
        pieces.append((block.offset + block.start, whole))
    assert b"".join(whole for _offset, whole in sorted(pieces)) == data


def test_a_line_longer_than_any_read_is_still_read_whole(tmp_path: Path) -> None:
    lines = [b"short", b"L" * 500, b"tail"]
    path = tmp_path / "f"
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    assert [line for _o, line in iter_lines_reverse(path)] == lines[::-1]
    assert [line for block in iter_blocks(path) for line in block.lines()] == lines


def test_a_size_bound_hides_what_was_appended_after_it(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"a\nb\n")
    size = path.stat().st_size
    with path.open("ab") as handle:
        handle.write(b"c\n")
    assert [line for _o, line in iter_lines_reverse(path, end=size)] == [b"b", b"a"]
    assert [line for block in iter_blocks(path, end=size) for line in block.lines()] == [
        b"a",
        b"b",
    ]


@pytest.mark.parametrize(
    ("data", "size"),
    [
        pytest.param(b"", 0, id="an empty file has no whole line"),
        pytest.param(b"no newline", 0, id="a single torn line has no whole line"),
        pytest.param(b"a\nbc", 2, id="a torn tail is left out"),
        pytest.param(b"a\nbc\n", 5, id="a file of whole lines is whole"),
    ],
)
def test_complete_size_ends_at_the_last_newline(tmp_path: Path, data: bytes, size: int) -> None:
    path = tmp_path / "f"
    path.write_bytes(data)
    assert complete_size(path) == size


def test_candidate_lines_finds_each_line_containing_a_needle_once_in_order() -> None:
    block = b'{"t":"a"}\n{"t":"b"}\n{"t":"a","u":"a"}\n{"t":"c"}\n'
    assert candidate_lines(block, (b'"a"',)) == [b'{"t":"a"}', b'{"t":"a","u":"a"}']
    assert candidate_lines(block, (b'"c"', b'"b"')) == [b'{"t":"b"}', b'{"t":"c"}']
    assert candidate_lines(block, (b'"z"',)) == []


def test_candidate_lines_stays_within_the_given_range() -> None:
    data = b'{"t":"a"}\n{"t":"b"}\n{"t":"a"}\n'
    assert candidate_lines(data, (b'"a"',), start=10, stop=30) == [b'{"t":"a"}']
    assert candidate_lines(data, (b'"a"',), start=10, stop=20) == []
