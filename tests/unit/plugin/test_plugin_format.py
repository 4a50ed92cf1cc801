"""Pure formatting of the plugin: ages, the PENDING column, status rows, positions, audit."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml

from tradingbot_api.tables import render_table
from tradingbot_audit.tables import audit_table
from tradingbot_plugin.format import (
    as_list,
    balance_rows,
    feed_lines,
    format_age,
    format_amount,
    format_money,
    pending_text,
    position_rows,
    render_positions,
    render_summary,
    status_row,
    status_table,
    summary_from_local,
)

NOW = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)


def ago(**delta: float) -> str:
    moment = NOW - timedelta(**delta)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if moment.microsecond else "%Y-%m-%dT%H:%M:%SZ")


def later(**delta: float) -> str:
    return (NOW + timedelta(**delta)).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize(
    ("age", "text"),
    [
        pytest.param(timedelta(seconds=0), "0s", id="a new object is 0s old"),
        pytest.param(timedelta(seconds=119), "119s", id="under two minutes counts seconds"),
        pytest.param(
            timedelta(minutes=3, seconds=20), "3m20s", id="under ten minutes adds seconds"
        ),
        pytest.param(timedelta(minutes=5), "5m", id="whole minutes drop the seconds"),
        pytest.param(timedelta(minutes=95), "95m", id="under three hours counts minutes"),
        pytest.param(timedelta(hours=5, minutes=3), "5h3m", id="under eight hours adds minutes"),
        pytest.param(timedelta(hours=30), "30h", id="under two days counts hours"),
        pytest.param(timedelta(days=2, hours=4), "2d4h", id="under eight days adds hours"),
        pytest.param(timedelta(days=400), "400d", id="under two years counts days"),
        pytest.param(timedelta(days=365 * 3 + 10), "3y10d", id="years add days"),
        pytest.param(timedelta(seconds=120), "2m", id="two minutes"),
        pytest.param(timedelta(minutes=10, seconds=30), "10m", id="ten minutes drop seconds"),
        pytest.param(timedelta(hours=8, minutes=1), "8h", id="eight hours drop minutes"),
        pytest.param(timedelta(hours=48), "2d", id="two days"),
        pytest.param(timedelta(days=8, hours=1), "8d", id="eight days drop hours"),
        pytest.param(timedelta(days=730), "2y", id="two years"),
        pytest.param(timedelta(days=365 * 9 + 3), "9y", id="eight years and more drop days"),
        pytest.param(timedelta(seconds=-5), "<invalid>", id="a future timestamp is clock skew"),
    ],
)
def test_ages_read_like_kubectl_get(age: timedelta, text: str) -> None:
    assert format_age(NOW - age, NOW) == text


def test_an_object_without_creation_time_has_an_unknown_age() -> None:
    assert format_age(None, NOW) == "<unknown>"


@pytest.mark.parametrize(
    ("pending", "coalesce", "text"),
    [
        pytest.param(None, 2, "-", id="nothing pending shows a dash"),
        pytest.param({}, 2, "-", id="an empty pending action shows a dash"),
        pytest.param(
            {"action": "restart", "lastRequestedAt": ago(seconds=1)},
            5,
            "restart in 4s",
            id="an open coalescing window counts down",
        ),
        pytest.param(
            {"action": "restart", "lastRequestedAt": ago(seconds=1.5)},
            2,
            "restart in 1s",
            id="the countdown rounds up",
        ),
        pytest.param(
            {"action": "stop", "lastRequestedAt": ago(seconds=10)},
            2,
            "stop",
            id="a closed window shows the bare action",
        ),
        pytest.param(
            {"action": "restart", "firstRequestedAt": ago(seconds=1)},
            10,
            "restart in 9s",
            id="without lastRequestedAt the first request counts",
        ),
        pytest.param(
            {
                "action": "restart",
                "lastRequestedAt": ago(minutes=5),
                "notBefore": later(minutes=12),
            },
            2,
            "restart deferred until 2025-01-01T12:12:00Z",
            id="a rate-limited restart says until when",
        ),
        pytest.param(
            {"action": "restart", "lastRequestedAt": ago(minutes=5), "notBefore": ago(seconds=1)},
            2,
            "restart",
            id="a past notBefore no longer defers",
        ),
        pytest.param(
            {"action": "restart", "lastRequestedAt": ago(seconds=1), "startedAt": ago(seconds=0)},
            2,
            "restart in progress",
            id="a started restart is in progress",
        ),
        pytest.param(
            {"action": "start", "lastRequestedAt": "garbage"},
            2,
            "start",
            id="an unreadable timestamp does not break the column",
        ),
    ],
)
def test_pending_column(pending: dict[str, Any] | None, coalesce: float, text: str) -> None:
    assert pending_text(pending, coalesce, NOW) == text


def bot(name: str = "stable", namespace: str = "trading", **status: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "creationTimestamp": ago(hours=2),
            "annotations": {},
            "managedFields": [{"manager": "x"}],
        },
        "spec": {
            "profile": "stable",
            "exchange": {"id": "binance"},
            "restartPolicy": {"coalesceSeconds": 3},
        },
        "status": status,
    }


def test_a_running_bot_fills_every_column() -> None:
    running = bot(
        phase="Running",
        conditions=[
            {"type": "Progressing", "status": "False"},
            {"type": "Ready", "status": "True"},
        ],
        positions={"open": 2, "notional": 1500.0},
        pnl={"realized": 12.345, "unrealized": -1.0},
        restarts={"total": 4},
        pendingAction={"action": "restart", "lastRequestedAt": ago(seconds=1)},
        container={"restarts": 3},
        trades={"total": 17, "wins": 9},
        state={"checkpointSeq": 42, "savedAt": ago(seconds=90)},
    )
    assert status_row(running, NOW) == [
        "stable",
        "stable",
        "binance",
        "Running",
        "True",
        "3",
        "2",
        "+12.35",
        "17",
        "4",
        "restart in 2s",
        "#42 90s ago",
        "120m",
    ]


def test_a_bot_the_operator_has_not_seen_shows_dashes_and_zeros() -> None:
    fresh = bot()
    fresh.pop("status")
    assert status_row(fresh, NOW) == [
        "stable",
        "stable",
        "binance",
        "-",
        "-",
        "0",
        "0",
        "0.00",
        "0",
        "0",
        "-",
        "-",
        "120m",
    ]


def test_a_halt_not_yet_acted_on_is_visible_in_the_phase() -> None:
    halted = bot(phase="Running")
    halted["metadata"]["annotations"]["trading.r7.dev/halt"] = "true"
    assert status_row(halted, NOW)[3] == "Running (halt requested)"
    halted["status"]["phase"] = "Halted"
    assert status_row(halted, NOW)[3] == "Halted"
    halted["status"] = {}
    assert status_row(halted, NOW)[3] == "halt requested"


def test_all_namespaces_adds_a_namespace_column_and_sorts_by_namespace_then_name() -> None:
    headers, rows = status_table(
        [bot("meme", "b"), bot("volatile", "a"), bot("medium", "b")], NOW, with_namespace=True
    )
    assert headers[:3] == ["NAMESPACE", "NAME", "PROFILE"]
    assert headers[-3:] == ["PENDING", "CHECKPOINT", "AGE"]
    assert [(r[0], r[1]) for r in rows] == [("a", "volatile"), ("b", "medium"), ("b", "meme")]


def test_one_namespace_has_no_namespace_column() -> None:
    headers, rows = status_table([bot()], NOW, with_namespace=False)
    assert headers == [
        "NAME",
        "PROFILE",
        "EXCHANGE",
        "PHASE",
        "READY",
        "CRASHES",
        "POSITIONS",
        "PNL",
        "TRADES",
        "RESTARTS",
        "PENDING",
        "CHECKPOINT",
        "AGE",
    ]
    assert len(rows[0]) == len(headers)


def test_tables_align_columns_without_trailing_spaces() -> None:
    text = render_table(["NAME", "PHASE"], [["a", "Running"], ["longer-name", "-"]])
    assert text.splitlines() == [
        "NAME          PHASE",
        "a             Running",
        "longer-name   -",
    ]


@pytest.mark.parametrize(
    ("value", "money", "amount"),
    [
        pytest.param(0, "0.00", "0", id="zero has no sign"),
        pytest.param(-0.001, "0.00", "-0.001", id="a rounding to zero is not negative zero"),
        pytest.param(12.5, "+12.50", "12.5", id="gains carry a plus"),
        pytest.param(-3.333, "-3.33", "-3.333", id="losses carry a minus"),
        pytest.param(0.00012345, "0.00", "0.00012345", id="small amounts keep their digits"),
        pytest.param("n/a", "0.00", "0", id="non-numbers read as zero"),
        pytest.param(True, "0.00", "0", id="booleans are not numbers"),
    ],
)
def test_number_formats(value: Any, money: str, amount: str) -> None:
    assert format_money(value) == money
    assert format_amount(value) == amount


def test_json_list_output_is_a_kubectl_list_without_managed_fields() -> None:
    listed = as_list([bot("b"), bot("a")])
    assert listed["kind"] == "List"
    assert [i["metadata"]["name"] for i in listed["items"]] == ["a", "b"]
    assert all("managedFields" not in i["metadata"] for i in listed["items"])
    json.dumps(listed)
    yaml.safe_dump(listed)


STATE = {
    "schemaVersion": 1,
    "checkpointSeq": 118,
    "savedAt": "2025-01-01T11:59:00Z",
    "reason": "fill",
    "writerPod": "stable-abc",
    "positions": [
        {
            "symbol": "ETH/USDT",
            "side": "long",
            "amount": 0.5,
            "entryPrice": 3000.0,
            "markPrice": 3100.0,
            "openedAt": "2025-01-01T10:00:00Z",
        },
        {
            "symbol": "BTC/USDT",
            "side": "long",
            "amount": 0.01,
            "entryPrice": 65000.0,
            "markPrice": 64000.0,
            "openedAt": "2025-01-01T09:00:00Z",
        },
    ],
    "balances": {"USDT": 8000.125, "BTC": 0.01, "ETH": 0.5},
    "stats": {"realizedPnl": 12.0, "totalTrades": 9, "wins": 5},
    "openOrders": [],
    "journal": [],
}


def test_positions_are_listed_by_symbol_with_notional_and_unrealized_pnl() -> None:
    assert position_rows(STATE) == [
        ["BTC/USDT", "long", "0.01", "65000", "64000", "640.00", "-10.00", "2025-01-01T09:00:00Z"],
        ["ETH/USDT", "long", "0.5", "3000", "3100", "1550.00", "+50.00", "2025-01-01T10:00:00Z"],
    ]


def test_positions_keyed_by_symbol_are_read_too() -> None:
    state = {"positions": {"SOL/USDT": {"amount": 2, "entryPrice": 100, "markPrice": 110}}}
    assert position_rows(state)[0][:3] == ["SOL/USDT", "long", "2"]


def test_balances_are_sorted_by_currency() -> None:
    assert balance_rows(STATE) == [["BTC", "0.01"], ["ETH", "0.5"], ["USDT", "8000.125"]]


def test_positions_view_shows_status_state_and_tables() -> None:
    running = bot(
        phase="Running",
        positions={"open": 2, "notional": 2190.0},
        pnl={"realized": 12.0, "unrealized": 40.0},
        trades={"total": 9, "wins": 5},
    )
    text = render_positions(running, STATE, None)
    assert "tradingbot stable in namespace trading: phase Running" in text
    assert "positions: 2 open, notional 2190.00" in text
    assert "pnl: realized +12.00, unrealized +40.00" in text
    assert "trades: 9 total, 5 wins" in text
    assert "checkpoint 118" in text
    assert "SYMBOL" in text and "CURRENCY" in text
    assert "note:" not in text


def test_positions_view_without_state_falls_back_to_status_symbols_and_says_why() -> None:
    running = bot(phase="Running", positions={"open": 1, "symbols": ["BTC/USDT"]})
    text = render_positions(running, None, "not allowed to read configmap stable-state")
    assert "BTC/USDT" in text
    assert text.rstrip().endswith("note: not allowed to read configmap stable-state")


def test_an_empty_state_says_no_open_positions() -> None:
    text = render_positions(bot(), {"positions": [], "balances": {}}, None)
    assert "no open positions" in text


def test_audit_table_shows_one_line_per_event_and_shortens_long_cells() -> None:
    events = [
        {
            "seq": 2,
            "timestamp": "2025-01-01T12:00:00.000000Z",
            "severity": "critical",
            "event_type": "halt",
            "source": "plugin",
            "target": "meme",
            "user_id": "alice",
            "action": "x" * 100,
        },
        {
            "seq": 1,
            "timestamp": "2025-01-01T11:00:00.000000Z",
            "severity": "info",
            "event_type": "trade",
            "source": "bot",
            "target": "BTC/USDT",
            "user_id": None,
            "action": "fill\nwith newline",
        },
    ]
    lines = audit_table(events).splitlines()
    assert lines[0].split() == [
        "SEQ",
        "TIMESTAMP",
        "SEVERITY",
        "TYPE",
        "SOURCE",
        "TARGET",
        "USER",
        "ACTION",
    ]
    assert len(lines) == 3
    assert lines[1].endswith("x" * 59 + "…")
    assert lines[2].split()[6:] == ["-", "fill", "with", "newline"]


def test_local_summary_is_reshaped_to_the_audit_api_names() -> None:
    local = {
        "total": 3,
        "first_seq": 1,
        "by_event_type": {"restart": 2, "halt": 1},
        "by_severity": {"info": 3},
        "by_source": {"operator": 3},
        "by_target": {"a": 3},
    }
    assert summary_from_local(local) == {
        "total": 3,
        "by_type": {"restart": 2, "halt": 1},
        "by_severity": {"info": 3},
        "by_source": {"operator": 3},
        "by_target": {"a": 3},
    }


def test_summary_renders_a_total_and_one_table_per_dimension() -> None:
    text = render_summary(
        {
            "total": 3,
            "by_type": {"restart": 2, "halt": 1},
            "by_severity": {"info": 3},
            "by_source": {},
            "by_target": {},
        }
    )
    assert text.startswith("3 events\n")
    assert "TYPE      COUNT" in text and "restart   2" in text
    assert "SOURCE" not in text


def test_the_feed_shows_the_newest_events_about_bots_newest_last() -> None:
    events = [
        {
            "involvedObject": {"kind": "TradingBot", "name": f"bot-{i}"},
            "reason": reason,
            "message": "m " * 80,
            "lastTimestamp": ago(seconds=60 - i),
        }
        for i, reason in enumerate(["Started", "RestartStarted", "Halted", "CrashLoop"] * 2)
    ]
    events.append({"involvedObject": {"kind": "Pod", "name": "x"}, "reason": "Pulled"})
    lines = feed_lines(events, NOW, limit=3)
    assert len(lines) == 3
    assert [line.split()[3] for line in lines] == ["RestartStarted:", "Halted:", "CrashLoop:"]
    assert all(len(line) < 160 for line in lines)
