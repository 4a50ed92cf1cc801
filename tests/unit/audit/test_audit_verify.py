"""verify: every kind of tampering is found, at the first bad line, with the reason."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tradingbot_audit import AuditWriter, verify_lines, verify_log
from tradingbot_audit.chain import GENESIS, ChainState, encode_line
from tradingbot_audit.files import ANCHOR_NAME, list_log_files

Filler = Callable[..., None]
WriterFactory = Callable[..., AuditWriter]


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def write_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(lines))


def seq_of(line: bytes) -> int:
    return int(json.loads(line)["seq"])


@pytest.fixture
def rotated_log(log_dir: Path, writer_factory: WriterFactory, fill: Filler) -> list[Path]:
    """A log of 300 events spread over several files (closed ones have an index)."""
    writer = writer_factory(max_file_bytes=20_000)
    fill(writer, 300)
    writer.close()
    files = [log_file.path for log_file in list_log_files(log_dir)]
    assert len(files) >= 4, "the tamper cases need several rotated files"
    assert verify_log(log_dir).ok
    return files


# A tamper case changes the log and returns (file, line, reason prefix) of the expected report.
Tamper = Callable[[list[Path]], tuple[Path, int, str]]


def change_one_byte(files: list[Path]) -> tuple[Path, int, str]:
    lines = lines_of(files[1])
    lines[4] = lines[4].replace(b'"i":', b'"j":', 1)
    write_lines(files[1], lines)
    return files[1], 5, "hash mismatch"


def change_one_byte_of_the_hash(files: list[Path]) -> tuple[Path, int, str]:
    lines = lines_of(files[1])
    digit = lines[4][-4:-3]
    lines[4] = lines[4][:-4] + (b"0" if digit != b"0" else b"1") + lines[4][-3:]
    write_lines(files[1], lines)
    return files[1], 5, "hash mismatch"


def delete_a_line(files: list[Path]) -> tuple[Path, int, str]:
    lines = lines_of(files[1])
    del lines[4]
    write_lines(files[1], lines)
    return files[1], 5, "seq gap"


def insert_a_copy_of_a_line(files: list[Path]) -> tuple[Path, int, str]:
    lines = lines_of(files[1])
    lines.insert(5, lines[2])
    write_lines(files[1], lines)
    return files[1], 6, "seq out of order"


def insert_a_forged_line_with_a_valid_hash(files: list[Path]) -> tuple[Path, int, str]:
    # The forger knows the format: right seq, right prev_hash, correct own hash. The chain
    # still breaks at the genuine line that follows, whose seq is now taken.
    lines = lines_of(files[1])
    previous = json.loads(lines[4])
    forged = {k: v for k, v in previous.items() if k != "hash"}
    forged.update(seq=previous["seq"] + 1, prev_hash=previous["hash"], action="forged")
    line, _digest = encode_line(forged)
    lines.insert(5, line)
    write_lines(files[1], lines)
    return files[1], 7, "seq out of order"


def edit_a_line_and_recompute_its_hash(files: list[Path]) -> tuple[Path, int, str]:
    lines = lines_of(files[1])
    record = json.loads(lines[4])
    record.pop("hash")
    record["severity"] = "critical"
    lines[4], _digest = encode_line(record)
    write_lines(files[1], lines)
    return files[1], 6, "prev_hash mismatch"


def swap_two_lines(files: list[Path]) -> tuple[Path, int, str]:
    lines = lines_of(files[1])
    lines[4], lines[5] = lines[5], lines[4]
    write_lines(files[1], lines)
    return files[1], 5, "seq gap"


def remove_a_file_from_the_middle(files: list[Path]) -> tuple[Path, int, str]:
    files[2].unlink()
    files[2].with_name(files[2].name.replace(".jsonl", ".idx.json")).unlink()
    return files[3], 1, "seq gap"


def remove_the_oldest_file_without_an_anchor(files: list[Path]) -> tuple[Path, int, str]:
    files[0].unlink()
    return files[1], 1, "seq gap"


def truncate_a_closed_file_mid_line(files: list[Path]) -> tuple[Path, int, str]:
    data = files[1].read_bytes()
    cut = data.rfind(b"\n", 0, len(data) - 1) + 40
    files[1].write_bytes(data[:cut])
    return files[1], len(lines_of(files[1])), "incomplete line"


def truncate_a_closed_file_at_a_line_boundary(files: list[Path]) -> tuple[Path, int, str]:
    # Whole lines gone from the end of a rotated file: its index still knows the real size.
    lines = lines_of(files[1])
    write_lines(files[1], lines[:-3])
    return files[1], len(lines) - 3, "the sidecar index"


def truncate_a_closed_file_and_delete_its_index(files: list[Path]) -> tuple[Path, int, str]:
    lines = lines_of(files[1])
    write_lines(files[1], lines[:-3])
    files[1].with_name(files[1].name.replace(".jsonl", ".idx.json")).unlink()
    return files[2], 1, "seq gap"


def truncate_the_newest_file_mid_line(files: list[Path]) -> tuple[Path, int, str]:
    data = files[-1].read_bytes()
    files[-1].write_bytes(data[:-10])
    return files[-1], len(lines_of(files[-1])), "incomplete line"


def edit_an_index_to_hide_events(files: list[Path]) -> tuple[Path, int, str]:
    index = files[1].with_name(files[1].name.replace(".jsonl", ".idx.json"))
    raw = json.loads(index.read_text())
    raw["counts"]["event_type"].pop("halt", None)
    index.write_text(json.dumps(raw))
    return files[1], len(lines_of(files[1])), "the sidecar index"


def insert_an_empty_line(files: list[Path]) -> tuple[Path, int, str]:
    lines = lines_of(files[1])
    lines.insert(3, b"\n")
    write_lines(files[1], lines)
    return files[1], 4, "malformed line"


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(change_one_byte, id="one changed byte in a line is a hash mismatch there"),
        pytest.param(change_one_byte_of_the_hash, id="one changed byte in a hash is caught too"),
        pytest.param(delete_a_line, id="a deleted line is a seq gap at the line after it"),
        pytest.param(insert_a_copy_of_a_line, id="a replayed copy of a line is out of order"),
        pytest.param(
            insert_a_forged_line_with_a_valid_hash,
            id="a forged line with a valid hash breaks the chain at the next line",
        ),
        pytest.param(
            edit_a_line_and_recompute_its_hash,
            id="an edited and re-hashed line breaks the prev_hash of the next line",
        ),
        pytest.param(swap_two_lines, id="two swapped lines are caught at the first of them"),
        pytest.param(
            remove_a_file_from_the_middle,
            id="a file removed from the middle is a seq gap in the next file",
        ),
        pytest.param(
            remove_the_oldest_file_without_an_anchor,
            id="the oldest file removed without an anchor is caught",
        ),
        pytest.param(
            truncate_a_closed_file_mid_line,
            id="a rotated file truncated mid-line has an incomplete line",
        ),
        pytest.param(
            truncate_a_closed_file_at_a_line_boundary,
            id="a rotated file truncated between lines disagrees with its index",
        ),
        pytest.param(
            truncate_a_closed_file_and_delete_its_index,
            id="a truncated file without index is a seq gap in the next file",
        ),
        pytest.param(
            truncate_the_newest_file_mid_line,
            id="the newest file truncated mid-line has an incomplete line",
        ),
        pytest.param(
            edit_an_index_to_hide_events, id="an index edited to hide events from queries is caught"
        ),
        pytest.param(insert_an_empty_line, id="an inserted empty line is malformed"),
    ],
)
@pytest.mark.parametrize("jobs", [1, 2], ids=["in one process", "in two processes"])
def test_verify_reports_the_first_bad_line_and_why(
    log_dir: Path, rotated_log: list[Path], tamper: Tamper, jobs: int
) -> None:
    file, line, reason = tamper(rotated_log)
    result = verify_log(log_dir, jobs=jobs)
    assert not result.ok
    assert result.error is not None
    assert (result.error.file, result.error.line) == (file.name, line), str(result.error)
    assert result.error.reason.startswith(reason), result.error.reason


def test_a_seq_gap_names_the_expected_and_found_seq(log_dir: Path, rotated_log: list[Path]) -> None:
    lines = lines_of(rotated_log[1])
    expected = seq_of(lines[4])
    del lines[4]
    write_lines(rotated_log[1], lines)
    error = verify_log(log_dir).error
    assert error is not None
    assert error.seq == expected + 1
    assert f"expected {expected}, found {expected + 1}" in error.reason


def test_the_oldest_file_removed_without_an_anchor_explains_the_missing_start(
    log_dir: Path, rotated_log: list[Path]
) -> None:
    rotated_log[0].unlink()
    error = verify_log(log_dir).error
    assert error is not None
    assert "does not start at seq 1" in error.reason
    assert ANCHOR_NAME in error.reason


def test_an_untouched_rotated_log_passes_with_a_one_line_summary(
    log_dir: Path, rotated_log: list[Path]
) -> None:
    result = verify_log(log_dir)
    assert result.ok
    assert result.summary() == f"ok: 300 events in {len(rotated_log)} files, last seq 300"


@pytest.mark.parametrize("jobs", [1, 2], ids=["in one process", "in two processes"])
def test_an_untouched_log_of_twenty_thousand_events_passes(
    log_dir: Path, writer_factory: WriterFactory, fill: Filler, jobs: int
) -> None:
    writer = writer_factory(max_file_bytes=1_000_000)
    for _batch in range(4):
        fill(writer, 5_000)
    writer.close()
    result = verify_log(log_dir, jobs=jobs)
    assert result.ok, result.summary()
    assert (result.events, result.last_seq) == (20_000, 20_000)
    assert result.files > 1


def test_an_empty_directory_verifies_as_zero_events(tmp_path: Path) -> None:
    assert verify_log(tmp_path).summary() == "ok: 0 events in 0 files, last seq 0"


def test_a_forged_anchor_that_disagrees_with_the_oldest_file_is_caught(
    log_dir: Path, rotated_log: list[Path]
) -> None:
    first_of_second = json.loads(lines_of(rotated_log[1])[0])
    rotated_log[0].unlink()
    (log_dir / ANCHOR_NAME).write_text(
        json.dumps({"version": 1, "seq": first_of_second["seq"] - 1, "hash": "f" * 64})
    )
    error = verify_log(log_dir).error
    assert error is not None
    assert error.reason.startswith("prev_hash mismatch")
    assert ANCHOR_NAME in error.reason


def chain(count: int) -> list[bytes]:
    lines, state = [], GENESIS
    for i in range(count):
        body: dict[str, Any] = {
            "timestamp": "2025-01-01T00:00:00.000000Z",
            "event_type": "restart",
            "severity": "info",
            "source": "operator",
            "target": "stable",
            "action": "restart_completed",
            "details": {"i": i},
            "user_id": None,
            "namespace": "trading",
            "dedup_key": None,
            "seq": state.seq + 1,
            "prev_hash": state.hash,
        }
        line, digest = encode_line(body)
        lines.append(line)
        state = ChainState(seq=state.seq + 1, hash=digest)
    return lines


def test_verify_lines_is_a_pure_check_over_any_iterable_of_lines() -> None:
    result = verify_lines(iter(chain(50)))
    assert (result.ok, result.events, result.last_seq) == (True, 50, 50)


def test_verify_lines_continues_from_a_given_chain_state() -> None:
    lines = chain(10)
    start = ChainState(seq=4, hash=json.loads(lines[3])["hash"])
    assert verify_lines(lines[4:], start).ok
    assert not verify_lines(lines[5:], start).ok


def test_verify_lines_reports_a_line_number_in_its_input() -> None:
    lines = chain(10)
    lines[7] = lines[7].replace(b"restart", b"restarT")
    error = verify_lines(lines, file="excerpt").error
    assert error is not None
    assert (error.file, error.line, error.seq) == ("excerpt", 8, 8)
