"""Text the plugin prints: the status table, pending actions and countdowns, ages, money and
amounts, the event feed, positions and balances, audit tables and summaries, JSON and YAML.

Pure functions that take data and a clock and return text, so they are table-tested without
a cluster.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import yaml

from tradingbot_api.constants import DEFAULT_COALESCE_SECONDS, ConditionType, Phase
from tradingbot_api.tables import render_table
from tradingbot_api.times import kube_time, parse_time_or_none
from tradingbot_audit.tables import count_table
from tradingbot_plugin.core import _mapping, _number
from tradingbot_plugin.patches import is_halted, is_suspended

STATUS_COLUMNS: Final = (
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
)
# Events shown under the live table: what just happened (restart, halt, crash).
FEED_LENGTH: Final = 6


# kubectl's HumanDuration: (unit, its seconds, the finer unit shown beside it, its seconds,
# whole units below this many, "unit+finer" below this many); under two minutes: seconds.
_AGE_STEPS: Final = (
    ("s", 1, "", 1, 120, 0),
    ("m", 60, "s", 1, 180, 10),
    ("h", 3600, "m", 60, 48, 8),
    ("d", 86400, "h", 3600, 365 * 2, 8),
    ("y", 86400 * 365, "d", 86400, math.inf, 8),
)


def format_age(created: datetime | None, now: datetime) -> str:
    """Age as `kubectl get` prints it (its HumanDuration): 45s, 3m20s, 95m, 5h3m, 2d4h, 400d."""
    if created is None:
        return "<unknown>"
    seconds = int((now - created).total_seconds())
    if seconds < 0:
        # Clock skew between this machine and the API server: kubectl shows a fixed word.
        return "<invalid>"
    for unit, size, rest_unit, rest_size, whole_below, split_below in _AGE_STEPS:
        amount, rest = divmod(seconds // rest_size, size // rest_size)
        if seconds < split_below * size:
            return f"{amount}{unit}{rest}{rest_unit}" if rest else f"{amount}{unit}"
        if seconds < whole_below * size:
            return f"{amount}{unit}"
    raise AssertionError("the last step takes every age")


# -- status formatting ------------------------------------------------------------------------


def format_money(value: object) -> str:
    """Signed with two decimals; zero has no sign (and no "-0.00")."""
    amount = round(_number(value), 2)
    return "0.00" if amount == 0 else f"{amount:+.2f}"


def format_amount(value: object) -> str:
    """Quantities and prices of crypto assets: up to 8 decimals, no trailing zeros or exponent."""
    amount = _number(value)
    text = f"{amount:.8f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


def pending_text(pending: Mapping[str, Any] | None, coalesce_seconds: float, now: datetime) -> str:
    """The PENDING column: what the operator will do next, and when.

    `restart in 3s` while the coalescing window (lastRequestedAt + coalesceSeconds) is open,
    `restart deferred until T` while the rate limit holds it back (notBefore), `restart in
    progress` once started, and the bare action when it is due.
    """
    if not pending or not pending.get("action"):
        return "-"
    action = str(pending["action"])
    if pending.get("startedAt"):
        return f"{action} in progress"
    not_before = parse_time_or_none(pending.get("notBefore"))
    if not_before is not None and not_before > now:
        return f"{action} deferred until {kube_time(not_before)}"
    last = parse_time_or_none(pending.get("lastRequestedAt")) or parse_time_or_none(
        pending.get("firstRequestedAt")
    )
    if last is not None:
        remaining = (last + timedelta(seconds=coalesce_seconds) - now).total_seconds()
        if remaining > 0:
            return f"{action} in {math.ceil(remaining)}s"
    return action


def _pending(bot: Mapping[str, Any]) -> Mapping[str, Any] | None:
    pending = _mapping(bot.get("status")).get("pendingAction")
    return pending if isinstance(pending, Mapping) else None


def _coalesce_seconds(bot: Mapping[str, Any]) -> float:
    policy = _mapping(_mapping(bot.get("spec")).get("restartPolicy"))
    value = policy.get("coalesceSeconds", DEFAULT_COALESCE_SECONDS)
    return _number(value) if value is not None else float(DEFAULT_COALESCE_SECONDS)


def ready_text(status: Mapping[str, Any]) -> str:
    for condition in status.get("conditions") or []:
        if isinstance(condition, Mapping) and condition.get("type") == ConditionType.READY:
            return str(condition.get("status") or "-")
    return "-"


def status_row(bot: Mapping[str, Any], now: datetime) -> list[str]:
    """One row of the status table (without NAMESPACE), tolerant of a status not written yet."""
    meta = _mapping(bot.get("metadata"))
    spec = _mapping(bot.get("spec"))
    status = _mapping(bot.get("status"))
    phase = str(status.get("phase") or "-")
    if is_halted(bot) and phase != Phase.HALTED:
        # The kill switch is set but the operator has not reported it yet: say so, it matters.
        phase = "halt requested" if phase == "-" else f"{phase} (halt requested)"
    return [
        str(meta.get("name", "")),
        str(spec.get("profile") or "-"),
        str(_mapping(spec.get("exchange")).get("id") or "-"),
        phase,
        ready_text(status),
        str(int(_number(_mapping(status.get("container")).get("restarts")))),
        str(int(_number(_mapping(status.get("positions")).get("open")))),
        format_money(_mapping(status.get("pnl")).get("realized")),
        str(int(_number(_mapping(status.get("trades")).get("total")))),
        str(int(_number(_mapping(status.get("restarts")).get("total")))),
        pending_text(_pending(bot), _coalesce_seconds(bot), now),
        checkpoint_text(_mapping(status.get("state")), now),
        format_age(parse_time_or_none(meta.get("creationTimestamp")), now),
    ]


def checkpoint_text(state: Mapping[str, Any], now: datetime) -> str:
    """The last checkpoint: its sequence number and how long ago it was saved."""
    seq = state.get("checkpointSeq")
    if seq is None:
        return "-"
    saved = parse_time_or_none(state.get("savedAt"))
    return f"#{seq} {format_age(saved, now)} ago" if saved else f"#{seq}"


def feed_lines(
    events: Iterable[Mapping[str, Any]], now: datetime, limit: int = FEED_LENGTH
) -> list[str]:
    """The newest Events about TradingBots, newest last, one line each."""

    def when(event: Mapping[str, Any]) -> datetime:
        stamp = event.get("lastTimestamp") or event.get("eventTime") or ""
        return parse_time_or_none(stamp) or datetime.min.replace(tzinfo=UTC)

    about_bots = [
        e for e in events if _mapping(e.get("involvedObject")).get("kind") == "TradingBot"
    ]
    lines = []
    for event in sorted(about_bots, key=when)[-limit:]:
        target = _mapping(event.get("involvedObject")).get("name", "")
        message = " ".join(str(event.get("message") or "").split())
        if len(message) > 100:
            message = message[:99] + "…"
        lines.append(
            f"{format_age(when(event), now):>5} ago  {target:<16} {event.get('reason', '')}: "
            f"{message}"
        )
    return lines


def _sort_key(bot: Mapping[str, Any]) -> tuple[str, str]:
    meta = _mapping(bot.get("metadata"))
    return (str(meta.get("namespace", "")), str(meta.get("name", "")))


def status_table(
    bots: Iterable[Mapping[str, Any]], now: datetime, *, with_namespace: bool
) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the status table, sorted by namespace and name."""
    headers = (["NAMESPACE"] if with_namespace else []) + list(STATUS_COLUMNS)
    rows = []
    for bot in sorted(bots, key=_sort_key):
        row = status_row(bot, now)
        if with_namespace:
            row.insert(0, str(_mapping(bot.get("metadata")).get("namespace", "")))
        rows.append(row)
    return headers, rows


def strip_server_fields(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The object without managedFields, as kubectl prints it by default."""
    result = dict(obj)
    meta = dict(_mapping(result.get("metadata")))
    meta.pop("managedFields", None)
    result["metadata"] = meta
    return result


def as_list(items: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "List",
        "items": [strip_server_fields(i) for i in sorted(items, key=_sort_key)],
    }


def dump(obj: Any, output: str) -> str:
    if output == "yaml":
        return yaml.safe_dump(obj, sort_keys=False, default_flow_style=False)
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


def _render_status(
    bots: Iterable[Mapping[str, Any]], now: datetime, *, with_namespace: bool
) -> str:
    headers, rows = status_table(bots, now, with_namespace=with_namespace)
    return render_table(headers, rows)


def _no_bots_message(namespace: str | None) -> str:
    where = f"in namespace {namespace}" if namespace else "in any namespace"
    return f"No tradingbots found {where}."


# -- positions formatting ---------------------------------------------------------------------

POSITION_COLUMNS: Final = (
    "SYMBOL",
    "SIDE",
    "AMOUNT",
    "ENTRY",
    "MARK",
    "NOTIONAL",
    "UNREALIZED",
    "OPENED",
)


def state_positions(state: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Positions of a state document: a list (schema) or a map by symbol (tolerated)."""
    raw = state.get("positions")
    if isinstance(raw, Mapping):
        return [{"symbol": symbol, **_mapping(value)} for symbol, value in sorted(raw.items())]
    if isinstance(raw, list):
        return sorted(
            (p for p in raw if isinstance(p, Mapping)), key=lambda p: str(p.get("symbol", ""))
        )
    return []


def position_rows(state: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for position in state_positions(state):
        amount = _number(position.get("amount"))
        entry = _number(position.get("entryPrice"))
        mark = _number(position.get("markPrice"))
        rows.append(
            [
                str(position.get("symbol", "-")),
                str(position.get("side", "long")),
                format_amount(amount),
                format_amount(entry),
                format_amount(mark),
                f"{amount * mark:.2f}",
                format_money(amount * (mark - entry)),
                str(position.get("openedAt") or "-"),
            ]
        )
    return rows


def balance_rows(state: Mapping[str, Any]) -> list[list[str]]:
    balances = _mapping(state.get("balances"))
    return [[str(currency), format_amount(amount)] for currency, amount in sorted(balances.items())]


def positions_summary(bot: Mapping[str, Any]) -> list[str]:
    """Header lines of `positions`: what the status says."""
    meta = _mapping(bot.get("metadata"))
    status = _mapping(bot.get("status"))
    positions = _mapping(status.get("positions"))
    pnl = _mapping(status.get("pnl"))
    trades = _mapping(status.get("trades"))
    lines = [
        f"tradingbot {meta.get('name')} in namespace {meta.get('namespace')}: "
        f"phase {status.get('phase') or '-'}"
        + (", halted (kill switch set)" if is_halted(bot) else "")
        + (", suspended" if is_suspended(bot) else ""),
        f"positions: {int(_number(positions.get('open')))} open, notional "
        f"{_number(positions.get('notional')):.2f}",
        f"pnl: realized {format_money(pnl.get('realized'))}, unrealized "
        f"{format_money(pnl.get('unrealized'))}",
        f"trades: {int(_number(trades.get('total')))} total, "
        f"{int(_number(trades.get('wins')))} wins",
    ]
    state = _mapping(status.get("state"))
    if state:
        lines.append(
            f"state: backend {state.get('backend') or '-'}, checkpoint "
            f"{state.get('checkpointSeq', '-')}, saved {state.get('savedAt') or '-'}"
        )
    return lines


def render_positions(
    bot: Mapping[str, Any], state: Mapping[str, Any] | None, note: str | None
) -> str:
    parts = ["\n".join(positions_summary(bot))]
    if state is not None:
        parts.append(
            f"state.json: checkpoint {state.get('checkpointSeq', '-')} saved "
            f"{state.get('savedAt') or '-'} (reason {state.get('reason') or '-'}, pod "
            f"{state.get('writerPod') or '-'})"
        )
        rows = position_rows(state)
        parts.append(render_table(POSITION_COLUMNS, rows) if rows else "no open positions")
        balances = balance_rows(state)
        if balances:
            parts.append(render_table(("CURRENCY", "BALANCE"), balances))
    else:
        symbols = _mapping(_mapping(bot.get("status")).get("positions")).get("symbols") or []
        if symbols:
            parts.append(render_table(("SYMBOL",), [[str(s)] for s in symbols]))
    if note:
        parts.append(f"note: {note}")
    return "\n\n".join(parts) + "\n"


# -- audit formatting -------------------------------------------------------------------------

SUMMARY_SECTIONS: Final = (
    ("TYPE", "by_type"),
    ("SEVERITY", "by_severity"),
    ("SOURCE", "by_source"),
    ("TARGET", "by_target"),
)


def summary_from_local(result: Mapping[str, Any]) -> dict[str, Any]:
    """The library's summary in the audit API's shape (`by_type` rather than `by_event_type`)."""
    return {
        "total": result.get("total", 0),
        "by_type": dict(result.get("by_event_type") or {}),
        "by_severity": dict(result.get("by_severity") or {}),
        "by_source": dict(result.get("by_source") or {}),
        "by_target": dict(result.get("by_target") or {}),
    }


def render_summary(result: Mapping[str, Any]) -> str:
    parts = [f"{result.get('total', 0)} events"]
    for title, key in SUMMARY_SECTIONS:
        counts = _mapping(result.get(key))
        if counts:
            parts.append(count_table(title, counts))
    return "\n\n".join(parts) + "\n"
