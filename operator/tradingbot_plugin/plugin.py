"""`kubectl tradingbot`: the kubectl plugin for TradingBots (SPEC §9).

Commands::

    status [BOT] [-w] [-A] [-l SELECTOR] [-o table|json|yaml]
    restart BOT|--all|-l SELECTOR [-A] --reason TEXT
    stop BOT [--reason TEXT]            spec.suspend=true (graceful, positions kept)
    resume BOT [--reason TEXT]          spec.suspend=false
    halt BOT|--all|-l SELECTOR [-A] [--reason TEXT]
                                        kill switch: annotation trading.r7.dev/halt="true"
    unhalt BOT [--reason TEXT]          removes the kill switch annotation
    positions BOT [-o table|json]       status + the state ConfigMap <bot>-state
    audit [filters] [--limit N] [-o table|json]
    audit summary [filters] [-o table|json]
    audit export FILE [filters]         JSON array in chain order ("-" for stdout)
    audit verify [--head-configmap NS/NAME] [-o table|json]

Global options (before or after the command): --kubeconfig FILE, --context NAME,
-n/--namespace NS (default: the context's namespace, else "default").

Every write is a JSON merge patch sent with fieldManager `kubectl-tradingbot` and a
User-Agent starting with `kubectl-tradingbot/`, which is how the admission webhook attributes
the change to the source `plugin` in the audit log. Imperative requests are annotations (and
suspend a spec field), so GitOps tools that own the spec do not fight them.

The audit commands read the audit sidecar's HTTP API (`--audit-url` or $TRADINGBOT_AUDIT_URL,
with the kubeconfig user's bearer token), or a local log directory (`--log-dir`). `audit
verify --head-configmap` reads the chain head the sidecar records outside the log volume with
the kubeconfig user's own access, and has the log checked against it (a truncated tail).

Exit codes: 0 success; 1 failure (API error, verification failed, nothing matched);
2 usage error; 3 not allowed (authentication or RBAC); 4 TradingBot not found;
130 interrupted.

Formatting is done by pure functions (`status_rows`, `pending_text`, `format_age`,
`position_rows`, ...) that take data and a clock and return text, so they are table-tested
without a cluster; the I/O sits in `Kube`, the audit sources and the `cmd_*` functions.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import queue
import ssl
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import IO, Any, Final, Protocol, TextIO

import yaml

from tradingbot_api.constants import (
    ANNOTATION_HALT,
    ANNOTATION_RESTART_REASON,
    ANNOTATION_RESTARTED_AT,
    ANNOTATION_SUSPEND,
    API_GROUP,
    DEFAULT_COALESCE_SECONDS,
    FLEET_SWITCH_KEY,
    PLURAL,
    STATE_KEY,
    SUSPEND_VALUE,
    VERSION,
    ConditionType,
    HaltMode,
    Phase,
    StateBackend,
    effective_halt,
    state_configmap_name,
)
from tradingbot_audit.head import ChainHead, head_from_data, parse_configmap_ref
from tradingbot_audit.schema import MAX_TEXT_LENGTH

# -- names and exit codes ----------------------------------------------------------------------

PROG: Final = "kubectl tradingbot"
FIELD_MANAGER: Final = "kubectl-tradingbot"
USER_AGENT_PRODUCT: Final = "kubectl-tradingbot"
RESOURCE: Final = f"{PLURAL}.{API_GROUP}"
AUDIT_URL_ENV: Final = "TRADINGBOT_AUDIT_URL"
AUDIT_FORBIDDEN_MESSAGE: Final = (
    "not allowed to read the audit log (needs get on tradingbots/audit)"
)

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_FORBIDDEN: Final = 3
EXIT_NOT_FOUND: Final = 4
EXIT_INTERRUPTED: Final = 130

# The chart's fleet switch for release `tb` in `tradingbot-system` (make deploy's defaults).
DEFAULT_FLEET_SWITCH: Final = "tradingbot-system/tb-tradingbot-operator-fleet-switch"

# The restart reason ends up in the audit record, whose text fields are bounded; refusing a
# longer reason here beats silently truncating the one thing that explains the restart.
MAX_REASON_LENGTH: Final = MAX_TEXT_LENGTH
# Audit table cells longer than this are cut with an ellipsis so rows stay one line.
MAX_CELL: Final = 60
DEFAULT_AUDIT_LIMIT: Final = 100
# Server-side watch timeout: the API server ends the stream after this, and we reconnect
# from the last resourceVersion. Short enough that a silently dead connection is noticed.
WATCH_TIMEOUT_SECONDS: Final = 60
WATCH_RETRY_SECONDS: Final = 2.0
# While any bot shows a countdown ("restart in 2s"), the table is redrawn this often.
COUNTDOWN_REDRAW_SECONDS: Final = 1.0

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
AUDIT_COLUMNS: Final = (
    ("SEQ", "seq"),
    ("TIMESTAMP", "timestamp"),
    ("SEVERITY", "severity"),
    ("TYPE", "event_type"),
    ("SOURCE", "source"),
    ("TARGET", "target"),
    ("USER", "user_id"),
    ("ACTION", "action"),
)
SUMMARY_SECTIONS: Final = (
    ("TYPE", "by_type"),
    ("SEVERITY", "by_severity"),
    ("SOURCE", "by_source"),
    ("TARGET", "by_target"),
)

EXIT_CODES_HELP: Final = """\
exit codes: 0 success, 1 failure, 2 usage error, 3 not allowed (RBAC or credentials),
            4 tradingbot not found, 130 interrupted"""


def plugin_version() -> str:
    try:
        return metadata.version("tradingbot-operator")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def user_agent() -> str:
    """The HTTP User-Agent of every request; the webhook keys the `plugin` source on its prefix."""
    return f"{USER_AGENT_PRODUCT}/{plugin_version()} (python)"


class PluginError(Exception):
    """A failure to report as one line on stderr with a given exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


# -- time -------------------------------------------------------------------------------------


def parse_time(value: object) -> datetime | None:
    """An RFC 3339 timestamp from the API (or None for anything unreadable)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def rfc3339(moment: datetime, *, fraction: bool = False) -> str:
    moment = moment.astimezone(UTC)
    if fraction:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def format_age(created: datetime | None, now: datetime) -> str:
    """Age as `kubectl get` prints it (its HumanDuration): 45s, 3m20s, 95m, 5h3m, 2d4h, 400d."""
    if created is None:
        return "<unknown>"
    seconds = int((now - created).total_seconds())
    if seconds < 0:
        # Clock skew between this machine and the API server: kubectl shows a fixed word.
        return "<invalid>"
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        rest = seconds % 60
        return f"{minutes}m{rest}s" if rest else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h{rest}m" if rest else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    if hours < 24 * 8:
        rest = hours % 24
        return f"{days}d{rest}h" if rest else f"{days}d"
    if days < 365 * 2:
        return f"{days}d"
    years = days // 365
    if years < 8:
        rest = days % 365
        return f"{years}y{rest}d" if rest else f"{years}y"
    return f"{years}y"


# -- patch bodies (pure) ----------------------------------------------------------------------


def validate_reason(reason: str | None, *, required: bool) -> str | None:
    """The stripped reason; raises a usage error when required and empty, or too long."""
    text = (reason or "").strip()
    if not text:
        if required:
            raise PluginError(
                "--reason must not be empty: say why, it goes to the audit log", EXIT_USAGE
            )
        return None
    if len(text) > MAX_REASON_LENGTH:
        raise PluginError(
            f"--reason is {len(text)} characters; at most {MAX_REASON_LENGTH} fit the audit log",
            EXIT_USAGE,
        )
    return text


def restart_stamp(now: datetime, previous: str | None) -> str:
    """The restartedAt value: RFC 3339 in seconds, like `kubectl rollout restart`.

    A second request within the same second would write the same value, change nothing and
    be lost; fractional seconds keep it distinct.
    """
    stamp = rfc3339(now)
    return rfc3339(now, fraction=True) if stamp == previous else stamp


def restart_patch(stamp: str, reason: str) -> dict[str, Any]:
    return {
        "metadata": {
            "annotations": {ANNOTATION_RESTARTED_AT: stamp, ANNOTATION_RESTART_REASON: reason}
        }
    }


def suspend_patch(suspend: bool, reason: str | None = None) -> dict[str, Any]:
    """Stop or resume by annotation (null in a merge patch deletes it): `spec.suspend` stays
    the declarative field a GitOps tool owns, so a sync never undoes an imperative stop."""
    annotations: dict[str, Any] = {ANNOTATION_SUSPEND: SUSPEND_VALUE if suspend else None}
    if reason:
        annotations[ANNOTATION_RESTART_REASON] = reason
    return {"metadata": {"annotations": annotations}}


def halt_patch(reason: str | None = None, mode: HaltMode = HaltMode.TRUE) -> dict[str, Any]:
    annotations: dict[str, Any] = {ANNOTATION_HALT: str(mode)}
    if reason:
        annotations[ANNOTATION_RESTART_REASON] = reason
    return {"metadata": {"annotations": annotations}}


def unhalt_patch(reason: str | None = None) -> dict[str, Any]:
    # null in a merge patch deletes the key.
    annotations: dict[str, Any] = {ANNOTATION_HALT: None}
    if reason:
        annotations[ANNOTATION_RESTART_REASON] = reason
    return {"metadata": {"annotations": annotations}}


def halt_mode(bot: Mapping[str, Any]) -> HaltMode | None:
    annotations = (bot.get("metadata") or {}).get("annotations") or {}
    return effective_halt(annotations.get(ANNOTATION_HALT))


def is_halted(bot: Mapping[str, Any]) -> bool:
    return halt_mode(bot) is not None


def is_suspended(bot: Mapping[str, Any]) -> bool:
    return suspended_by_spec(bot) or suspended_by_annotation(bot)


def suspended_by_spec(bot: Mapping[str, Any]) -> bool:
    return bool((bot.get("spec") or {}).get("suspend"))


def suspended_by_annotation(bot: Mapping[str, Any]) -> bool:
    annotations = (bot.get("metadata") or {}).get("annotations") or {}
    return str(annotations.get(ANNOTATION_SUSPEND, "")).lower() == SUSPEND_VALUE


def fleet_switch_patch(mode: HaltMode | None) -> dict[str, Any]:
    """The fleet-wide kill switch ConfigMap's data (None removes the halt)."""
    return {"data": {FLEET_SWITCH_KEY: str(mode) if mode else None}}


# -- status formatting (pure) -----------------------------------------------------------------


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _number(value: object) -> float:
    if isinstance(value, bool):
        return 0.0
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return 0.0


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
    not_before = parse_time(pending.get("notBefore"))
    if not_before is not None and not_before > now:
        return f"{action} deferred until {rfc3339(not_before)}"
    last = parse_time(pending.get("lastRequestedAt")) or parse_time(pending.get("firstRequestedAt"))
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
        format_age(parse_time(meta.get("creationTimestamp")), now),
    ]


def checkpoint_text(state: Mapping[str, Any], now: datetime) -> str:
    """The last checkpoint: its sequence number and how long ago it was saved."""
    seq = state.get("checkpointSeq")
    if seq is None:
        return "-"
    saved = parse_time(state.get("savedAt"))
    return f"#{seq} {format_age(saved, now)} ago" if saved else f"#{seq}"


def feed_lines(
    events: Iterable[Mapping[str, Any]], now: datetime, limit: int = FEED_LENGTH
) -> list[str]:
    """The newest Events about TradingBots, newest last, one line each."""

    def when(event: Mapping[str, Any]) -> datetime:
        stamp = event.get("lastTimestamp") or event.get("eventTime") or ""
        return parse_time(stamp) or datetime.min.replace(tzinfo=UTC)

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


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns separated by three spaces, like kubectl; no trailing whitespace."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in [list(headers), *rows]:
        lines.append("   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


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


# -- positions formatting (pure) --------------------------------------------------------------

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


# -- audit formatting (pure) ------------------------------------------------------------------


def _cell(value: object) -> str:
    if value is None or value == "":
        return "-"
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def audit_table(events: Sequence[Mapping[str, Any]]) -> str:
    rows = [[_cell(event.get(key)) for _title, key in AUDIT_COLUMNS] for event in events]
    return render_table([title for title, _key in AUDIT_COLUMNS], rows)


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
            rows = [[str(name), str(count)] for name, count in counts.items()]
            parts.append(render_table((title, "COUNT"), rows))
    return "\n\n".join(parts) + "\n"


# -- audit sources ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AuditQuery:
    """Filters of an audit request; None means "any"."""

    event_type: str | None = None
    severity: str | None = None
    source: str | None = None
    bot: str | None = None
    user: str | None = None
    namespace: str | None = None
    since: str | None = None
    until: str | None = None

    def params(self) -> dict[str, str]:
        """Query parameters of the audit API, only those set."""
        names = {
            "type": self.event_type,
            "severity": self.severity,
            "source": self.source,
            "bot": self.bot,
            "user": self.user,
            "namespace": self.namespace,
            "since": self.since,
            "until": self.until,
        }
        return {key: value for key, value in names.items() if value is not None}


class AuditSource(Protocol):
    def events(self, query: AuditQuery, limit: int) -> list[dict[str, Any]]:
        """Matching records, newest first; `limit` 0 means all."""
        ...

    def summary(self, query: AuditQuery) -> dict[str, Any]:
        """Counts in the API's shape: total, by_type, by_severity, by_source, by_target."""
        ...

    def verify(self, head: ChainHead | None = None) -> dict[str, Any]:
        """{"ok": bool, "summary": str, "error": {...} | None}; with `head`, the log must
        also reach it."""
        ...

    def export(self, query: AuditQuery, out: IO[str]) -> int:
        """Write matching records to `out` as one JSON array in chain order; the count."""
        ...


class HttpAuditSource:
    """Client of the audit sidecar's read API (GET /v1/events, /v1/summary, /v1/verify)."""

    def __init__(
        self,
        base_url: str,
        token: str | None,
        *,
        ca_file: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._timeout = timeout
        self._context: ssl.SSLContext | None = None
        if self.base_url.startswith("https:"):
            self._context = ssl.create_default_context(cafile=ca_file)

    def _get(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        url = self.base_url + path
        if params:
            url += "?" + urllib.parse.urlencode(params)
        headers = {"Accept": "application/json", "User-Agent": user_agent()}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        request = urllib.request.Request(url, headers=headers, method="GET")
        try:
            with urllib.request.urlopen(
                request, timeout=self._timeout, context=self._context
            ) as response:
                payload = response.read()
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                raise PluginError(AUDIT_FORBIDDEN_MESSAGE, EXIT_FORBIDDEN) from None
            raise PluginError(
                f"the audit API answered HTTP {exc.code} to GET {path}: {_error_text(exc)}"
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise PluginError(f"cannot reach the audit API at {self.base_url}: {reason}") from None
        try:
            return json.loads(payload)
        except ValueError:
            raise PluginError(
                f"the audit API at {self.base_url} answered GET {path} with something that is "
                "not JSON (is --audit-url the audit sidecar?)"
            ) from None

    def events(self, query: AuditQuery, limit: int) -> list[dict[str, Any]]:
        body = self._get("/v1/events", {**query.params(), "limit": str(limit)})
        events = body.get("events") if isinstance(body, Mapping) else None
        if not isinstance(events, list):
            raise PluginError('the audit API\'s /v1/events answer has no "events" list')
        return [e for e in events if isinstance(e, dict)]

    def summary(self, query: AuditQuery) -> dict[str, Any]:
        body = self._get("/v1/summary", query.params())
        if not isinstance(body, dict) or "total" not in body:
            raise PluginError('the audit API\'s /v1/summary answer has no "total"')
        return body

    def verify(self, head: ChainHead | None = None) -> dict[str, Any]:
        body = self._get("/v1/verify", None if head is None else {"head": str(head)})
        if not isinstance(body, dict) or "ok" not in body:
            raise PluginError('the audit API\'s /v1/verify answer has no "ok"')
        return body

    def export(self, query: AuditQuery, out: IO[str]) -> int:
        # limit 0 asks for every matching record; the API returns newest first and the
        # export is in chain order, as the local library writes it.
        events = sorted(self.events(query, 0), key=lambda e: _number(e.get("seq")))
        json.dump(events, out, ensure_ascii=False, indent=2, sort_keys=True)
        out.write("\n")
        return len(events)


def _error_text(exc: urllib.error.HTTPError) -> str:
    try:
        body = exc.read().decode("utf-8", "replace")
    except OSError:
        body = ""
    with contextlib.suppress(ValueError):
        parsed = json.loads(body)
        if isinstance(parsed, Mapping):
            body = str(parsed.get("error") or parsed.get("message") or body)
    return " ".join(body.split())[:200] or str(exc.reason)


class LocalAuditSource:
    """The audit log read straight from its directory with the audit library."""

    def __init__(self, log_dir: Path) -> None:
        if not log_dir.is_dir():
            raise PluginError(f"--log-dir {log_dir} is not a directory")
        self.log_dir = log_dir

    def _filter(self, query: AuditQuery) -> Any:
        from tradingbot_audit import AuditFilter

        try:
            return AuditFilter.build(
                event_type=query.event_type,
                severity=query.severity,
                source=query.source,
                target=query.bot,
                user_id=query.user,
                namespace=query.namespace,
                since=query.since,
                until=query.until,
            )
        except ValueError as exc:
            raise PluginError(str(exc), EXIT_USAGE) from None

    def events(self, query: AuditQuery, limit: int) -> list[dict[str, Any]]:
        from tradingbot_audit import query as run_query

        return run_query(self.log_dir, self._filter(query), limit=limit or None)

    def summary(self, query: AuditQuery) -> dict[str, Any]:
        from tradingbot_audit import summary

        return summary_from_local(summary(self.log_dir, self._filter(query)).to_json())

    def verify(self, head: ChainHead | None = None) -> dict[str, Any]:
        from tradingbot_audit import verify_log

        result = verify_log(self.log_dir, head=head)
        error = dataclasses.asdict(result.error) if result.error is not None else None
        return {"ok": result.ok, "summary": result.summary(), "error": error}

    def export(self, query: AuditQuery, out: IO[str]) -> int:
        from tradingbot_audit import export_json

        return export_json(self.log_dir, out, self._filter(query))


# -- Kubernetes access ------------------------------------------------------------------------


def _status_message(exc: Any) -> str:
    """The `message` of the Status the API server sent, or the raw reason."""
    body = getattr(exc, "body", None)
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if isinstance(body, str):
        with contextlib.suppress(ValueError):
            parsed = json.loads(body)
            if isinstance(parsed, Mapping) and parsed.get("message"):
                return str(parsed["message"])
    return str(getattr(exc, "reason", "") or exc)


def _is_resource_not_found(exc: Any) -> bool:
    """404 for the object itself (a Status naming it), not for a missing API (a bare 404)."""
    body = getattr(exc, "body", None)
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    with contextlib.suppress(ValueError, TypeError):
        parsed = json.loads(body or "")
        return (
            isinstance(parsed, Mapping)
            and parsed.get("kind") == "Status"
            and bool(_mapping(parsed.get("details")).get("name"))
        )
    return False


def api_error(
    exc: Exception,
    *,
    verb: str,
    resource: str,
    namespace: str | None,
    name: str | None = None,
    server: str = "",
) -> PluginError:
    """Turn a client exception into one clear line and an exit code (never a traceback)."""
    from kubernetes.client.exceptions import ApiException

    where = f"in namespace {namespace}" if namespace else "cluster-wide"
    if isinstance(exc, ApiException) and exc.status:
        status = exc.status
        message = _status_message(exc)
        if status == 401:
            return PluginError(
                f"the API server did not accept the kubeconfig's credentials ({message})",
                EXIT_FORBIDDEN,
            )
        if status == 403:
            target = f"{resource} {name}" if name else resource
            return PluginError(f"not allowed to {verb} {target} {where}: {message}", EXIT_FORBIDDEN)
        if status == 404:
            if name and resource == RESOURCE and _is_resource_not_found(exc):
                return PluginError(
                    f"tradingbot {name} not found in namespace {namespace}", EXIT_NOT_FOUND
                )
            if resource == RESOURCE:
                return PluginError(
                    f"the API server does not serve {RESOURCE}/{VERSION}: are the TradingBot "
                    "CRDs installed?",
                    EXIT_FAILED,
                )
            return PluginError(
                f"{resource} {name or ''} not found {where}".replace("  ", " "), EXIT_NOT_FOUND
            )
        if status in (400, 409, 422):
            target = f"{resource} {name}" if name else resource
            return PluginError(f"the API server refused to {verb} {target}: {message}")
        return PluginError(f"{verb} {resource} failed (HTTP {status}): {message}")
    reason = getattr(exc, "reason", None) or exc
    return PluginError(f"cannot reach the API server{' at ' + server if server else ''}: {reason}")


def _kube_errors() -> tuple[type[Exception], ...]:
    import urllib3
    from kubernetes.client.exceptions import ApiException

    return (ApiException, urllib3.exceptions.HTTPError, OSError)


@dataclasses.dataclass(frozen=True)
class KubeConfigChoice:
    kubeconfig: str | None = None
    context: str | None = None


def _kubeconfig_path(choice: KubeConfigChoice) -> str:
    return choice.kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"


def load_configuration(choice: KubeConfigChoice) -> tuple[Any, str]:
    """The client Configuration and the context's namespace ("default" when it has none).

    Falls back to the in-cluster service account when no kubeconfig exists and none was
    named (the plugin run from a pod).
    """
    from kubernetes import client, config

    configuration = client.Configuration()
    path = _kubeconfig_path(choice)
    try:
        config.load_kube_config(
            config_file=path,
            context=choice.context,
            client_configuration=configuration,
            persist_config=False,
        )
        contexts, current = config.list_kube_config_contexts(config_file=path)
    except (config.ConfigException, OSError, ValueError) as exc:
        in_cluster = "KUBERNETES_SERVICE_HOST" in os.environ
        if choice.kubeconfig or choice.context or not in_cluster:
            raise PluginError(f"cannot load the kubeconfig {path}: {exc}") from None
        config.load_incluster_config(client_configuration=configuration)
        ns_file = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        in_pod = ns_file.read_text().strip() if ns_file.exists() else ""
        return configuration, in_pod or "default"
    active = current
    if choice.context:
        active = next((c for c in contexts if c.get("name") == choice.context), current)
    namespace = _mapping(_mapping(active).get("context")).get("namespace")
    return configuration, str(namespace or "default")


def bearer_token(configuration: Any) -> str | None:
    """The kubeconfig user's bearer token, if it has one (client-certificate users do not)."""
    value = configuration.get_api_key_with_prefix("BearerToken", alias="authorization")
    if not value:
        return None
    text = str(value)
    return text[len("Bearer ") :] if text.startswith("Bearer ") else text


def new_api_client(configuration: Any) -> Any:
    from kubernetes import client

    api = client.ApiClient(configuration=configuration)
    api.user_agent = user_agent()
    return api


class Kube:
    """The few API calls the plugin makes, with errors turned into PluginError."""

    def __init__(self, api: Any) -> None:
        from kubernetes import client

        self.api = api
        self.custom = client.CustomObjectsApi(api)
        self.server = str(getattr(api.configuration, "host", ""))
        self._errors = _kube_errors()

    def _call(
        self,
        verb: str,
        resource: str,
        namespace: str | None,
        name: str | None,
        fn: Callable[..., Any],
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        try:
            return fn(*args, **kwargs)
        except self._errors as exc:
            raise api_error(
                exc,
                verb=verb,
                resource=resource,
                namespace=namespace,
                name=name,
                server=self.server,
            ) from None

    def get_bot(self, namespace: str, name: str) -> dict[str, Any]:
        return dict(
            self._call(
                "get",
                RESOURCE,
                namespace,
                name,
                self.custom.get_namespaced_custom_object,
                API_GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
            )
        )

    def list_bots(self, namespace: str | None, selector: str | None = None) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        if selector:
            kwargs["label_selector"] = selector
        if namespace is None:
            return dict(
                self._call(
                    "list",
                    RESOURCE,
                    None,
                    None,
                    self.custom.list_cluster_custom_object,
                    API_GROUP,
                    VERSION,
                    PLURAL,
                    **kwargs,
                )
            )
        return dict(
            self._call(
                "list",
                RESOURCE,
                namespace,
                None,
                self.custom.list_namespaced_custom_object,
                API_GROUP,
                VERSION,
                namespace,
                PLURAL,
                **kwargs,
            )
        )

    def patch_bot(self, namespace: str, name: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return dict(
            self._call(
                "patch",
                RESOURCE,
                namespace,
                name,
                self.custom.patch_namespaced_custom_object,
                API_GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                dict(body),
                field_manager=FIELD_MANAGER,
                _content_type="application/merge-patch+json",
            )
        )

    def patch_configmap(
        self, namespace: str, name: str, body: Mapping[str, Any], *, create: bool = False
    ) -> None:
        """Merge-patch a ConfigMap's data; with create, make it when it does not exist."""
        from kubernetes import client

        core = client.CoreV1Api(self.api)
        try:
            core.patch_namespaced_config_map(
                name, namespace, dict(body), field_manager=FIELD_MANAGER
            )
            return
        except self._errors as exc:
            if not (create and getattr(exc, "status", None) == 404):
                raise api_error(
                    exc,
                    verb="patch",
                    resource="configmap",
                    namespace=namespace,
                    name=name,
                    server=self.server,
                ) from None
        data = {k: v for k, v in (body.get("data") or {}).items() if v is not None}
        try:
            core.create_namespaced_config_map(
                namespace,
                {"metadata": {"name": name, "namespace": namespace}, "data": data},
                field_manager=FIELD_MANAGER,
            )
        except self._errors as exc:
            raise api_error(
                exc,
                verb="create",
                resource="configmap",
                namespace=namespace,
                name=name,
                server=self.server,
            ) from None

    def list_events(self, namespace: str | None) -> list[dict[str, Any]]:
        """Events as plain JSON; an empty list when they cannot be read (the feed is extra)."""
        from kubernetes import client

        core = client.CoreV1Api(self.api)
        try:
            if namespace is None:
                listed = core.list_event_for_all_namespaces(_preload_content=False)
            else:
                listed = core.list_namespaced_event(namespace, _preload_content=False)
            return list(json.loads(listed.data).get("items") or [])
        except Exception:  # a viewer without `list events` still gets the table
            return []

    def read_state(self, namespace: str, bot: str) -> Mapping[str, str]:
        """The data of the bot's state ConfigMap; PluginError when missing or forbidden."""
        return self.read_configmap(namespace, state_configmap_name(bot))

    def read_configmap(self, namespace: str, name: str) -> Mapping[str, str]:
        """The data of a ConfigMap; PluginError when missing or forbidden."""
        # CoreV1Api is imported here, not up front: its module alone takes about a second to
        # import, and only `positions` and `audit verify --head-configmap` need it.
        from kubernetes import client

        try:
            configmap = client.CoreV1Api(self.api).read_namespaced_config_map(name, namespace)
        except self._errors as exc:
            raise api_error(
                exc,
                verb="get",
                resource="configmap",
                namespace=namespace,
                name=name,
                server=self.server,
            ) from None
        return dict(getattr(configmap, "data", None) or {})


# -- status and watch -------------------------------------------------------------------------


def _render_status(
    bots: Iterable[Mapping[str, Any]], now: datetime, *, with_namespace: bool
) -> str:
    headers, rows = status_table(bots, now, with_namespace=with_namespace)
    return render_table(headers, rows)


def _no_bots_message(namespace: str | None) -> str:
    where = f"in namespace {namespace}" if namespace else "in any namespace"
    return f"No tradingbots found {where}."


class _Watcher(threading.Thread):
    """Lists, then watches TradingBots, feeding events to a queue; relists after 410 Gone.

    Runs in a thread so the drawing loop can redraw countdowns and react to Ctrl-C while
    the stream blocks on the socket.
    """

    def __init__(
        self,
        kube: Kube,
        namespace: str | None,
        name: str | None,
        selector: str | None,
        events: queue.Queue[tuple[str, Any]],
        stop: threading.Event,
        timeout_seconds: int,
    ) -> None:
        super().__init__(name="tradingbot-watch", daemon=True)
        self.kube = kube
        self.namespace = namespace
        self.field_selector = f"metadata.name={name}" if name else None
        self.selector = selector
        self.events = events
        self.stop_event = stop
        self.timeout_seconds = timeout_seconds
        self._current: Any = None

    def _list_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        if self.selector:
            kwargs["label_selector"] = self.selector
        if self.field_selector:
            kwargs["field_selector"] = self.field_selector
        return kwargs

    def _list(self) -> tuple[list[dict[str, Any]], str]:
        custom = self.kube.custom
        if self.namespace is None:
            result = custom.list_cluster_custom_object(
                API_GROUP, VERSION, PLURAL, **self._list_kwargs()
            )
        else:
            result = custom.list_namespaced_custom_object(
                API_GROUP, VERSION, self.namespace, PLURAL, **self._list_kwargs()
            )
        return list(result.get("items") or []), str(result["metadata"]["resourceVersion"])

    def _stream(self, resource_version: str) -> str | None:
        """Follow one watch request; the last resourceVersion seen, None after 410 Gone."""
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        custom = self.kube.custom
        stream_watch = watch.Watch()
        self._current = stream_watch
        kwargs = {
            **self._list_kwargs(),
            "resource_version": resource_version,
            "timeout_seconds": self.timeout_seconds,
            "allow_watch_bookmarks": True,
            # The client-side read timeout catches a connection that died without a FIN.
            "_request_timeout": self.timeout_seconds + 15,
        }
        if self.namespace is None:
            stream = stream_watch.stream(
                custom.list_cluster_custom_object, API_GROUP, VERSION, PLURAL, **kwargs
            )
        else:
            stream = stream_watch.stream(
                custom.list_namespaced_custom_object,
                API_GROUP,
                VERSION,
                self.namespace,
                PLURAL,
                **kwargs,
            )
        try:
            for event in stream:
                if self.stop_event.is_set():
                    break
                obj = event.get("raw_object") or {}
                version = _mapping(obj.get("metadata")).get("resourceVersion")
                if version:
                    resource_version = str(version)
                if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                    self.events.put((str(event["type"]), obj))
        except ApiException as exc:
            if exc.status == 410:
                return None
            raise
        finally:
            stream_watch.stop()
            stream.close()  # runs the generator's cleanup: the connection goes back now
            self._current = None
        return resource_version

    def run(self) -> None:
        resource_version: str | None = None
        errors = _kube_errors()
        while not self.stop_event.is_set():
            try:
                if resource_version is None:
                    items, resource_version = self._list()
                    self.events.put(("SYNC", items))
                resource_version = self._stream(resource_version)
            except errors as exc:
                if self.stop_event.is_set():
                    return
                error = api_error(
                    exc,
                    verb="watch",
                    resource=RESOURCE,
                    namespace=self.namespace,
                    server=self.kube.server,
                )
                # Retrying cannot fix RBAC, credentials or a missing API.
                if getattr(exc, "status", None) in (401, 403, 404):
                    self.events.put(("FATAL", error))
                    return
                # A dropped connection or a restarting API server: tell, wait, relist.
                self.events.put(("RETRY", error))
                resource_version = None
                self.stop_event.wait(WATCH_RETRY_SECONDS)

    def interrupt(self) -> None:
        current = self._current
        if current is not None:
            with contextlib.suppress(Exception):
                current.stop()


def watch_status(
    kube: Kube,
    namespace: str | None,
    name: str | None,
    selector: str | None,
    out: TextIO,
    err: TextIO,
    stop: threading.Event,
    *,
    output: str = "table",
    interactive: bool = False,
    clock: Clock = utc_now,
    timeout_seconds: int = WATCH_TIMEOUT_SECONDS,
    feed: Callable[[], list[dict[str, Any]]] | None = None,
) -> int:
    """Draw the status table on every change until `stop` is set (or Ctrl-C in the caller).

    With `feed` (a function returning Events), interactive terminals also show the latest
    Events about the bots under the table.

    Interactive terminals get the table redrawn in place (and every second while a countdown
    runs); pipes get a new table per change. With -o json/yaml each changed object is
    printed (JSON: one object per line).
    """
    events: queue.Queue[tuple[str, Any]] = queue.Queue()
    watcher = _Watcher(kube, namespace, name, selector, events, stop, timeout_seconds)
    watcher.start()
    bots: dict[tuple[str, str], dict[str, Any]] = {}
    with_namespace = namespace is None
    synced = False
    last_drawn = ""
    try:
        while not stop.is_set():
            changed: list[dict[str, Any]] = []
            try:
                kind, payload = events.get(timeout=COUNTDOWN_REDRAW_SECONDS)
                batch = [(kind, payload)]
                while True:
                    try:
                        batch.append(events.get_nowait())
                    except queue.Empty:
                        break
            except queue.Empty:
                batch = []
            for kind, payload in batch:
                if kind == "FATAL":
                    err.write(f"error: {payload.message}\n")
                    return int(payload.code)
                if kind == "RETRY":
                    err.write(f"warning: {payload.message}; reconnecting\n")
                    continue
                if kind == "SYNC":
                    bots = {_sort_key(b): b for b in payload}
                    changed.extend(payload)
                    synced = True
                    continue
                key = _sort_key(payload)
                if kind == "DELETED":
                    bots.pop(key, None)
                else:
                    bots[key] = payload
                changed.append(payload)
            if not synced:
                continue
            if output != "table":
                for obj in changed:
                    if output == "json":
                        out.write(json.dumps(strip_server_fields(obj), ensure_ascii=False) + "\n")
                    else:
                        out.write("---\n" + dump(strip_server_fields(obj), "yaml"))
                out.flush()
                continue
            now = clock()
            if not bots:
                text = _no_bots_message(namespace)
            else:
                text = _render_status(bots.values(), now, with_namespace=with_namespace)
            if interactive and feed is not None:
                lines = feed_lines(feed(), now)
                text += "\n\nRecent events:\n" + ("\n".join(lines) if lines else "(none yet)")
            if text == last_drawn:
                continue
            if interactive:
                # Home + clear screen, then the table: a redraw in place, like `watch`.
                out.write("\x1b[H\x1b[2J" + f"{rfc3339(now)}\n" + text + "\n")
            elif batch:
                # Pipes and logs: a new table per change, not per countdown tick.
                out.write(("\n" if last_drawn else "") + text + "\n")
            else:
                continue
            out.flush()
            last_drawn = text
    finally:
        stop.set()
        watcher.interrupt()
        watcher.join(timeout=5)
    return EXIT_OK


# -- commands ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Context:
    """What a command needs: parsed arguments, streams, a clock and lazy API access."""

    args: argparse.Namespace
    out: TextIO
    err: TextIO
    clock: Clock
    _kube: Kube | None = None
    _namespace: str | None = None
    _configuration: Any = None

    def _load(self) -> None:
        if self._configuration is None:
            choice = KubeConfigChoice(
                getattr(self.args, "kubeconfig", None), getattr(self.args, "context", None)
            )
            self._configuration, self._namespace = load_configuration(choice)

    @property
    def kube(self) -> Kube:
        if self._kube is None:
            self._load()
            self._kube = Kube(new_api_client(self._configuration))
        return self._kube

    @property
    def namespace(self) -> str:
        """-n if given, else the kubeconfig context's namespace, else "default"."""
        explicit = getattr(self.args, "namespace", None)
        if explicit:
            return str(explicit)
        self._load()
        return self._namespace or "default"

    @property
    def list_namespace(self) -> str | None:
        """The namespace to list in, None for all (-A)."""
        return None if getattr(self.args, "all_namespaces", False) else self.namespace

    def token(self) -> str | None:
        self._load()
        return bearer_token(self._configuration)

    def close(self) -> None:
        if self._kube is not None:
            with contextlib.suppress(Exception):
                self._kube.api.close()


def _targets(ctx: Context, verb: str) -> list[dict[str, Any]]:
    """The bots a command acts on: BOT, --all or -l SELECTOR (in -n or, with -A, everywhere)."""
    args = ctx.args
    bot = getattr(args, "bot", None)
    every = getattr(args, "all", False)
    selector = getattr(args, "selector", None)
    chosen = sum(1 for x in (bot, every, selector) if x)
    if chosen != 1:
        raise PluginError(f"{verb}: name one BOT, or use --all or -l SELECTOR", EXIT_USAGE)
    if getattr(args, "all_namespaces", False) and bot:
        raise PluginError(f"{verb}: -A goes with --all or -l, not with a BOT name", EXIT_USAGE)
    if bot:
        return [ctx.kube.get_bot(ctx.namespace, bot)]
    namespace = ctx.list_namespace
    items = list(ctx.kube.list_bots(namespace, selector).get("items") or [])
    if not items:
        what = f"matching {selector} " if selector else ""
        raise PluginError(
            f"no tradingbots {what}found "
            + (f"in namespace {namespace}" if namespace else "in any namespace")
        )
    return sorted(items, key=_sort_key)


def _label(bot: Mapping[str, Any], with_namespace: bool) -> str:
    meta = _mapping(bot.get("metadata"))
    text = f"tradingbot.{API_GROUP}/{meta.get('name')}"
    return f"{text} (namespace {meta.get('namespace')})" if with_namespace else text


# Most telling last: a forbidden patch explains more than a vanished bot.
_EXIT_RANK: Final = (EXIT_OK, EXIT_FAILED, EXIT_NOT_FOUND, EXIT_FORBIDDEN)


def _exit_rank(code: int) -> int:
    return _EXIT_RANK.index(code) if code in _EXIT_RANK else 1


def _apply_each(
    ctx: Context,
    bots: Sequence[Mapping[str, Any]],
    plan: Callable[[Mapping[str, Any]], tuple[dict[str, Any] | None, str]],
) -> int:
    """Patch every bot with its planned body (None: nothing to do), one line each.

    Keeps going after a failure so one forbidden namespace does not hide the rest; the exit
    code is the most telling failure (not allowed > not found > other).
    """
    with_namespace = bool(getattr(ctx.args, "all_namespaces", False))
    worst = EXIT_OK
    for bot in bots:
        meta = _mapping(bot.get("metadata"))
        body, message = plan(bot)
        try:
            if body is not None:
                ctx.kube.patch_bot(str(meta.get("namespace")), str(meta.get("name")), body)
        except PluginError as exc:
            ctx.err.write(f"error: {exc.message}\n")
            worst = max(worst, exc.code, key=_exit_rank)
            continue
        ctx.out.write(f"{_label(bot, with_namespace)} {message}\n")
    return worst


def cmd_status(ctx: Context) -> int:
    args = ctx.args
    if args.bot and (args.all_namespaces or args.selector):
        raise PluginError("status: a BOT name goes without -A and -l", EXIT_USAGE)
    if args.watch:
        stop = threading.Event()
        namespace = ctx.list_namespace
        try:
            return watch_status(
                ctx.kube,
                namespace,
                args.bot,
                args.selector,
                ctx.out,
                ctx.err,
                stop,
                output=args.output,
                interactive=ctx.out.isatty(),
                clock=ctx.clock,
                feed=lambda: ctx.kube.list_events(namespace),
            )
        except KeyboardInterrupt:
            stop.set()
            return EXIT_OK
    if args.bot:
        bot = ctx.kube.get_bot(ctx.namespace, args.bot)
        if args.output != "table":
            ctx.out.write(dump(strip_server_fields(bot), args.output))
            return EXIT_OK
        bots = [bot]
    else:
        namespace = ctx.list_namespace
        bots = list(ctx.kube.list_bots(namespace, args.selector).get("items") or [])
        if args.output != "table":
            ctx.out.write(dump(as_list(bots), args.output))
            return EXIT_OK
        if not bots:
            ctx.err.write(_no_bots_message(namespace) + "\n")
            return EXIT_OK
    ctx.out.write(
        _render_status(bots, ctx.clock(), with_namespace=ctx.list_namespace is None) + "\n"
    )
    return EXIT_OK


def cmd_restart(ctx: Context) -> int:
    reason = validate_reason(ctx.args.reason, required=True)
    assert reason is not None
    bots = _targets(ctx, "restart")
    now = ctx.clock()

    def plan(bot: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str]:
        previous = _mapping(_mapping(bot.get("metadata")).get("annotations")).get(
            ANNOTATION_RESTARTED_AT
        )
        body = restart_patch(restart_stamp(now, previous), reason)
        note = ""
        if is_halted(bot):
            note = " (note: halted; it stays stopped until unhalt)"
        elif is_suspended(bot):
            note = " (note: stopped; the new config applies on resume)"
        return body, f"restart requested{note}"

    return _apply_each(ctx, bots, plan)


def cmd_stop(ctx: Context) -> int:
    reason = validate_reason(ctx.args.reason, required=False)
    bot = ctx.kube.get_bot(ctx.namespace, ctx.args.bot)
    if suspended_by_annotation(bot):
        return _apply_each(ctx, [bot], lambda _b: (None, "already stopped"))
    return _apply_each(
        ctx,
        [bot],
        lambda _b: (suspend_patch(True, reason), f"stop requested ({ANNOTATION_SUSPEND})"),
    )


def cmd_resume(ctx: Context) -> int:
    reason = validate_reason(ctx.args.reason, required=False)
    bot = ctx.kube.get_bot(ctx.namespace, ctx.args.bot)
    name = ctx.args.bot
    note = (
        f"; note: the kill switch is still set, `{PROG} unhalt {name}` lets it trade"
        if is_halted(bot)
        else ""
    )
    if suspended_by_spec(bot):
        note += (
            "; note: spec.suspend is true (the declarative stop, e.g. from Git): change it there"
        )
    if not suspended_by_annotation(bot):
        return _apply_each(
            ctx, [bot], lambda _b: (None, f"not stopped by {PROG}; nothing to resume{note}")
        )
    return _apply_each(
        ctx,
        [bot],
        lambda _b: (suspend_patch(False, reason), f"resume requested{note}"),
    )


def _confirm(ctx: Context, question: str) -> None:
    """Ask before acting on many bots at once, unless --yes; refuse when nobody can answer."""
    if getattr(ctx.args, "yes", False):
        return
    if not sys.stdin.isatty():
        raise PluginError(f"{question}: add --yes to confirm (no terminal to ask)", EXIT_USAGE)
    answer = input(f"{question} [y/N] ").strip().lower()
    if answer not in ("y", "yes"):
        raise PluginError("cancelled; nothing was changed", EXIT_USAGE)


def cmd_halt(ctx: Context) -> int:
    reason = validate_reason(ctx.args.reason, required=False)
    mode = HaltMode(ctx.args.mode)
    if getattr(ctx.args, "fleet", False):
        return _set_fleet_switch(ctx, mode, reason)
    bots = _targets(ctx, "halt")
    if getattr(ctx.args, "all", False) or getattr(ctx.args, "selector", None):
        _confirm(ctx, f"halt ({mode}) {len(bots)} tradingbots")

    shown = "" if mode == HaltMode.TRUE else f": {mode}"

    def plan(bot: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str]:
        if halt_mode(bot) == mode:
            return None, f"already halted{shown}"
        return halt_patch(reason, mode), f"halt requested (kill switch set{shown})"

    return _apply_each(ctx, bots, plan)


def cmd_unhalt(ctx: Context) -> int:
    reason = validate_reason(ctx.args.reason, required=False)
    if getattr(ctx.args, "fleet", False):
        return _set_fleet_switch(ctx, None, reason)
    bot = ctx.kube.get_bot(ctx.namespace, ctx.args.bot)
    if not is_halted(bot):
        return _apply_each(ctx, [bot], lambda _b: (None, "not halted; nothing to do"))
    return _apply_each(ctx, [bot], lambda _b: (unhalt_patch(reason), "kill switch removed"))


def _set_fleet_switch(ctx: Context, mode: HaltMode | None, reason: str | None) -> int:
    namespace, _, name = str(ctx.args.fleet_switch).partition("/")
    if mode is not None:
        _confirm(ctx, f"halt ({mode}) every tradingbot that obeys {namespace}/{name}")
    ctx.kube.patch_configmap(namespace, name, fleet_switch_patch(mode), create=mode is not None)
    what = f"fleet-wide kill switch set ({mode})" if mode else "fleet-wide kill switch removed"
    ctx.out.write(
        f"configmap {namespace}/{name}: {what}" + (f" ({reason})" if reason else "") + "\n"
    )
    return EXIT_OK


def load_state(kube: Kube, bot: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """The bot's state document from its ConfigMap, or None and a note saying why not."""
    meta = _mapping(bot.get("metadata"))
    namespace, name = str(meta.get("namespace")), str(meta.get("name"))
    configmap = state_configmap_name(name)
    backend = _mapping(_mapping(bot.get("spec")).get("state")).get("backend")
    if backend == StateBackend.PVC:
        return None, (
            f"the state is on the PersistentVolumeClaim {configmap}, which the plugin "
            "cannot read; showing the status only"
        )
    try:
        data = kube.read_state(namespace, name)
    except PluginError as exc:
        if exc.code == EXIT_FORBIDDEN:
            return None, (
                f"not allowed to read configmap {configmap} in namespace "
                f"{namespace}; showing the status only"
            )
        if exc.code == EXIT_NOT_FOUND:
            return None, (
                f"no state ConfigMap {configmap} yet (the bot has not saved state); "
                "showing the status only"
            )
        return None, f"cannot read configmap {configmap}: {exc.message}"
    text = data.get(STATE_KEY)
    if not text:
        return None, f"configmap {configmap} has no {STATE_KEY}; showing the status only"
    try:
        state = json.loads(text)
    except ValueError as exc:
        return None, f"{STATE_KEY} in configmap {configmap} is not valid JSON ({exc})"
    if not isinstance(state, dict):
        return None, f"{STATE_KEY} in configmap {configmap} is not a JSON object"
    return state, None


def cmd_positions(ctx: Context) -> int:
    bot = ctx.kube.get_bot(ctx.namespace, ctx.args.bot)
    state, note = load_state(ctx.kube, bot)
    if ctx.args.output == "json":
        status = _mapping(bot.get("status"))
        document = {
            "name": _mapping(bot.get("metadata")).get("name"),
            "namespace": _mapping(bot.get("metadata")).get("namespace"),
            "phase": status.get("phase"),
            "halted": is_halted(bot),
            "suspended": is_suspended(bot),
            "status": {key: status.get(key) for key in ("positions", "pnl", "trades", "state")},
            "positions": [dict(p) for p in state_positions(state)] if state else None,
            "balances": dict(_mapping(state.get("balances"))) if state else None,
            "stats": state.get("stats") if state else None,
            "checkpointSeq": state.get("checkpointSeq") if state else None,
            "note": note,
        }
        ctx.out.write(dump(document, "json"))
        return EXIT_OK
    ctx.out.write(render_positions(bot, state, note))
    return EXIT_OK


def _audit_source(ctx: Context) -> AuditSource:
    args = ctx.args
    log_dir = getattr(args, "log_dir", None)
    url = getattr(args, "audit_url", None) or os.environ.get(AUDIT_URL_ENV)
    if log_dir:
        return LocalAuditSource(Path(log_dir))
    if not url:
        raise PluginError(
            f"audit: give --audit-url URL (or set ${AUDIT_URL_ENV}) for the audit sidecar, "
            "or --log-dir DIR for a local log",
            EXIT_USAGE,
        )
    if not url.startswith(("http://", "https://")):
        raise PluginError(f"--audit-url {url!r} is not an http(s) URL", EXIT_USAGE)
    try:
        token = ctx.token()
    except PluginError:
        # No kubeconfig at all: ask without a token and let the server decide.
        token = None
    return HttpAuditSource(url, token, ca_file=getattr(args, "audit_ca", None))


def _audit_query(ctx: Context) -> AuditQuery:
    """Filters from the arguments; relative times (30m, 24h, 7d) become absolute UTC."""
    from tradingbot_audit.reader import parse_time_arg

    args = ctx.args
    now = ctx.clock()

    def when(value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return parse_time_arg(value, now)
        except ValueError as exc:
            raise PluginError(str(exc), EXIT_USAGE) from None

    return AuditQuery(
        event_type=getattr(args, "event_type", None),
        severity=getattr(args, "severity", None),
        source=getattr(args, "source", None),
        bot=getattr(args, "audit_bot", None),
        user=getattr(args, "user", None),
        # The namespace filter applies only when -n is given: the audit spans namespaces.
        namespace=getattr(args, "namespace", None),
        since=when(getattr(args, "since", None)),
        until=when(getattr(args, "until", None)),
    )


def _audit_head(ctx: Context) -> ChainHead | None:
    """The chain head in --head-configmap, read with the kubeconfig user's own access."""
    ref = getattr(ctx.args, "head_configmap", None)
    if not ref:
        return None
    try:
        namespace, name = parse_configmap_ref(ref)
    except ValueError as exc:
        raise PluginError(f"--head-configmap: {exc}", EXIT_USAGE) from None
    data = ctx.kube.read_configmap(namespace, name)
    try:
        head = head_from_data(data)
    except ValueError as exc:
        raise PluginError(f"configmap {ref} holds no valid chain head: {exc}") from None
    if head is None:
        raise PluginError(f"configmap {ref} holds no chain head (no seq and hash)")
    return head


def cmd_audit(ctx: Context) -> int:
    args = ctx.args
    action = getattr(args, "audit_command", None)
    output = getattr(args, "output", "table")
    if action == "verify":
        # The head before the log: lines appended in between only make the log longer.
        head = _audit_head(ctx)
        result = _audit_source(ctx).verify(head)
        if output == "json":
            ctx.out.write(dump(result, "json"))
        else:
            ctx.out.write(f"{result.get('summary') or ('ok' if result.get('ok') else 'FAILED')}\n")
        return EXIT_OK if result.get("ok") is True else EXIT_FAILED
    query = _audit_query(ctx)
    if action == "summary":
        result = _audit_source(ctx).summary(query)
        ctx.out.write(dump(result, "json") if output == "json" else render_summary(result))
        return EXIT_OK
    if action == "export":
        source = _audit_source(ctx)
        if args.file == "-":
            count = source.export(query, ctx.out)
        else:
            target = Path(args.file)
            tmp = target.with_name(f".{target.name}.tmp")
            # Beside the target, then renamed: a failed export never leaves half a file.
            try:
                with tmp.open("w", encoding="utf-8") as handle:
                    count = source.export(query, handle)
                tmp.replace(target)
            finally:
                tmp.unlink(missing_ok=True)
            ctx.err.write(f"exported {count} events to {target}\n")
        return EXIT_OK
    limit = getattr(args, "limit", DEFAULT_AUDIT_LIMIT)
    if limit < 0:
        raise PluginError("--limit must be >= 0 (0 for all)", EXIT_USAGE)
    events = _audit_source(ctx).events(query, limit)
    if output == "json":
        ctx.out.write(dump(events, "json"))
    elif events:
        ctx.out.write(audit_table(events) + "\n")
    else:
        ctx.err.write("no matching events\n")
    return EXIT_OK


COMMANDS: Final[dict[str, Callable[[Context], int]]] = {
    "status": cmd_status,
    "restart": cmd_restart,
    "stop": cmd_stop,
    "resume": cmd_resume,
    "halt": cmd_halt,
    "unhalt": cmd_unhalt,
    "positions": cmd_positions,
    "audit": cmd_audit,
}


# -- arguments --------------------------------------------------------------------------------


def _global_options() -> argparse.ArgumentParser:
    # SUPPRESS keeps an option given before the command from being reset by the command's
    # own copy (argparse copies every default of a subparser over the parent's values).
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("global options")
    group.add_argument(
        "--kubeconfig",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="kubeconfig file (default: $KUBECONFIG, else ~/.kube/config)",
    )
    group.add_argument(
        "--context",
        metavar="NAME",
        default=argparse.SUPPRESS,
        help="kubeconfig context (default: the current one)",
    )
    group.add_argument(
        "-n",
        "--namespace",
        metavar="NS",
        default=argparse.SUPPRESS,
        help="namespace (default: the context's, else default)",
    )
    return common


def _audit_options(parser: argparse.ArgumentParser, *, filters: bool) -> None:
    source = parser.add_argument_group("audit source")
    source.add_argument(
        "--audit-url",
        metavar="URL",
        default=argparse.SUPPRESS,
        help=f"audit API base URL (default: ${AUDIT_URL_ENV})",
    )
    source.add_argument(
        "--audit-ca",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="CA bundle for an https audit URL",
    )
    source.add_argument(
        "--log-dir",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help="read a local audit log directory instead of the API",
    )
    if not filters:
        return
    group = parser.add_argument_group("filters (-n NS filters by namespace)")
    group.add_argument(
        "--type",
        dest="event_type",
        metavar="T",
        default=argparse.SUPPRESS,
        help="event type: config_change, restart, stop, halt, trade, ...",
    )
    group.add_argument(
        "--severity", choices=("info", "warning", "critical"), default=argparse.SUPPRESS
    )
    group.add_argument(
        "--source",
        metavar="S",
        default=argparse.SUPPRESS,
        help="kubectl, gitops, plugin, operator, bot, webhook",
    )
    group.add_argument(
        "--bot",
        dest="audit_bot",
        metavar="B",
        default=argparse.SUPPRESS,
        help="target bot (or symbol)",
    )
    group.add_argument(
        "--user",
        metavar="U",
        default=argparse.SUPPRESS,
        help="the Kubernetes user who made the change",
    )
    group.add_argument(
        "--since",
        metavar="TIME",
        default=argparse.SUPPRESS,
        help="inclusive lower bound: ISO 8601 (UTC if no offset) or 30m, 24h, 7d",
    )
    group.add_argument(
        "--until",
        metavar="TIME",
        default=argparse.SUPPRESS,
        help="exclusive upper bound, same forms",
    )


def _selection(parser: argparse.ArgumentParser, verb: str) -> None:
    parser.add_argument("bot", nargs="?", metavar="BOT", help=f"the tradingbot to {verb}")
    parser.add_argument(
        "--all", action="store_true", help=f"{verb} every tradingbot in the namespace"
    )
    parser.add_argument(
        "-l",
        "--selector",
        metavar="SELECTOR",
        help=f"{verb} the tradingbots matching this label selector",
    )
    parser.add_argument(
        "-A", "--all-namespaces", action="store_true", help="with --all or -l: in every namespace"
    )


def _fleet_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--fleet",
        action="store_true",
        help="the fleet-wide kill switch (a ConfigMap every bot watches) instead of one bot",
    )
    parser.add_argument(
        "--fleet-switch",
        metavar="NAMESPACE/NAME",
        default=os.environ.get("TRADINGBOT_FLEET_SWITCH", DEFAULT_FLEET_SWITCH),
        help=f"the fleet switch ConfigMap (default: $TRADINGBOT_FLEET_SWITCH or "
        f"{DEFAULT_FLEET_SWITCH})",
    )


def build_parser() -> argparse.ArgumentParser:
    common = _global_options()
    parser = argparse.ArgumentParser(
        prog=PROG,
        parents=[common],
        description="Operate TradingBots (trading.r7.dev/v1alpha1): status, graceful restarts, "
        "stop/resume, the halt kill switch, positions and the audit log.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            parents=[common],
            help=text,
            description=text,
            epilog=EXIT_CODES_HELP,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    status = command("status", "show tradingbots: phase, readiness, positions, PnL, pending action")
    status.add_argument("bot", nargs="?", metavar="BOT", help="one tradingbot (default: all)")
    status.add_argument(
        "-A",
        "--all-namespaces",
        action="store_true",
        help="every namespace (adds a NAMESPACE column)",
    )
    status.add_argument("-l", "--selector", metavar="SELECTOR", help="label selector")
    status.add_argument(
        "-w", "--watch", action="store_true", help="redraw on every change until Ctrl-C"
    )
    status.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table")

    restart = command(
        "restart",
        "request a graceful restart (annotation "
        f"{ANNOTATION_RESTARTED_AT}, coalesced and rate limited)",
    )
    _selection(restart, "restart")
    restart.add_argument(
        "--reason", required=True, metavar="TEXT", help="why: recorded in the audit log (required)"
    )

    stop = command("stop", f"stop gracefully (annotation {ANNOTATION_SUSPEND}); positions are kept")
    stop.add_argument("bot", metavar="BOT")
    stop.add_argument("--reason", metavar="TEXT", help="why: recorded in the audit log")

    resume = command("resume", "start a bot stopped with `stop` again")
    resume.add_argument("bot", metavar="BOT")
    resume.add_argument("--reason", metavar="TEXT", help="why: recorded in the audit log")

    halt = command(
        "halt",
        f"kill switch ({ANNOTATION_HALT}), no coalescing or rate limit; obeyed by the bots "
        "themselves even with the operator down; undo with unhalt",
    )
    _selection(halt, "halt")
    halt.add_argument(
        "--mode",
        choices=[str(m) for m in HaltMode],
        default=str(HaltMode.TRUE),
        help="true: stop now, keep positions; drain: no new entries, stop once flat; "
        "flatten: close every position at market, then stop (default: true)",
    )
    _fleet_options(halt)
    halt.add_argument("--reason", metavar="TEXT", help="why: recorded in the audit log")
    halt.add_argument(
        "-y", "--yes", action="store_true", help="with --all, -l or --fleet: do not ask first"
    )

    unhalt = command(
        "unhalt", f"remove the kill switch ({ANNOTATION_HALT}) so the bot may trade again"
    )
    unhalt.add_argument("bot", nargs="?", metavar="BOT")
    _fleet_options(unhalt)
    unhalt.add_argument("--reason", metavar="TEXT", help="why: recorded in the audit log")

    positions = command("positions", "open positions, balances and PnL of one bot")
    positions.add_argument("bot", metavar="BOT")
    positions.add_argument("-o", "--output", choices=("table", "json"), default="table")

    audit = command(
        "audit", "query the audit log (most recent first); subcommands: summary, export, verify"
    )
    _audit_options(audit, filters=True)
    audit.add_argument(
        "--limit",
        type=int,
        default=DEFAULT_AUDIT_LIMIT,
        help=f"at most N events (default {DEFAULT_AUDIT_LIMIT}; 0 for all)",
    )
    audit.add_argument("-o", "--output", choices=("table", "json"), default="table")
    audit_commands = audit.add_subparsers(dest="audit_command", metavar="SUBCOMMAND")
    audit_summary = audit_commands.add_parser(
        "summary", parents=[common], help="counts by type, severity, source and bot"
    )
    _audit_options(audit_summary, filters=True)
    audit_summary.add_argument(
        "-o", "--output", choices=("table", "json"), default=argparse.SUPPRESS
    )
    audit_export = audit_commands.add_parser(
        "export", parents=[common], help="matching events as one JSON array in chain order"
    )
    audit_export.add_argument("file", metavar="FILE", help="output file, or - for stdout")
    _audit_options(audit_export, filters=True)
    audit_verify = audit_commands.add_parser(
        "verify", parents=[common], help="check the hash chain; exit 1 if it is broken"
    )
    _audit_options(audit_verify, filters=False)
    audit_verify.add_argument(
        "--head-configmap",
        metavar="NAMESPACE/NAME",
        default=argparse.SUPPRESS,
        help="also check the log against the chain head the audit sidecar records in this "
        "ConfigMap (catches lines deleted from the end); needs get on it",
    )
    audit_verify.add_argument(
        "-o", "--output", choices=("table", "json"), default=argparse.SUPPRESS
    )
    return parser


def main(
    argv: Sequence[str] | None = None,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    clock: Clock = utc_now,
) -> int:
    """Run one command; returns the exit code (the console script exits with it)."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        # argparse exits 2 on bad usage and 0 after --help.
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    ctx = Context(args, out, err, clock)
    try:
        return COMMANDS[args.command](ctx)
    except PluginError as exc:
        err.write(f"error: {exc.message}\n")
        return exc.code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`| head`): not an error worth a traceback. Point stdout at
        # /dev/null so the interpreter's final flush does not fail again.
        if out is sys.stdout:
            with contextlib.suppress(OSError, ValueError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    finally:
        ctx.close()


__all__ = [
    "FIELD_MANAGER",
    "AuditQuery",
    "HttpAuditSource",
    "LocalAuditSource",
    "PluginError",
    "build_parser",
    "format_age",
    "halt_patch",
    "main",
    "pending_text",
    "restart_patch",
    "status_table",
    "suspend_patch",
    "unhalt_patch",
    "user_agent",
    "watch_status",
]
