"""Verification of the hash chain: finds the first line that was changed, removed, inserted
or reordered, and says why.

Per line, in this order (the first failing check is the reason reported):

1. the line is complete (ends with a newline);
2. the stored hash matches the line's content            -> the line was edited;
3. the line is a JSON object with exactly the schema's fields;
4. its seq is the previous seq + 1                        -> lines or files missing,
                                                             inserted or reordered;
5. its prev_hash is the previous line's hash              -> the line before was replaced.

Across files the chain simply continues; a sidecar index that disagrees with its file fails
verification too (it could otherwise hide events from queries). When retention has removed
the oldest files, the chain starts from `chain-anchor.json`.

A valid chain can still be a shortened one: deleting the last lines leaves every check above
passing. Given the chain head recorded outside the log volume (`head`, see head.py), a log
that ends before it, or holds another hash at its seq, fails too.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from .chain import GENESIS, ChainState, hash_bytes, parse_line, split_hash
from .files import (
    ANCHOR_NAME,
    Anchor,
    LogFile,
    iter_lines,
    iter_raw_lines,
    list_log_files,
    read_anchor,
    read_json,
)
from .head import ChainHead, check_log
from .index import FileStats
from .schema import RECORD_FIELDS, Record

_RECORD_KEYS: Final = frozenset(RECORD_FIELDS)


@dataclass(frozen=True)
class VerifyError:
    """The first bad line: where it is and why it fails."""

    file: str
    line: int
    seq: int | None
    reason: str

    def __str__(self) -> str:
        seq = "?" if self.seq is None else str(self.seq)
        if not self.file:
            return f"seq {seq}: {self.reason}"
        return f"{self.file}:{self.line} (seq {seq}): {self.reason}"


@dataclass(frozen=True)
class VerifyResult:
    events: int
    files: int
    last_seq: int
    last_hash: str
    error: VerifyError | None = None
    # The head the log was checked against, when one was given.
    head: ChainHead | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def summary(self) -> str:
        if self.error is not None:
            return f"FAILED: {self.error}"
        text = f"ok: {self.events} events in {self.files} files, last seq {self.last_seq}"
        if self.head is not None:
            text += (
                f"; the chain head recorded outside the log volume (seq {self.head.seq}) matches"
            )
        return text


def _short(digest: object) -> str:
    return f"{str(digest)[:12]}…"


def _seq_hint(line: bytes) -> int | None:
    """Best-effort seq of a line that failed its checks, for the report only."""
    try:
        seq = json.loads(line).get("seq")
    except (ValueError, AttributeError):
        return None
    return seq if isinstance(seq, int) else None


def check_line(line: bytes, expected: ChainState) -> tuple[Record | None, str | None]:
    """Check one stored line (without its newline) against the chain so far.

    `expected` is the state after the previous line: its seq and hash. Returns the parsed
    record and None, or None and the reason the line fails.
    """
    parts = split_hash(line)
    if parts is None:
        return None, (
            "malformed line: it does not end with the hash field (damaged, or not written by "
            "the audit writer)"
        )
    body, stored = parts
    computed = hash_bytes(body)
    if computed != stored:
        return None, (
            f"hash mismatch: the line's content was changed (stored {_short(stored)}, "
            f"content hashes to {_short(computed)})"
        )
    try:
        record = json.loads(line)
    except ValueError:
        return None, "not valid JSON although its hash matches (forged line)"
    if not isinstance(record, dict) or record.keys() != _RECORD_KEYS:
        fields = sorted(record) if isinstance(record, dict) else type(record).__name__
        return None, f"not an audit record: fields {fields}"
    seq = record["seq"]
    if not isinstance(seq, int) or isinstance(seq, bool):
        return None, f"seq {seq!r} is not an integer"
    want = expected.seq + 1
    if seq > want:
        return None, (
            f"seq gap: expected {want}, found {seq} (lines or files before this one are missing "
            "or were reordered)"
        )
    if seq < want:
        return None, (
            f"seq out of order: expected {want}, found {seq} (this line was inserted, "
            "duplicated or moved)"
        )
    if record["prev_hash"] != expected.hash:
        return None, (
            f"prev_hash mismatch: the line carries {_short(record['prev_hash'])} but the "
            f"previous line hashes to {_short(expected.hash)} (the previous line was replaced "
            "or lines were reordered)"
        )
    return record, None


@dataclass
class _FileOutcome:
    state: ChainState
    lines: int
    error: VerifyError | None


_HASH_FIELD: Final = b',"hash":"'


def _check_lines(
    lines: Iterable[bytes],
    state: ChainState,
    *,
    file: str,
    stats: FileStats | None = None,
    anchor: Anchor | None = None,
) -> _FileOutcome:
    """The streaming core: each raw line (newline included) against the running state.

    The loop is the hot path of verifying a million lines, so the checks of `check_line` are
    inlined for a line of exactly the shape the writer produces. Any line that fails one of
    them goes through `check_line` itself, which decides and words the reason, so both
    paths accept and reject the same lines.
    """
    count = 0
    seq, prev = state.seq, state.hash
    sha256 = hashlib.sha256
    keys = _RECORD_KEYS
    add = None if stats is None else stats.add
    anchor_seq = -1 if anchor is None else anchor.seq
    for raw in lines:
        count += 1
        n = len(raw)
        record: Any = None
        if (
            n > 77
            and raw[n - 1] == 10  # "\n"
            and raw[n - 76 : n - 67] == _HASH_FIELD
            and raw[n - 3 : n - 1] == b'"}'
            and sha256(raw[: n - 76] + b"}").hexdigest().encode() == raw[n - 67 : n - 3]
        ):
            try:
                record = parse_line(raw)
                if not (
                    type(record) is dict
                    and record.keys() == keys
                    and type(record["seq"]) is int
                    and record["seq"] == seq + 1
                    and record["prev_hash"] == prev
                ):
                    record = None
            except ValueError:
                record = None
        if record is None:
            error = _slow_check(raw, count, ChainState(seq, prev), file)
            if error is not None:
                return _FileOutcome(ChainState(seq, prev), count - 1, error)
            record = json.loads(raw)
        seq, prev = record["seq"], record["hash"]
        if add is not None:
            add(record, n)
        if seq == anchor_seq and anchor is not None and prev != anchor.hash:
            return _FileOutcome(
                ChainState(seq, prev),
                count,
                VerifyError(
                    file,
                    count,
                    seq,
                    f"hash differs from the one {ANCHOR_NAME} recorded for this seq "
                    f"({_short(anchor.hash)})",
                ),
            )
    return _FileOutcome(ChainState(seq, prev), count, None)


def _slow_check(raw: bytes, count: int, expected: ChainState, file: str) -> VerifyError | None:
    if not raw.endswith(b"\n"):
        return VerifyError(
            file,
            count,
            _seq_hint(raw),
            "incomplete line (the file was truncated, or a write was cut short; the "
            "writer truncates an unfinished last line when it reopens the log)",
        )
    line = raw[:-1]
    record, reason = check_line(line, expected)
    if record is None:
        return VerifyError(file, count, _seq_hint(line), reason or "invalid line")
    return None


def verify_lines(
    lines: Iterable[bytes], start: ChainState = GENESIS, *, file: str = "<lines>"
) -> VerifyResult:
    """Verify raw lines (each with its newline) as one chain continuing from `start`."""
    outcome = _check_lines(lines, start, file=file)
    return VerifyResult(
        events=outcome.lines,
        files=1,
        last_seq=outcome.state.seq,
        last_hash=outcome.state.hash,
        error=outcome.error,
    )


def _first_record(log_file: LogFile, size: int) -> Record | None:
    for _offset, raw in iter_lines(log_file.path, end=size):
        try:
            record = json.loads(raw)
        except ValueError:
            return None
        return record if isinstance(record, dict) else None
    return None


def _start_state(
    files: list[tuple[LogFile, int]], anchor: Anchor | None
) -> tuple[ChainState, Anchor | None]:
    """Where the chain starts, and an anchor to check on the way if files precede it."""
    if anchor is None:
        return GENESIS, None
    first = next((rec for log_file, size in files if (rec := _first_record(log_file, size))), {})
    first_seq = first.get("seq")
    if isinstance(first_seq, int) and 1 < first_seq <= anchor.seq:
        # A crash between writing the anchor and removing the files it covers: those files
        # are still here. Verify them from their own first line and check the anchor when
        # the chain reaches its seq.
        return ChainState(seq=first_seq - 1, hash=str(first.get("prev_hash"))), anchor
    if first_seq == 1:
        return GENESIS, anchor
    return ChainState(seq=anchor.seq, hash=anchor.hash), None


def verify_log(
    log_dir: str | os.PathLike[str], *, jobs: int = 1, head: ChainHead | None = None
) -> VerifyResult:
    """Verify every file of the log in chain order; stop at the first bad line.

    `jobs` > 1 checks files in that many processes first and then stitches the chain at the
    file boundaries; any file that does not check out on its own is re-checked in order,
    so the report is the same as with one process. With `head`, a chain that checks out must
    also reach the head's seq and hold the head's hash there; lines after it are fine.
    """
    result = _verify_chain(log_dir, jobs)
    if head is None or not result.ok:
        return result
    return _check_head(Path(log_dir), result, head)


def _check_head(root: Path, result: VerifyResult, head: ChainHead) -> VerifyResult:
    check = check_log(root, head, ChainState(result.last_seq, result.last_hash))
    if check.ok:
        return replace(result, head=head)
    file, line = "", 0
    last = [f for f in list_log_files(root) if f.first_seq <= result.last_seq]
    if last and result.events:
        # The chain checked out, so the last file's lines run from its first seq to last_seq.
        file, line = last[-1].name, result.last_seq - last[-1].first_seq + 1
    error = VerifyError(file, line, result.last_seq, check.message())
    return replace(result, error=error)


def _verify_chain(log_dir: str | os.PathLike[str], jobs: int) -> VerifyResult:
    root = Path(log_dir)
    files = [(log_file, log_file.path.stat().st_size) for log_file in list_log_files(root)]
    try:
        anchor = read_anchor(root)
    except ValueError as exc:
        bad_anchor = VerifyError(ANCHOR_NAME, 0, None, str(exc))
        return VerifyResult(0, len(files), 0, GENESIS.hash, bad_anchor)

    state, checkpoint = _start_state(files, anchor)
    position, events = 0, 0
    if jobs > 1 and len(files) > 1 and checkpoint is None:
        position, events, state = _verify_in_parallel(files, state, jobs)
    return _verify_in_order(files, position, events, state, checkpoint, anchor)


def _verify_in_order(
    files: list[tuple[LogFile, int]],
    position: int,
    events: int,
    state: ChainState,
    checkpoint: Anchor | None,
    anchor: Anchor | None,
) -> VerifyResult:
    """Check files[position:] line by line, continuing from `state`."""
    first_line_of_log = events == 0
    for log_file, size in files[position:]:
        if size == 0:
            continue
        outcome, error = _check_file(log_file, size, state, checkpoint)
        events += outcome.lines
        if error is not None and first_line_of_log and error.line == 1:
            error = _explain_start(error, anchor)
        if error is not None:
            return VerifyResult(events, len(files), outcome.state.seq, outcome.state.hash, error)
        state = outcome.state
        first_line_of_log = False
    return VerifyResult(events, len(files), state.seq, state.hash)


def _check_file(
    log_file: LogFile, size: int, state: ChainState, checkpoint: Anchor | None
) -> tuple[_FileOutcome, VerifyError | None]:
    """One file from `state`: its lines, its name and its sidecar index."""
    index_raw = read_json(log_file.index_path)
    stats = FileStats() if index_raw is not None else None
    outcome = _check_lines(
        iter_raw_lines(log_file.path, end=size),
        state,
        file=log_file.name,
        stats=stats,
        anchor=checkpoint,
    )
    if outcome.error is not None:
        return outcome, outcome.error
    first_seq = outcome.state.seq - outcome.lines + 1
    if outcome.lines > 0 and first_seq != log_file.first_seq:
        return outcome, VerifyError(
            log_file.name,
            1,
            first_seq,
            f"the file name says its first seq is {log_file.first_seq}, the first line "
            "disagrees (file renamed or lines removed from its start)",
        )
    if stats is not None:
        return outcome, _check_index(log_file, index_raw, stats, outcome.lines)
    return outcome, None


@dataclass(frozen=True)
class _AloneResult:
    """A file checked from its own first line: the chain state it expects and ends with."""

    expects: ChainState | None
    ends: ChainState
    lines: int
    ok: bool


def _check_file_alone(log_file: LogFile, size: int) -> _AloneResult:
    first = _first_record(log_file, size)
    seq, prev_hash = (first or {}).get("seq"), (first or {}).get("prev_hash")
    if type(seq) is not int or not isinstance(prev_hash, str):
        return _AloneResult(None, GENESIS, 0, ok=False)
    expects = ChainState(seq - 1, prev_hash)
    outcome, error = _check_file(log_file, size, expects, None)
    return _AloneResult(expects, outcome.state, outcome.lines, ok=error is None)


def _verify_in_parallel(
    files: list[tuple[LogFile, int]], state: ChainState, jobs: int
) -> tuple[int, int, ChainState]:
    """Check files concurrently; return how far the chain is proven: (position, events, state).

    Each file is checked against its own first line, then the files are joined: file i must
    start where file i-1 ended. The first file that fails either way is left for the
    in-order pass, which finds and words the first bad line.
    """
    with ProcessPoolExecutor(max_workers=min(jobs, len(files))) as pool:
        results = list(pool.map(_check_file_alone, [f for f, _s in files], [s for _f, s in files]))
    events = 0
    for position, ((_log_file, size), result) in enumerate(zip(files, results, strict=True)):
        if size == 0:
            continue
        if not result.ok or result.expects != state:
            return position, events, state
        events += result.lines
        state = result.ends
    return len(files), events, state


def _explain_start(error: VerifyError, anchor: Anchor | None) -> VerifyError:
    if error.reason.startswith("seq gap") and anchor is None:
        reason = (
            f"{error.reason}; the log does not start at seq 1 and there is no {ANCHOR_NAME} "
            "(files were removed from the start of the log)"
        )
    elif anchor is not None and error.reason.startswith(("seq", "prev_hash")):
        reason = f"{error.reason}; checked against {ANCHOR_NAME} (seq {anchor.seq})"
    else:
        return error
    return VerifyError(error.file, error.line, error.seq, reason)


def _check_index(
    log_file: LogFile, raw: object, stats: FileStats, lines: int
) -> VerifyError | None:
    stored = FileStats.from_json(raw)
    if stored is None:
        return VerifyError(log_file.index_path.name, 0, None, "index file is unreadable")
    different = stored.differences(stats)
    if not different:
        return None
    return VerifyError(
        log_file.name,
        lines,
        stats.last_seq,
        f"the sidecar index {log_file.index_path.name} disagrees with the file on "
        f"{', '.join(different)} (the file or its index was changed after rotation)",
    )
