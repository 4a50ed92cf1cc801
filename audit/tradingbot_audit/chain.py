"""Canonical encoding and the hash chain.

A line is the canonical JSON of the record without `hash` (keys sorted, no spaces, UTF-8),
with `,"hash":"<64 hex>"` spliced in before the closing brace. So:

* `hash = sha256(canonical(record minus hash))`, the definition any other tool can follow
  (parse the line, drop `hash`, re-encode canonically, hash);
* the writer's own verifier can hash the stored bytes directly, without re-encoding,
  because the bytes before the spliced suffix are exactly that canonical encoding.

The first line's `prev_hash` is GENESIS_HASH; every later line carries its predecessor's hash,
across file rotations.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

GENESIS_HASH: Final = "0" * 64
HASH_HEX_LENGTH: Final = 64

_HASH_PREFIX: Final = b',"hash":"'
_HASH_SUFFIX: Final = b'"}'
# Length of `,"hash":"<64 hex>"}`: the tail of every stored line.
HASH_TAIL_LENGTH: Final = len(_HASH_PREFIX) + HASH_HEX_LENGTH + len(_HASH_SUFFIX)


@dataclass(frozen=True)
class ChainState:
    """Where the chain stands: the last written seq and its hash (0 and genesis when empty)."""

    seq: int
    hash: str


GENESIS: Final = ChainState(seq=0, hash=GENESIS_HASH)


def canonical_json(value: Any) -> bytes:
    """The one encoding the hash is computed over: sorted keys, compact, UTF-8, no NaN."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def std_parse_line(data: bytes) -> Any:
    return json.loads(data)


def _pick_parser() -> Callable[[bytes], Any]:
    # orjson comes with ccxt on CPython; parsing is most of the cost of verifying or scanning
    # a large log and orjson does it about 3x faster. It only ever reads: the bytes that are
    # hashed always come from canonical_json above.
    try:
        from orjson import loads
    except ImportError:  # pragma: no cover - depends on the platform
        return std_parse_line
    return loads


# Parse one stored line (bytes, a trailing newline allowed); raises ValueError on bad JSON.
parse_line: Final = _pick_parser()


def hash_bytes(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def compute_hash(record: dict[str, Any]) -> str:
    """SHA-256 over the canonical encoding of `record` without its `hash` field."""
    body = {key: value for key, value in record.items() if key != "hash"}
    return hash_bytes(canonical_json(body))


def encode_line(body: dict[str, Any]) -> tuple[bytes, str]:
    """Encode a record body (everything but `hash`) as one stored line, newline included.

    Returns the line and its hash.
    """
    if "hash" in body:
        raise ValueError("encode_line takes the record without its hash")
    encoded = canonical_json(body)
    digest = hash_bytes(encoded)
    line = encoded[:-1] + _HASH_PREFIX + digest.encode("ascii") + _HASH_SUFFIX + b"\n"
    return line, digest


def split_hash(line: bytes) -> tuple[bytes, str] | None:
    """Split a stored line (without newline) into the hashed body and the stored hash.

    Returns None when the line does not end in the `,"hash":"…"}` tail the writer produces.
    """
    if len(line) <= HASH_TAIL_LENGTH or not line.endswith(_HASH_SUFFIX):
        return None
    start = len(line) - HASH_TAIL_LENGTH
    if line[start : start + len(_HASH_PREFIX)] != _HASH_PREFIX:
        return None
    stored = line[start + len(_HASH_PREFIX) : -len(_HASH_SUFFIX)]
    try:
        digest = stored.decode("ascii")
    except UnicodeDecodeError:
        return None
    return line[:start] + b"}", digest


def line_hash_ok(line: bytes) -> bool:
    """True when the hash stored in `line` matches its content."""
    parts = split_hash(line)
    return parts is not None and hash_bytes(parts[0]) == parts[1]
