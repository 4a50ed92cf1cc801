"""On-disk layout of an audit log directory, and the low-level readers.

```
log_dir/
  audit-20250102-000000000001.jsonl      chain lines, first seq 1, written on 2025-01-02 (UTC)
  audit-20250102-000000000001.idx.json   sidecar index of that file, written when it closed
  audit-20250103-000000184211.jsonl      the newest file: the one the writer appends to
  chain-anchor.json                      seq + hash of the last line removed by retention
  .writer.lock                           flock held by the single writer
```

File names embed the UTC day the file was opened (day rotation, retention) and the seq of its
first line, zero-padded so that name order is chain order.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any, Final, NamedTuple

FILE_PATTERN: Final = re.compile(r"^audit-(\d{8})-(\d{12})\.jsonl$")
INDEX_SUFFIX: Final = ".idx.json"
ANCHOR_NAME: Final = "chain-anchor.json"
LOCK_NAME: Final = ".writer.lock"

READ_BLOCK_SIZE: Final = 1 << 20
FIRST_BLOCK_SIZE: Final = 64 * 1024


@dataclass(frozen=True, order=True)
class LogFile:
    """One chain file. Ordered by first seq, which is chain order."""

    first_seq: int
    day: date
    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def index_path(self) -> Path:
        return index_path_for(self.path)


def file_name(day: date, first_seq: int) -> str:
    return f"audit-{day:%Y%m%d}-{first_seq:012d}.jsonl"


def index_path_for(path: Path) -> Path:
    return path.with_name(path.name.removesuffix(".jsonl") + INDEX_SUFFIX)


def parse_file_name(path: Path) -> LogFile | None:
    match = FILE_PATTERN.match(path.name)
    if match is None:
        return None
    try:
        day = datetime.strptime(match.group(1), "%Y%m%d").date()
    except ValueError:
        return None
    return LogFile(first_seq=int(match.group(2)), day=day, path=path)


def list_log_files(log_dir: Path) -> list[LogFile]:
    """All chain files in chain order (oldest first). Other files are ignored."""
    if not log_dir.is_dir():
        return []
    files = [parsed for entry in log_dir.iterdir() if (parsed := parse_file_name(entry))]
    return sorted(files)


def fsync_dir(path: Path) -> None:
    """Make a directory entry change (create, rename, unlink) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, payload: Any, *, durable: bool = True) -> None:
    """Replace `path` with `payload` as JSON: temp file, fsync, rename, fsync the directory.

    A crash leaves either the old content or the new one, never a torn file.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    data = (json.dumps(payload, sort_keys=True, indent=1) + "\n").encode("utf-8")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        write_all(fd, data)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if durable:
        fsync_dir(path.parent)


def read_json(path: Path) -> Any | None:
    """Read a small JSON file; None when it is absent."""
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        return None


def write_all(fd: int, data: bytes) -> None:
    """os.write may write less than asked (signals, full disks); loop until done or error."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


@dataclass(frozen=True)
class Anchor:
    """The chain position just before the oldest file still kept (after retention)."""

    seq: int
    hash: str
    file: str

    def to_json(self) -> dict[str, Any]:
        return {"version": 1, "seq": self.seq, "hash": self.hash, "file": self.file}


def read_anchor(log_dir: Path) -> Anchor | None:
    raw = read_json(log_dir / ANCHOR_NAME)
    if raw is None:
        return None
    try:
        return Anchor(seq=int(raw["seq"]), hash=str(raw["hash"]), file=str(raw.get("file", "")))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{log_dir / ANCHOR_NAME} is malformed: {exc}") from exc


def write_anchor(log_dir: Path, anchor: Anchor, *, durable: bool = True) -> None:
    write_json_atomic(log_dir / ANCHOR_NAME, anchor.to_json(), durable=durable)


def complete_size(path: Path, size: int | None = None) -> int:
    """Offset just past the last newline: the part of the file made of whole lines.

    Anything after it is a torn write (a crash mid-line) or a line still being written.
    """
    with path.open("rb") as handle:
        end = os.fstat(handle.fileno()).st_size if size is None else size
        pos = end
        step = FIRST_BLOCK_SIZE
        while pos > 0:
            step = min(step, pos)
            pos -= step
            handle.seek(pos)
            block = handle.read(step)
            newline = block.rfind(b"\n")
            if newline >= 0:
                return pos + newline + 1
            step = min(step * 2, READ_BLOCK_SIZE)
        return 0


class Block(NamedTuple):
    """A read buffer and the run of whole lines in it: data[start:stop], each line ending in
    a newline. data[i] sits at file offset `offset + i`.

    Readers search `data` between start and stop instead of slicing it, so a scan over a
    large file copies each byte once (the read) rather than three times.
    """

    offset: int
    data: bytes
    start: int
    stop: int

    def lines(self) -> list[bytes]:
        """The whole lines, without their newlines."""
        if self.stop <= self.start:
            return []
        return self.data[self.start : self.stop - 1].split(b"\n")


def iter_blocks_reverse(path: Path, *, end: int | None = None) -> Iterator[Block]:
    """Blocks of whole lines from the end of the file back to its start.

    A trailing incomplete line is left out. The first read is small and reads double up to
    READ_BLOCK_SIZE, so the newest few records cost one small read while a long scan uses
    large ones. The piece of a line cut by the start of a read is read again with the next
    block.
    """
    boundary = complete_size(path, end)
    with path.open("rb") as handle:
        step = FIRST_BLOCK_SIZE
        while boundary > 0:
            begin = max(0, boundary - step)
            handle.seek(begin)
            data = handle.read(boundary - begin)
            if begin == 0:
                yield Block(0, data, 0, len(data))
                return
            cut = data.find(b"\n") + 1
            if cut == len(data):
                step *= 2  # no line starts in this read (a very long line): read further back
                continue
            yield Block(begin, data, cut, len(data))
            boundary = begin + cut
            step = min(step * 2, READ_BLOCK_SIZE)


def iter_lines_reverse(path: Path, *, end: int | None = None) -> Iterator[tuple[int, bytes]]:
    """Yield (offset, line without newline) from the last complete line back to the first.

    Reads blocks from the end, so finding the 100 most recent events costs a few small
    reads however large the file is. A trailing incomplete line is skipped.
    """
    for block in iter_blocks_reverse(path, end=end):
        line_end = block.offset + block.stop - 1
        for line in reversed(block.lines()):
            start = line_end - len(line)
            yield start, line
            line_end = start - 1


def iter_blocks(path: Path, *, end: int | None = None) -> Iterator[Block]:
    """Blocks of whole lines from the start; an incomplete last line is never included."""
    with path.open("rb") as handle:
        limit = os.fstat(handle.fileno()).st_size if end is None else end
        pos = 0
        step = READ_BLOCK_SIZE
        while pos < limit:
            handle.seek(pos)
            data = handle.read(min(step, limit - pos))
            if not data:
                return
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                if pos + len(data) >= limit:
                    return  # only a torn line is left
                step *= 2  # a line longer than the read: read more at once
                continue
            yield Block(pos, data, 0, cut)
            pos += cut
            step = READ_BLOCK_SIZE


def iter_lines(path: Path, *, end: int | None = None) -> Iterator[tuple[int, bytes]]:
    """Yield (offset, line with its newline) from the start; the last may lack a newline.

    `end` bounds the read to a size observed earlier, so a reader racing the writer sees a
    consistent prefix.
    """
    with path.open("rb") as handle:
        limit = os.fstat(handle.fileno()).st_size if end is None else end
        offset = 0
        for line in handle:
            if offset + len(line) > limit:
                line = line[: limit - offset]
                if line:
                    yield offset, line
                return
            yield offset, line
            offset += len(line)


def iter_raw_lines(path: Path, *, end: int | None = None) -> Iterator[bytes]:
    """Lines with their newlines, from the start up to `end`; the last may be incomplete.

    The plain form of iter_lines for verify's hot loop: no offsets, and the file object's own
    (C) line iteration whenever the file has not grown since `end` was taken.
    """
    with path.open("rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if end is None or end >= size:
            yield from handle
            return
        remaining = end
        for line in handle:
            if len(line) >= remaining:
                yield line[:remaining]
                return
            remaining -= len(line)
            yield line


def read_line_at(path: Path, offset: int) -> bytes | None:
    """The line starting at `offset` (without newline); None if the file or line is gone."""
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            line = handle.readline()
    except FileNotFoundError:
        return None
    if not line.endswith(b"\n"):
        return None
    return line[:-1]


def remove_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
