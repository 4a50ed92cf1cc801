"""The state document: round trip, strict decoding, journal trimming, restore choice."""

from __future__ import annotations

import json

import pytest

from tradingbot.ledger import Execution, apply_fill, day_realized_pnl
from tradingbot.state import (
    OpenOrder,
    Position,
    StateCheckpoint,
    StateCorruptError,
    StateTooLargeError,
    Stats,
    choose_restore,
    decode_state,
    encode_state,
)
from tradingbot.state.stores import CONFIGMAP_DOCUMENT_BUDGET_BYTES, CONFIGMAP_SIZE_GUARD_BYTES

TOP_LEVEL = [
    "schemaVersion",
    "checkpointSeq",
    "savedAt",
    "reason",
    "writerPod",
    "positions",
    "balances",
    "stats",
    "openOrders",
    "journal",
]


def sample_state(fills: int = 3) -> StateCheckpoint:
    state = StateCheckpoint(
        checkpoint_seq=41,
        saved_at="2026-03-01T12:00:00.000Z",
        reason="fill",
        writer_pod="bot-abc",
        balances={"USDT": 9000.0},
    )
    for i in range(fills):
        side = "buy" if i % 2 == 0 else "sell"
        state, _ = apply_fill(
            state,
            Execution(
                "BTC/USDT",
                side,
                0.01,
                50_000.0 + i,
                500.0 + i,
                0.5,
                "USDT",
                f"o{i}",
                f"c{i}",
                f"2026-03-01T12:{i // 60:02d}:{i % 60:02d}.000Z",
            ),
        )
    return StateCheckpoint(
        **{
            **state.__dict__,
            "open_orders": (
                OpenOrder(
                    client_order_id="tb1",
                    symbol="ETH/USDT",
                    side="buy",
                    amount=1.0,
                    created_at="2026-03-01T12:00:00.000Z",
                ),
            ),
        }
    )


def test_round_trip_is_lossless() -> None:
    state = sample_state()
    text, stored = encode_state(state)
    assert stored == state
    assert decode_state(text) == state
    assert decode_state(text.encode()) == state


def test_top_level_keys_are_exactly_the_contract() -> None:
    doc = json.loads(encode_state(sample_state())[0])
    assert list(doc) == TOP_LEVEL
    assert list(doc["stats"]) == ["realizedPnl", "totalTrades", "wins"]
    assert doc["schemaVersion"] == 1
    assert doc["positions"][0]["symbol"] == "BTC/USDT"


def test_next_checkpoint_is_monotonic() -> None:
    state = sample_state()
    following = state.next(reason="periodic", writer_pod="p2")
    assert following.checkpoint_seq == state.checkpoint_seq + 1
    assert following.reason == "periodic" and following.writer_pod == "p2"
    assert following.saved_at.endswith("Z")


def corrupt(mutate: object) -> str:
    doc = json.loads(encode_state(sample_state())[0])
    assert callable(mutate)
    mutate(doc)
    return json.dumps(doc)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "must be an object"),
        (corrupt(lambda d: d.update(schemaVersion=2)), "schemaVersion"),
        (corrupt(lambda d: d.pop("schemaVersion")), "schemaVersion"),
        (corrupt(lambda d: d.pop("positions")), "missing positions"),
        (corrupt(lambda d: d.update(restoredFromSeq=3)), "unexpected restoredFromSeq"),
        (corrupt(lambda d: d["stats"].update(restoredFromSeq=3)), "unexpected"),
        (corrupt(lambda d: d["positions"][0].update(amount=-1)), "amount"),
        (corrupt(lambda d: d["positions"][0].update(amount="1")), "amount"),
        (corrupt(lambda d: d["positions"].append(d["positions"][0])), "duplicate"),
        (corrupt(lambda d: d.update(checkpointSeq=-1)), "checkpointSeq"),
        (corrupt(lambda d: d["journal"][0].update(side="short")), "side"),
        (corrupt(lambda d: d.update(balances=[])), "balances"),
    ],
)
def test_corrupt_state_raises_a_clear_error(text: str, message: str) -> None:
    with pytest.raises(StateCorruptError, match=message):
        decode_state(text)


def test_journal_is_trimmed_oldest_first_under_the_size_guard() -> None:
    state = sample_state(fills=400)
    full, _ = encode_state(state)
    budget = len(full.encode()) // 2
    text, stored = encode_state(state, max_bytes=budget)
    assert len(text.encode()) <= budget
    assert 0 < len(stored.journal) < len(state.journal)
    assert stored.journal == state.journal[-len(stored.journal) :]  # newest kept
    assert stored.positions == state.positions and stored.open_orders == state.open_orders
    assert stored.stats == state.stats
    # Today's realized PnL survives trimming: it rides on the newest entry.
    assert day_realized_pnl(stored, "2026-03-01") == day_realized_pnl(state, "2026-03-01")
    assert decode_state(text) == stored


def test_positions_are_never_trimmed() -> None:
    positions = {
        f"C{i}/USDT": Position(f"C{i}/USDT", 1.0, 1.0, 1.0, "2026-03-01T00:00:00Z")
        for i in range(50)
    }
    state = StateCheckpoint(positions=positions, stats=Stats())
    with pytest.raises(StateTooLargeError):
        encode_state(state, max_bytes=500)


def test_configmap_budget_leaves_room_for_both_copies() -> None:
    assert CONFIGMAP_DOCUMENT_BUDGET_BYTES * 2 <= CONFIGMAP_SIZE_GUARD_BYTES < 1024 * 1024


def test_restore_prefers_current_then_previous_and_never_empty_on_corruption() -> None:
    good = encode_state(sample_state())[0]
    older = encode_state(sample_state(fills=1))[0]
    assert choose_restore(None, None).source == "empty"
    assert choose_restore(good, older).state == decode_state(good)
    fallback = choose_restore("{broken", older)
    assert fallback.source == "previous" and fallback.fell_back
    assert "unreadable" in fallback.problem
    assert choose_restore(None, older).problem == "state.json missing"
    with pytest.raises(StateCorruptError, match=r"no state\.prev\.json"):
        choose_restore("{broken", None)
    with pytest.raises(StateCorruptError, match="unreadable too"):
        choose_restore("{broken", "also broken")
