"""The shard rule: parsed strictly, stable across processes, every bot in exactly one shard."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tradingbot_operator.sharding import Shard, foreign_finalizers, shard_of


@pytest.mark.parametrize(
    ("text", "shard"),
    [("", Shard(0, 1)), ("0/1", Shard(0, 1)), ("1/2", Shard(1, 2)), (" 2/3 ", Shard(2, 3))],
)
def test_parse(text: str, shard: Shard) -> None:
    assert Shard.parse(text) == shard


@pytest.mark.parametrize("text", ["2/2", "-1/2", "0/0", "1", "a/b", "1/2/3", "0 / 2"])
def test_parse_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="shard"):
        Shard.parse(text)


def test_every_bot_has_exactly_one_owner_and_shards_are_balanced() -> None:
    bots = [(f"ns-{i % 7}", f"bot-{i}") for i in range(3000)]
    shards = [Shard(i, 3) for i in range(3)]
    owners = [[s for s in shards if s.owns(ns, name)] for ns, name in bots]
    assert all(len(found) == 1 for found in owners)
    sizes = [sum(1 for found in owners if found[0] == s) for s in shards]
    assert min(sizes) > 900, sizes


def test_the_rule_is_the_same_in_another_process() -> None:
    here = [shard_of("bots", f"b{i}", 5) for i in range(20)]
    code = (
        "from tradingbot_operator.sharding import shard_of;"
        "print([shard_of('bots', f'b{i}', 5) for i in range(20)])"
    )
    there = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert there.strip() == str(here)


def test_one_shard_owns_everything_under_the_plain_lease_name() -> None:
    assert Shard().owns("any", "bot")
    assert Shard().lease_name == "tradingbot-operator"
    assert Shard(1, 2).lease_name == "tradingbot-operator-shard-1-of-2"


def test_each_shard_layout_has_a_finalizer_of_its_own() -> None:
    base = "trading.r7.dev/finalizer"
    assert Shard().finalizer(base) == base
    names = {Shard(i, 2).finalizer(base) for i in range(2)} | {Shard(0, 3).finalizer(base)}
    assert names == {f"{base}-shard-0-of-2", f"{base}-shard-1-of-2", f"{base}-shard-0-of-3"}
    # A qualified finalizer name: its part after the slash is at most 63 characters.
    assert len(Shard(99, 100).finalizer(base).split("/")[1]) <= 63


def test_the_owner_removes_the_finalizers_an_earlier_shard_layout_added() -> None:
    base = "trading.r7.dev/finalizer"
    own = Shard(1, 3).finalizer(base)
    present = [base, f"{base}-shard-0-of-2", own, "example.com/keep", f"{base}x"]
    assert foreign_finalizers(present, base, own) == [base, f"{base}-shard-0-of-2"]
    assert foreign_finalizers([own], base, own) == []
