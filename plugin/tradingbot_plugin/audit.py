"""`audit`, `audit summary`, `audit export` and `audit verify`, and where they read from: the
audit sidecar's HTTP API (`--audit-url` or $TRADINGBOT_AUDIT_URL, with the kubeconfig user's
bearer token) or a local log directory (`--log-dir`).

`audit verify --head-configmap` reads the chain head the sidecar records outside the log
volume with the kubeconfig user's own access, and has the log checked against it (a
truncated tail).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, Final, Protocol

from tradingbot_api.audit_http import EVENTS_PATH, SUMMARY_PATH, VERIFY_PATH
from tradingbot_audit.head import ChainHead, head_from_data, parse_configmap_ref
from tradingbot_audit.tables import audit_table
from tradingbot_plugin.commands import Context
from tradingbot_plugin.core import ExitCode, PluginError, _number, user_agent
from tradingbot_plugin.format import dump, render_summary, summary_from_local

AUDIT_URL_ENV: Final = "TRADINGBOT_AUDIT_URL"
AUDIT_FORBIDDEN_MESSAGE: Final = (
    "not allowed to read the audit log (needs get on tradingbots/audit)"
)
DEFAULT_AUDIT_LIMIT: Final = 100


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
                raise PluginError(AUDIT_FORBIDDEN_MESSAGE, ExitCode.FORBIDDEN) from None
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
        body = self._get(EVENTS_PATH, {**query.params(), "limit": str(limit)})
        events = body.get("events") if isinstance(body, Mapping) else None
        if not isinstance(events, list):
            raise PluginError('the audit API\'s /v1/events answer has no "events" list')
        return [e for e in events if isinstance(e, dict)]

    def summary(self, query: AuditQuery) -> dict[str, Any]:
        body = self._get(SUMMARY_PATH, query.params())
        if not isinstance(body, dict) or "total" not in body:
            raise PluginError('the audit API\'s /v1/summary answer has no "total"')
        return body

    def verify(self, head: ChainHead | None = None) -> dict[str, Any]:
        body = self._get(VERIFY_PATH, None if head is None else {"head": str(head)})
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
            raise PluginError(str(exc), ExitCode.USAGE) from None

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


# -- the audit command -------------------------------------------------------------------------


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
            ExitCode.USAGE,
        )
    if not url.startswith(("http://", "https://")):
        raise PluginError(f"--audit-url {url!r} is not an http(s) URL", ExitCode.USAGE)
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
            raise PluginError(str(exc), ExitCode.USAGE) from None

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
        raise PluginError(f"--head-configmap: {exc}", ExitCode.USAGE) from None
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
        return ExitCode.OK if result.get("ok") is True else ExitCode.FAILED
    query = _audit_query(ctx)
    if action == "summary":
        result = _audit_source(ctx).summary(query)
        ctx.out.write(dump(result, "json") if output == "json" else render_summary(result))
        return ExitCode.OK
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
        return ExitCode.OK
    limit = getattr(args, "limit", DEFAULT_AUDIT_LIMIT)
    if limit < 0:
        raise PluginError("--limit must be >= 0 (0 for all)", ExitCode.USAGE)
    events = _audit_source(ctx).events(query, limit)
    if output == "json":
        ctx.out.write(dump(events, "json"))
    elif events:
        ctx.out.write(audit_table(events) + "\n")
    else:
        ctx.err.write("no matching events\n")
    return ExitCode.OK
