"""The sidecar's HTTP API: its two applications, their handlers and request parsing.

* ingest, `--ingest-listen` (default 127.0.0.1:8900, empty for none): `POST /v1/events` from
  an operator in the same pod. There is no authentication on this path. The trust boundary
  is the pod's network namespace: a loopback address is reachable only from containers of the
  same pod. Never bind it to a pod or node address. The chart opens none: its sidecar runs in
  a pod of its own, and the operator posts to the main listener.
* main, `--listen` (default 0.0.0.0:8901), every request authenticated with a Kubernetes
  bearer token except `/healthz` and `/metrics`:
  `POST /v1/events` from the operator (TokenReview for the audience `tradingbot-audit`, and
  the user must be one of `--operator-user`: whoever else holds a token cannot write
  operator events, however wide their RBAC), `POST /v1/bot-events` from bots (TokenReview; a
  bot's ServiceAccount `tradingbot-<bot>` may report only about itself), and the read API used by
  `kubectl tradingbot audit`: `GET /v1/events`, `/v1/summary`, `/v1/verify` (TokenReview,
  then a SubjectAccessReview for `get` on `tradingbots/audit`).

Errors are answered as `{"error": message}`. Events are validated here so that a bad request
is refused on its own; they are stored through the SerialWriter (ingest.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Final, TypeVar

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from tradingbot_api.audit_http import (
    BOT_EVENTS_PATH,
    EVENTS_PATH,
    MAX_BODY_BYTES,
    MAX_EVENTS_PER_REQUEST,
    OPERATOR_AUDIENCE,
    SUMMARY_PATH,
    VERIFY_PATH,
)

from .auth import (
    AUDIT_READ,
    BOT_ACCOUNT_PREFIX,
    Authorizer,
    AuthUnavailableError,
    Identity,
    bot_of,
)
from .head import ChainHead, parse_head
from .ingest import SerialWriter, WriterUnavailableError
from .reader import AuditFilter, parse_time_arg, query, summary
from .schema import SEVERITIES, AuditSchemaError, normalize_event
from .verify import verify_log
from .writer import AppendResult

log = logging.getLogger(__name__)

T = TypeVar("T")

# One request is one operator batch or one bot report (at most MAX_EVENTS_PER_REQUEST events in
# MAX_BODY_BYTES); anything larger is a bug upstream, and bounding it bounds the memory an
# authenticated (or co-located) caller can make us spend.

DEFAULT_QUERY_LIMIT: Final = 100
MAX_QUERY_LIMIT: Final = 10_000
# Reads run on the default thread pool; bounding them keeps a burst of `verify` calls from
# occupying every thread (writes have a thread of their own and are never queued behind them).
READ_CONCURRENCY: Final = 4

BOT_EVENT_TYPES: Final = ("trade", "position_change", "error", "halt")

READ_PARAMS: Final = {
    "type": "event_type",
    "severity": "severity",
    "source": "source",
    "bot": "target",
    "user": "user_id",
    "namespace": "namespace",
}


class HttpError(Exception):
    """Answered as `{"error": message}` with `status`."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


def _json(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        body=json.dumps(data, ensure_ascii=False).encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


@web.middleware
async def _errors_as_json(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except HttpError as exc:
        return _json({"error": exc.message}, exc.status, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow",)}
        return _json({"error": exc.reason}, exc.status, headers)


def parse_read_params(
    params: Mapping[str, Sequence[str]], now: datetime, *, allow_limit: bool
) -> tuple[AuditFilter, int]:
    """Filters and limit of a read request; raises HttpError(400) naming the bad parameter.

    A repeated parameter matches any of its values; an empty value counts as absent. `limit`
    0 means as many as the server returns at most (MAX_QUERY_LIMIT).
    """
    allowed = set(READ_PARAMS) | {"since", "until"} | ({"limit"} if allow_limit else set())
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise HttpError(
            400,
            f"unknown query parameter(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(sorted(allowed))}",
        )
    values = {key: tuple(v for v in params.get(key, ()) if v) for key in allowed}
    for severity in values["severity"]:
        if severity not in SEVERITIES:
            raise HttpError(400, f"severity {severity!r} is not one of {', '.join(SEVERITIES)}")
    bounds: dict[str, str | None] = {}
    for name in ("since", "until"):
        given = values[name]
        if len(given) > 1:
            raise HttpError(400, f"{name} may be given once")
        try:
            bounds[name] = parse_time_arg(given[0], now) if given else None
        except (ValueError, OverflowError) as exc:
            raise HttpError(400, f"{name}: {exc}") from None
    limit = DEFAULT_QUERY_LIMIT
    if allow_limit and values["limit"]:
        text = values["limit"][-1]
        try:
            limit = int(text)
        except ValueError:
            raise HttpError(400, f"limit {text!r} is not an integer") from None
        if limit < 0 or limit > MAX_QUERY_LIMIT:
            raise HttpError(400, f"limit must be between 0 and {MAX_QUERY_LIMIT}, got {limit}")
        limit = limit or MAX_QUERY_LIMIT
    flt = AuditFilter.build(
        **{field_name: values[param] for param, field_name in READ_PARAMS.items()},
        since=bounds["since"],
        until=bounds["until"],
    )
    return flt, limit


def parse_verify_params(params: Mapping[str, Sequence[str]]) -> ChainHead | None:
    """The optional `head=SEQ:HASH` of GET /v1/verify; HttpError(400) for anything else."""
    unknown = sorted(set(params) - {"head"})
    if unknown:
        raise HttpError(400, f"unknown query parameter(s) {', '.join(unknown)}; allowed: head")
    values = [value for value in params.get("head", ()) if value]
    if len(values) > 1:
        raise HttpError(400, "head may be given once")
    if not values:
        return None
    try:
        return parse_head(values[0])
    except ValueError as exc:
        raise HttpError(400, str(exc)) from None


def prepare_bot_event(
    event: Mapping[str, Any], index: int, namespace: str, bot: str, username: str
) -> dict[str, Any]:
    """A bot's event as it will be stored; HttpError 400 or 403 when it may not be.

    A bot reports only about itself: a target or namespace naming anything else is refused
    (missing ones are filled in). `source` and `user_id` are the server's, never the bot's.
    The dedup key is prefixed with the bot's identity so that a bot can neither collide with
    nor pre-empt (and thereby suppress) another writer's event.
    """
    where = f"events[{index}]"
    event_type = event.get("event_type")
    if event_type not in BOT_EVENT_TYPES:
        raise HttpError(
            400,
            f"{where}.event_type {event_type!r}: bots may report only {', '.join(BOT_EVENT_TYPES)}",
        )
    for name, own in (("target", bot), ("namespace", namespace)):
        value = event.get(name)
        if value is not None and value != own:
            raise HttpError(
                403,
                f"{where}.{name} is {value!r}: {username} may report only about bot "
                f"{bot!r} in namespace {namespace!r}",
            )
    prepared = dict(event)
    prepared["target"] = bot
    prepared["namespace"] = namespace
    prepared["source"] = "bot"
    prepared["user_id"] = username
    key = event.get("dedup_key")
    if isinstance(key, str) and key:
        prepared["dedup_key"] = f"bot/{namespace}/{bot}/{key}"
    return prepared


def _summary_json(result: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "total": result["total"],
        "by_type": result["by_event_type"],
        "by_severity": result["by_severity"],
        "by_source": result["by_source"],
        "by_target": result["by_target"],
        "first_seq": result["first_seq"],
        "last_seq": result["last_seq"],
        "first_timestamp": result["first_timestamp"],
        "last_timestamp": result["last_timestamp"],
    }


class AuditApi:
    """The two HTTP applications around one SerialWriter (AuditServer adds the writer's
    lifecycle and the chain head)."""

    def __init__(
        self,
        log_dir: Path,
        writer: SerialWriter,
        authorizer: Authorizer,
        registry: CollectorRegistry,
        *,
        clock: Callable[[], datetime],
        operator_users: Sequence[str] = (),
    ) -> None:
        self.log_dir = log_dir
        self.operator_users = frozenset(operator_users)
        self.writer = writer
        self.authorizer = authorizer
        self.registry = registry
        self._clock = clock
        self._reads = asyncio.Semaphore(READ_CONCURRENCY)
        # Set (by AuditServer.start) when the log failed its check against the recorded head:
        # then nothing is appended, and this says why (in logs, /healthz and every refused write).
        self.refusal: str | None = None

    # -- applications ---------------------------------------------------------------------

    def ingest_app(self) -> web.Application:
        """The loopback listener: the operator's unauthenticated ingest (see module docstring)."""
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[_errors_as_json])
        app.router.add_post(EVENTS_PATH, self._post_events)
        app.router.add_get("/healthz", self._healthz)
        return app

    def api_app(self) -> web.Application:
        """The main listener: bot ingest and the read API (bearer tokens), health, metrics."""
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[_errors_as_json])
        app.router.add_post(EVENTS_PATH, self._post_operator_events)
        app.router.add_post(BOT_EVENTS_PATH, self._post_bot_events)
        app.router.add_get(EVENTS_PATH, self._get_events)
        app.router.add_get(SUMMARY_PATH, self._get_summary)
        app.router.add_get(VERIFY_PATH, self._get_verify)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        return app

    # -- handlers -------------------------------------------------------------------------

    async def _healthz(self, request: web.Request) -> web.Response:
        if self.refusal is not None:
            return _json({"status": "refusing", "reason": self.refusal}, 503)
        if self.writer.healthy:
            return _json({"status": "ok"})
        return _json({"status": "unavailable"}, 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def _post_events(self, request: web.Request) -> web.Response:
        events = await self._read_events(request)
        for index, event in enumerate(events):
            key = event.get("dedup_key")
            if not isinstance(key, str) or not key:
                # Without a key a retried request would write the event twice.
                raise HttpError(400, f"events[{index}].dedup_key is required (a non-empty string)")
        return await self._store(events)

    async def _post_operator_events(self, request: web.Request) -> web.Response:
        identity = await self._authenticate(request, audiences=(OPERATOR_AUDIENCE,))
        if identity.username not in self.operator_users:
            allowed = ", ".join(sorted(self.operator_users)) or "none configured (--operator-user)"
            raise HttpError(
                403, f"{identity.username} may not write operator events (operators: {allowed})"
            )
        return await self._post_events(request)

    async def _post_bot_events(self, request: web.Request) -> web.Response:
        identity = await self._authenticate(request)
        bot = bot_of(identity.username)
        if bot is None:
            raise HttpError(
                403,
                f"{identity.username} is not a bot's ServiceAccount "
                f"(system:serviceaccount:<namespace>:{BOT_ACCOUNT_PREFIX}<bot>)",
            )
        namespace, name = bot
        events = await self._read_events(request)
        prepared = [
            prepare_bot_event(event, index, namespace, name, identity.username)
            for index, event in enumerate(events)
        ]
        return await self._store(prepared)

    async def _get_events(self, request: web.Request) -> web.Response:
        identity = await self._authenticate(request)
        flt, limit = parse_read_params(_multi(request), self._clock(), allow_limit=True)
        await self._authorize_read(identity, flt.namespace)
        records = await self._read(lambda: query(self.log_dir, flt, limit=limit + 1))
        return _json({"events": records[:limit], "truncated": len(records) > limit})

    async def _get_summary(self, request: web.Request) -> web.Response:
        identity = await self._authenticate(request)
        flt, _limit = parse_read_params(_multi(request), self._clock(), allow_limit=False)
        await self._authorize_read(identity, flt.namespace)
        result = await self._read(lambda: summary(self.log_dir, flt).to_json())
        return _json(_summary_json(result))

    async def _get_verify(self, request: web.Request) -> web.Response:
        identity = await self._authenticate(request)
        head = parse_verify_params(_multi(request))
        # The chain covers every namespace, so checking it is a cluster-wide read.
        await self._authorize_read(identity, ())
        result = await self._read(lambda: verify_log(self.log_dir, head=head))
        return _json(
            {
                "ok": result.ok,
                "summary": result.summary(),
                "error": None if result.error is None else asdict(result.error),
                "events": result.events,
                "files": result.files,
                "last_seq": result.last_seq,
            }
        )

    # -- pieces ---------------------------------------------------------------------------

    async def _read(self, call: Callable[[], T]) -> T:
        async with self._reads:
            return await asyncio.to_thread(call)

    async def _authenticate(self, request: web.Request, audiences: Sequence[str] = ()) -> Identity:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        challenge = {"WWW-Authenticate": 'Bearer realm="tradingbot-audit"'}
        if scheme.lower() != "bearer" or not token:
            raise HttpError(401, "a Kubernetes bearer token is required", challenge)
        try:
            identity = await self.authorizer.authenticate(token, audiences)
        except AuthUnavailableError as exc:
            log.error("TokenReview failed: %s", exc)
            raise HttpError(503, "cannot check the token now", {"Retry-After": "2"}) from None
        if identity is None:
            wanted = f" for the audience {', '.join(audiences)}" if audiences else ""
            raise HttpError(401, f"the bearer token is invalid or expired{wanted}", challenge)
        return identity

    async def _authorize_read(self, identity: Identity, namespaces: Sequence[str]) -> None:
        # Every requested namespace must be readable: "any of" filters would otherwise let
        # one permitted namespace carry a forbidden one along.
        checks = [replace(AUDIT_READ, namespace=ns) for ns in namespaces]
        for check in checks or [AUDIT_READ]:
            try:
                allowed = await self.authorizer.allowed(identity, check)
            except AuthUnavailableError as exc:
                log.error("SubjectAccessReview failed: %s", exc)
                raise HttpError(503, "cannot check permissions now", {"Retry-After": "2"}) from None
            if not allowed:
                raise HttpError(403, f"{identity.username} may not {check.describe()}")

    async def _read_events(self, request: web.Request) -> list[dict[str, Any]]:
        length = request.content_length
        if length is not None and length > MAX_BODY_BYTES:
            raise HttpError(413, f"the body is {length} bytes; the limit is {MAX_BODY_BYTES}")
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise HttpError(413, f"the body is larger than {MAX_BODY_BYTES} bytes") from None
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise HttpError(400, f"the body is not JSON: {exc}") from None
        if not isinstance(body, dict) or not isinstance(body.get("events"), list):
            raise HttpError(400, 'the body must be a JSON object {"events": [event, ...]}')
        events = body["events"]
        if len(events) > MAX_EVENTS_PER_REQUEST:
            raise HttpError(
                413,
                f"{len(events)} events in one request; the limit is {MAX_EVENTS_PER_REQUEST}",
            )
        for index, event in enumerate(events):
            if not isinstance(event, dict):
                raise HttpError(400, f"events[{index}] must be a JSON object")
        return events

    async def _store(self, events: list[dict[str, Any]]) -> web.Response:
        if self.refusal is not None:
            raise HttpError(503, self.refusal)
        # Validate before queueing so that a bad request is a 400 of its own and never shares
        # a batch with anyone; the writer validates again (it is the authority).
        now = self._clock()
        for index, event in enumerate(events):
            try:
                normalize_event(event, now)
            except AuditSchemaError as exc:
                raise HttpError(400, f"events[{index}]: {exc}") from None
            except RecursionError:
                raise HttpError(400, f"events[{index}].details is nested too deeply") from None
        try:
            results = await self.writer.append(events)
        except AuditSchemaError as exc:
            raise HttpError(400, str(exc)) from None
        except WriterUnavailableError as exc:
            raise HttpError(503, str(exc), {"Retry-After": "1"}) from None
        return _json({"stored": [_stored(result) for result in results]})


def _stored(result: AppendResult) -> dict[str, Any]:
    return {"seq": result.seq, "hash": result.hash, "duplicate": result.duplicate}


def _multi(request: web.Request) -> dict[str, list[str]]:
    return {key: request.query.getall(key) for key in request.query}
