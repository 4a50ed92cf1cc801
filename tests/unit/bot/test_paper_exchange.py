"""Paper fills (price, slippage, fees, balances, PnL), the ledger, and the seeded feed."""

from __future__ import annotations

import itertools
import math
import statistics

import pytest

from tradingbot.exchange import FILLED, PROFILE_VOLATILITY, REJECTED, SeededPriceFeed
from tradingbot.exchange.paper import PaperExchange
from tradingbot.ledger import Execution, apply_fill, day_realized_pnl, equity, mark
from tradingbot.state import StateCheckpoint


def clock() -> str:
    return "2026-03-01T12:00:00.000Z"


def paper(usdt: float = 10_000.0) -> PaperExchange:
    ex = PaperExchange({"USDT": usdt}, fee_rate=0.001, slippage_pct=0.1, clock=clock)
    ex.update_prices({"BTC/USDT": 50_000.0})
    return ex


async def test_market_buy_fills_at_price_plus_slippage_and_pays_fee() -> None:
    ex = paper()
    result = await ex.market_order("BTC/USDT", "buy", 0.1, "c1")
    assert result.status == FILLED and result.execution is not None
    fill = result.execution
    assert fill.price == pytest.approx(50_050.0)
    assert fill.cost == pytest.approx(5_005.0)
    assert fill.fee == pytest.approx(5.005)
    assert fill.fee_currency == "USDT"
    assert ex.balances["USDT"] == pytest.approx(10_000 - 5_005 - 5.005)
    assert ex.balances["BTC"] == pytest.approx(0.1)
    assert await ex.fetch_order("BTC/USDT", client_order_id="c1") == result


async def test_round_trip_realizes_pnl_net_of_fees_and_slippage() -> None:
    ex = paper()
    await ex.market_order("BTC/USDT", "buy", 0.1, "c1")
    ex.update_prices({"BTC/USDT": 55_000.0})
    result = await ex.market_order("BTC/USDT", "sell", 0.1, "c2")
    assert result.execution is not None
    assert result.execution.price == pytest.approx(54_945.0)
    proceeds = 0.1 * 54_945.0 * (1 - 0.001)
    assert ex.realized_pnl == pytest.approx(proceeds - (5_005 + 5.005))
    assert "BTC" not in ex.balances
    assert ex.balances["USDT"] == pytest.approx(10_000 + ex.realized_pnl)
    assert ex.fees_paid == pytest.approx(5.005 + 0.1 * 54_945.0 * 0.001)


async def test_refusals_are_results_not_exceptions() -> None:
    ex = paper(usdt=100.0)
    broke = await ex.market_order("BTC/USDT", "buy", 0.1, "c1")
    assert broke.status == REJECTED and broke.error_type == "InsufficientFunds"
    oversell = await ex.market_order("BTC/USDT", "sell", 1.0, "c2")
    assert oversell.error_type == "InsufficientFunds"
    assert (await ex.market_order("BTC/USDT", "buy", -1, "c3")).error_type == "InvalidOrder"
    assert (await ex.market_order("ETH/USDT", "buy", 1, "c4")).error_type == "BadSymbol"
    assert ex.balances == {"USDT": 100.0}


def test_amount_precision_truncates() -> None:
    assert paper().amount_to_precision("BTC/USDT", 0.123456789) == 0.12345678


async def test_ledger_agrees_with_the_paper_exchange() -> None:
    ex = paper()
    state = StateCheckpoint(balances=dict(ex.balances))
    for side, price in (("buy", 50_000.0), ("buy", 48_000.0), ("sell", 52_000.0)):
        ex.update_prices({"BTC/USDT": price})
        amount = 0.05 if side == "buy" else 0.1
        result = await ex.market_order("BTC/USDT", side, amount, f"c-{price}")
        assert result.execution is not None
        state, _ = apply_fill(state, result.execution)
    assert state.stats.realized_pnl == pytest.approx(ex.realized_pnl)
    assert state.stats.total_trades == 3
    assert state.stats.wins == 1
    assert state.positions == {}
    assert [f.seq for f in state.journal] == [1, 2, 3]


def test_ledger_average_cost_and_partial_exit() -> None:
    state = StateCheckpoint(balances={"USDT": 1000.0})
    buy = Execution(
        "ETH/USDT", "buy", 2.0, 100.0, 200.0, 0.2, "USDT", "1", "a", "2026-03-01T10:00:00.000Z"
    )
    state, _ = apply_fill(state, buy)
    position = state.positions["ETH/USDT"]
    assert position.entry_price == pytest.approx(100.1)
    sell = Execution(
        "ETH/USDT", "sell", 1.0, 110.0, 110.0, 0.11, "USDT", "2", "b", "2026-03-01T11:00:00.000Z"
    )
    state, fill = apply_fill(state, sell)
    assert fill.realized_pnl == pytest.approx(110 - 0.11 - 100.1)
    assert state.positions["ETH/USDT"].amount == pytest.approx(1.0)
    assert day_realized_pnl(state, "2026-03-01") == pytest.approx(fill.realized_pnl)
    assert day_realized_pnl(state, "2026-03-02") == 0.0
    marked = mark(state, {"ETH/USDT": 120.0})
    assert equity(marked, "USDT") == pytest.approx(1000.0 + 120.0)


def test_fee_in_base_currency_reduces_the_amount_received() -> None:
    buy = Execution(
        "BTC/USDT", "buy", 1.0, 100.0, 100.0, 0.001, "BTC", "1", "a", "2026-03-01T10:00:00.000Z"
    )
    state, _ = apply_fill(StateCheckpoint(), buy)
    assert state.positions["BTC/USDT"].amount == pytest.approx(0.999)


async def test_seeded_feed_is_deterministic_per_profile_seed_and_symbol() -> None:
    a = SeededPriceFeed("medium", seed=7)
    b = SeededPriceFeed("medium", seed=7)
    c = SeededPriceFeed("medium", seed=8)
    symbols = ["BTC/USDT", "ETH/USDT"]
    wa, wb, wc = [await f.warmup(symbols, 50) for f in (a, b, c)]
    assert wa == wb and wa != wc
    assert wa["BTC/USDT"][0] == pytest.approx(60_000.0) and len(wa["BTC/USDT"]) == 50
    assert await a.next_prices(symbols) == await b.next_prices(symbols)


async def test_seeded_feed_continues_from_anchors() -> None:
    feed = SeededPriceFeed("stable", anchors={"BTC/USDT": 61_234.0})
    history = await feed.warmup(["BTC/USDT"], 3)
    assert history["BTC/USDT"][0] == pytest.approx(61_234.0)


def test_volatility_rises_from_stable_to_meme() -> None:
    def realized(profile: str) -> float:
        feed = SeededPriceFeed(profile, seed=1)
        prices = [feed.step("BTC/USDT") for _ in range(3000)]
        return statistics.pstdev(math.log(b / a) for a, b in itertools.pairwise(prices))

    measured = [realized(p) for p in ("stable", "medium", "volatile", "meme")]
    assert measured == sorted(measured)
    assert list(PROFILE_VOLATILITY) == ["stable", "medium", "volatile", "meme"]
    assert measured[0] < measured[-1] / 5
