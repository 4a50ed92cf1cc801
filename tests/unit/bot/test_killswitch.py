"""The kill switch as pure functions: which mode is in force, what the TradingBot and the fleet
switch say, which orders the gate lets through, what flat means, and what is reported."""

from __future__ import annotations

from typing import Any

import pytest

from tradingbot.engine import OrderIntent
from tradingbot.killswitch import (
    MAX_SWITCH_VALUE_LENGTH,
    BotControl,
    ControlState,
    GateFacts,
    OrderKind,
    bot_control,
    cancels,
    flatten_intents,
    fleet_halt,
    is_flat,
    kill_switch_report,
    manages_exits,
    order_gate,
    order_kind,
    positions_summary,
    report_is_urgent,
)
from tradingbot.risk import check_exit_order
from tradingbot.state import OpenOrder, Position, StateCheckpoint
from tradingbot_api.constants import ANNOTATION_HALT, ANNOTATION_SUSPEND, HaltMode, effective_halt

TRUE, DRAIN, FLATTEN = HaltMode.TRUE, HaltMode.DRAIN, HaltMode.FLATTEN


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ((), None),
        ((None, None), None),
        (("", "  "), None),
        (("true", None), TRUE),
        ((None, "drain"), DRAIN),
        (("drain", "true"), TRUE),
        (("true", "flatten"), FLATTEN),
        (("drain", "flatten"), FLATTEN),
        (("flatten", "drain"), FLATTEN),
        (("drain", "drain"), DRAIN),
        ((" Drain ", None), DRAIN),
        (("TRUE", None), TRUE),
        (("yes", None), TRUE),  # a typo stops the bot
        (("fltten", "drain"), TRUE),  # ... and beats a drain
        (("false", None), TRUE),  # only removing the switch resumes
        (("flaten", "flatten"), FLATTEN),
    ],
)
def test_the_stronger_switch_wins_and_a_typo_stops(
    values: tuple[str | None, ...], expected: HaltMode | None
) -> None:
    assert effective_halt(*values) == expected


def tradingbot(
    annotations: dict[str, str] | None = None, *, suspend: Any = None, deleting: bool = False
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": "alpha", "annotations": annotations or {}}
    if deleting:
        metadata["deletionTimestamp"] = "2026-03-01T00:00:00Z"
    spec: dict[str, Any] = {"profile": "stable"}
    if suspend is not None:
        spec["suspend"] = suspend
    return {"metadata": metadata, "spec": spec}


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (tradingbot(), BotControl()),
        (tradingbot({ANNOTATION_HALT: "true"}), BotControl(halt="true")),
        (tradingbot({ANNOTATION_HALT: "drain"}), BotControl(halt="drain")),
        (tradingbot(suspend=True), BotControl(suspended=True, why_suspended="spec.suspend")),
        (tradingbot(suspend=False), BotControl()),
        (tradingbot(suspend="true"), BotControl()),  # the API server refuses a string anyway
        (
            tradingbot({ANNOTATION_SUSPEND: "true"}),
            BotControl(suspended=True, why_suspended=ANNOTATION_SUSPEND),
        ),
        (
            tradingbot({ANNOTATION_SUSPEND: " TRUE "}),
            BotControl(suspended=True, why_suspended=ANNOTATION_SUSPEND),
        ),
        (tradingbot({ANNOTATION_SUSPEND: "false"}), BotControl()),
        (tradingbot(deleting=True), BotControl(suspended=True, why_suspended="deleted")),
        (None, BotControl(suspended=True, why_suspended="deleted")),
        (
            tradingbot({ANNOTATION_HALT: "flatten"}, suspend=True),
            BotControl(halt="flatten", suspended=True, why_suspended="spec.suspend"),
        ),
    ],
    ids=[
        "nothing",
        "halt",
        "drain",
        "spec.suspend",
        "spec.suspend false",
        "spec.suspend not a boolean",
        "suspend annotation",
        "suspend annotation in capitals",
        "suspend annotation false",
        "being deleted",
        "gone",
        "halt and suspend",
    ],
)
def test_what_the_tradingbot_says(obj: dict[str, Any] | None, expected: BotControl) -> None:
    assert bot_control(obj) == expected


def test_switch_values_are_bounded() -> None:
    control = bot_control(tradingbot({ANNOTATION_HALT: "x" * 5000}))
    assert control.halt is not None and len(control.halt) == MAX_SWITCH_VALUE_LENGTH
    assert ControlState(bot=control).mode == TRUE


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (None, None),
        ({"metadata": {"name": "fleet"}}, None),
        ({"data": {}}, None),
        ({"data": {"halt": "flatten"}}, "flatten"),
        ({"data": {"other": "true"}}, None),
    ],
)
def test_what_the_fleet_switch_says(obj: dict[str, Any] | None, expected: str | None) -> None:
    assert fleet_halt(obj) == expected


@pytest.mark.parametrize(
    ("bot", "fleet", "mode", "source"),
    [
        (None, None, None, ""),
        ("true", None, TRUE, "bot"),
        (None, "drain", DRAIN, "fleet"),
        ("drain", "flatten", FLATTEN, "fleet"),
        ("flatten", "true", FLATTEN, "bot"),
        ("true", "true", TRUE, "bot"),
    ],
)
def test_the_state_names_the_mode_and_the_switch_that_set_it(
    bot: str | None, fleet: str | None, mode: HaltMode | None, source: str
) -> None:
    state = ControlState(bot=BotControl(halt=bot), fleet=fleet)
    assert (state.mode, state.source) == (mode, source)


OK = GateFacts(lease_valid=True)
ENTRY, EXIT = OrderKind.ENTRY, OrderKind.EXIT


@pytest.mark.parametrize(
    ("kind", "facts", "allowed", "check"),
    [
        (ENTRY, OK, True, ""),
        (EXIT, OK, True, ""),
        (ENTRY, GateFacts(lease_valid=False), False, "lease"),
        (EXIT, GateFacts(lease_valid=False), False, "lease"),
        (EXIT, GateFacts(lease_valid=False, mode=TRUE), False, "lease"),  # lease first
        (ENTRY, GateFacts(lease_valid=True, stopping=True), False, "stopping"),
        (EXIT, GateFacts(lease_valid=True, stopping=True), False, "stopping"),
        (ENTRY, GateFacts(lease_valid=True, suspended=True), False, "suspended"),
        (EXIT, GateFacts(lease_valid=True, suspended=True), False, "suspended"),
        (ENTRY, GateFacts(lease_valid=True, mode=TRUE), False, "halt"),
        (EXIT, GateFacts(lease_valid=True, mode=TRUE), False, "halt"),
        (ENTRY, GateFacts(lease_valid=True, mode=DRAIN), False, "drain"),
        (EXIT, GateFacts(lease_valid=True, mode=DRAIN), True, ""),
        (ENTRY, GateFacts(lease_valid=True, mode=FLATTEN), False, "flatten"),
        (EXIT, GateFacts(lease_valid=True, mode=FLATTEN), True, ""),
        (ENTRY, GateFacts(lease_valid=True, control_silent=True), False, "control_silent"),
        (EXIT, GateFacts(lease_valid=True, control_silent=True), True, ""),
        (ENTRY, GateFacts(lease_valid=True, write_failing=True), False, "state_write_failing"),
        (EXIT, GateFacts(lease_valid=True, write_failing=True), True, ""),
        (ENTRY, GateFacts(lease_valid=True, daily_loss_breached=True), False, "daily_loss"),
        (EXIT, GateFacts(lease_valid=True, daily_loss_breached=True), True, ""),
        (
            EXIT,
            GateFacts(lease_valid=True, mode=FLATTEN, control_silent=True, write_failing=True),
            True,
            "",
        ),
        (ENTRY, GateFacts(lease_valid=True, mode=DRAIN, control_silent=True), False, "drain"),
    ],
)
def test_the_order_gate(kind: OrderKind, facts: GateFacts, allowed: bool, check: str) -> None:
    verdict = order_gate(kind, facts)
    assert (verdict.allowed, verdict.check) == (allowed, check)
    assert verdict.lease_lost == (check == "lease")


def intent(side: str, reason: str = "signal") -> OrderIntent:
    return OrderIntent("BTC/USDT", side, 0.1, 60_000.0, reason)


@pytest.mark.parametrize(
    ("order", "kind"),
    [
        (intent("buy"), ENTRY),
        (intent("sell"), EXIT),
        (intent("sell", "stop_loss"), EXIT),
        (intent("sell", "take_profit"), EXIT),
        (intent("sell", "flatten"), EXIT),
    ],
)
def test_buys_enter_and_sells_exit(order: OrderIntent, kind: OrderKind) -> None:
    assert order_kind(order) == kind


@pytest.mark.parametrize(
    ("mode", "suspended", "manages", "cancelled"),
    [
        (None, False, True, ""),
        (None, True, False, ""),
        (TRUE, False, False, "entries"),
        (DRAIN, False, True, "entries"),
        (FLATTEN, False, True, "all"),
        (FLATTEN, True, False, "all"),
    ],
)
def test_what_each_mode_keeps_doing_and_cancels(
    mode: HaltMode | None, suspended: bool, manages: bool, cancelled: str
) -> None:
    assert manages_exits(mode, suspended) == manages
    assert cancels(mode) == cancelled


def truncate8(symbol: str, amount: float) -> float:
    return int(round(amount * 1e8, 6)) / 1e8


def position(symbol: str, amount: float) -> Position:
    return Position(symbol, amount, 100.0, 100.0, "2026-03-01T00:00:00Z")


def order(symbol: str, side: str = "buy") -> OpenOrder:
    return OpenOrder(
        client_order_id=f"tb-{symbol}",
        symbol=symbol,
        side=side,
        amount=1.0,
        created_at="2026-03-01T00:00:00Z",
        order_id="1",
        status="open",
    )


@pytest.mark.parametrize(
    ("positions", "orders", "flat"),
    [
        ({}, (), True),
        ({"BTC/USDT": position("BTC/USDT", 0.5)}, (), False),
        ({"BTC/USDT": position("BTC/USDT", 4e-9)}, (), True),  # dust below the precision
        ({}, (order("BTC/USDT"),), False),  # an order still settling
        (
            {"BTC/USDT": position("BTC/USDT", 4e-9), "ETH/USDT": position("ETH/USDT", 1e-8)},
            (),
            False,
        ),
    ],
    ids=["nothing", "a position", "dust", "an open order", "dust and a sellable bit"],
)
def test_flat_means_nothing_to_sell_and_nothing_open(
    positions: dict[str, Position], orders: tuple[OpenOrder, ...], flat: bool
) -> None:
    state = StateCheckpoint(positions=positions, open_orders=orders)
    assert is_flat(state, truncate8) == flat


def test_flatten_sells_every_sellable_position_with_a_price() -> None:
    state = StateCheckpoint(
        positions={
            "ETH/USDT": position("ETH/USDT", 2.123456789),
            "BTC/USDT": position("BTC/USDT", 0.5),
            "SOL/USDT": position("SOL/USDT", 3.0),  # no price this tick
            "DOT/USDT": position("DOT/USDT", 4e-9),  # dust
            "XRP/USDT": position("XRP/USDT", 10.0),  # its order is still settling
        },
        open_orders=(order("XRP/USDT", "sell"),),
    )
    prices = {"BTC/USDT": 60_000.0, "ETH/USDT": 3000.0, "DOT/USDT": 5.0, "XRP/USDT": 0.5}
    intents = flatten_intents(state, prices, truncate8)
    assert intents == [
        OrderIntent("BTC/USDT", "sell", 0.5, 60_000.0, "flatten"),
        OrderIntent("ETH/USDT", "sell", 2.12345678, 3000.0, "flatten"),
    ]
    assert positions_summary(state)["ETH/USDT"] == 2.123456789


@pytest.mark.parametrize(
    ("amount", "held", "price", "allowed", "check"),
    [
        (0.5, 0.5, 100.0, True, ""),
        (0.25, 0.5, 100.0, True, ""),
        (0.0, 0.5, 100.0, False, "exit_amount"),
        (0.6, 0.5, 100.0, False, "exit_exceeds_position"),
        (0.5, 0.0, 100.0, False, "exit_exceeds_position"),
        (0.5, 0.5, 0.0, False, "exit_price"),
    ],
)
def test_the_checks_an_exit_still_passes(
    amount: float, held: float, price: float, allowed: bool, check: str
) -> None:
    verdict = check_exit_order(amount, held, price)
    assert (verdict.allowed, verdict.check) == (allowed, check)


@pytest.mark.parametrize(
    ("mode", "observed", "flat", "report"),
    [
        (None, None, True, {"mode": "", "observedAt": None, "flat": True}),
        (None, "2026-03-01T00:00:00.000Z", False, {"mode": "", "observedAt": None, "flat": False}),
        (
            DRAIN,
            "2026-03-01T00:00:00.000Z",
            False,
            {"mode": "drain", "observedAt": "2026-03-01T00:00:00.000Z", "flat": False},
        ),
        (
            TRUE,
            "2026-03-01T00:00:00.000Z",
            True,
            {"mode": "true", "observedAt": "2026-03-01T00:00:00.000Z", "flat": True},
        ),
    ],
)
def test_the_kill_switch_report(
    mode: HaltMode | None, observed: str | None, flat: bool, report: dict[str, Any]
) -> None:
    assert kill_switch_report(mode, observed, flat) == report


NONE_FLAT = {"mode": "", "observedAt": None, "flat": True}
NONE_HELD = {"mode": "", "observedAt": None, "flat": False}
DRAIN_HELD = {"mode": "drain", "observedAt": "t", "flat": False}
DRAIN_FLAT = {"mode": "drain", "observedAt": "t", "flat": True}


@pytest.mark.parametrize(
    ("previous", "current", "urgent"),
    [
        (None, NONE_FLAT, False),  # first report in normal trading: the usual pace
        (None, DRAIN_HELD, True),  # first report under a kill switch
        (NONE_FLAT, NONE_HELD, False),  # a round trip in normal trading
        (NONE_HELD, DRAIN_HELD, True),  # a mode arrives
        (DRAIN_HELD, DRAIN_FLAT, True),  # flat under a mode
        (DRAIN_FLAT, NONE_FLAT, True),  # the mode is removed
        (DRAIN_FLAT, DRAIN_FLAT, False),  # nothing new
    ],
)
def test_which_reports_skip_the_status_rate_limit(
    previous: dict[str, Any] | None, current: dict[str, Any], urgent: bool
) -> None:
    assert report_is_urgent(previous, current) == urgent
