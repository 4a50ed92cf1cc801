"""Pod address blocks: one per node on the machine, kept across runs, never 127.0.x.x."""

from __future__ import annotations

from pathlib import Path

import pytest

from localkube.podnet import PodNetwork, block_ips, block_of, candidate_blocks


@pytest.fixture(autouse=True)
def private_lock_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALKUBE_POD_RANGES", str(tmp_path))


def test_two_nodes_on_one_machine_get_different_blocks_and_a_released_one_is_free_again() -> None:
    first = PodNetwork.claim("/data/a")
    second = PodNetwork.claim("/data/a")  # even from the same seed
    assert first.block != second.block
    assert not set(first.ips) & set(second.ips)
    block = first.block
    first.release()
    again = PodNetwork.claim("/data/a")
    assert again.block == block  # a node keeps its block across runs
    second.release()
    again.release()


def test_the_block_of_adopted_processes_is_tried_first() -> None:
    net = PodNetwork.claim("/data/b", preferred=(9, 9))
    assert net.block == (9, 9) and net.ips[0] == "127.9.9.2" and net.ips[-1] == "127.9.9.254"
    net.release()


def test_blocks_cover_every_second_and_third_octet_once_and_never_127_0() -> None:
    blocks = list(candidate_blocks("seed"))
    assert len(blocks) == len(set(blocks)) == 254 * 256
    assert all(a >= 1 for a, _ in blocks)
    assert list(candidate_blocks("seed", preferred=(3, 4)))[:1] == [(3, 4)]


@pytest.mark.parametrize(
    ("ip", "block"),
    [("127.4.5.6", (4, 5)), ("127.0.0.2", None), ("10.1.2.3", None), ("nonsense", None)],
)
def test_the_block_of_an_address(ip: str, block: tuple[int, int] | None) -> None:
    assert block_of(ip) == block


def test_a_block_has_253_pod_addresses() -> None:
    assert len(block_ips((1, 0))) == 253
