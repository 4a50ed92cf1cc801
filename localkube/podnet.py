"""Loopback pod addresses that no other localkube on the machine uses.

Each process node claims a block `127.a.b.0/24` for its pods (addresses .2 to .254) with an
exclusive lock file in a machine-wide directory; the lock is held while the node runs and the
kernel drops it when the node process ends, however it ends. Two clusters on one machine
(two checkouts, `make test` beside `make run`) therefore never hand out the same pod address.
The block a node used before (its adopted processes still listen there) is tried first, then
the blocks in an order seeded by the node's data dir, so a node keeps its block across runs.
127.0.x.x is left alone: the control plane and the tests bind 127.0.0.1.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

Block = tuple[int, int]  # the second and third octets
FIRST_HOST = 2
LAST_HOST = 254
BLOCKS_PER_OCTET = 256


def lock_dir() -> Path:
    """Machine-wide (not per checkout): where the claims are."""
    return Path(os.environ.get("LOCALKUBE_POD_RANGES") or tempfile.gettempdir()) / (
        "localkube-pod-ranges"
    )


def block_ips(block: Block) -> tuple[str, ...]:
    a, b = block
    return tuple(f"127.{a}.{b}.{n}" for n in range(FIRST_HOST, LAST_HOST + 1))


def block_of(ip: str) -> Block | None:
    parts = ip.split(".")
    if len(parts) != 4 or parts[0] != "127" or not all(p.isdigit() for p in parts):
        return None
    a, b = int(parts[1]), int(parts[2])
    return (a, b) if a >= 1 else None


def candidate_blocks(seed: str, preferred: Block | None = None) -> Iterator[Block]:
    """Every usable block once: the preferred one, then an order that depends on `seed`."""
    if preferred is not None:
        yield preferred
    total = 254 * BLOCKS_PER_OCTET  # second octet 1..254, third 0..255
    start = int.from_bytes(hashlib.sha256(seed.encode()).digest()[:4], "big") % total
    for offset in range(total):
        index = (start + offset) % total
        block = (1 + index // BLOCKS_PER_OCTET, index % BLOCKS_PER_OCTET)
        if block != preferred:
            yield block


class PodNetwork:
    """The block this node holds, and its addresses."""

    def __init__(self, block: Block, handle: IO[str]) -> None:
        self.block = block
        self.ips = block_ips(block)
        self._handle: IO[str] | None = handle

    @classmethod
    def claim(cls, seed: str, preferred: Block | None = None) -> PodNetwork:
        directory = lock_dir()
        directory.mkdir(parents=True, exist_ok=True)
        for block in candidate_blocks(seed, preferred):
            path = directory / f"127.{block[0]}.{block[1]}.lock"
            handle = open(path, "a+")  # noqa: SIM115 - held while the node runs
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} {seed}\n")
            handle.flush()
            return cls(block, handle)
        raise RuntimeError("every loopback pod address block is taken")

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
