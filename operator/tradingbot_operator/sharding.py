"""Which operator instance handles which bot: `--shard i/N` on a hash of namespace/name.

The rule is stable (sha256, not Python's per-process `hash`), so every replica of every
shard agrees on it without talking, and a bot moves only when N changes. One shard (the
default) owns every bot.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

_SHARD = re.compile(r"^(\d+)/(\d+)$")


@dataclass(frozen=True)
class Shard:
    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if not (self.count >= 1 and 0 <= self.index < self.count):
            raise ValueError(f"shard {self.index}/{self.count}: need 0 <= i < N and N >= 1")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """`i/N`, e.g. `0/2`; an empty text is the single shard."""
        if not text:
            return cls()
        match = _SHARD.match(text.strip())
        if match is None:
            raise ValueError(f"shard must read i/N (e.g. 0/2), got {text!r}")
        return cls(int(match[1]), int(match[2]))

    def owns(self, namespace: str, name: str) -> bool:
        return self.count == 1 or shard_of(namespace, name, self.count) == self.index

    @property
    def lease_name(self) -> str:
        """The shard's leader Lease; one shard keeps the plain name."""
        base = "tradingbot-operator"
        return base if self.count == 1 else f"{base}-shard-{self.index}-of-{self.count}"

    def finalizer(self, base: str) -> str:
        """The finalizer this shard's replicas add and remove. Shards need names of their
        own: kopf removes its finalizer from every object none of its handlers matches, so
        with one shared name each shard would take away the finalizer the owning shard just
        added (found with 200 bots on two shards: 70 patches a second, for ever)."""
        return base if self.count == 1 else f"{base}-shard-{self.index}-of-{self.count}"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def foreign_finalizers(finalizers: list[str], base: str, own: str) -> list[str]:
    """Finalizers of ours that another shard layout added (N changed since): the owner of the
    bot removes them once it has stopped the bot, or the deletion would wait for ever."""
    return [f for f in finalizers if f != own and (f == base or f.startswith(f"{base}-shard-"))]


def shard_of(namespace: str, name: str, count: int) -> int:
    digest = hashlib.sha256(f"{namespace}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % count
