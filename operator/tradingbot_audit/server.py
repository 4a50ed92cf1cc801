"""The audit sidecar: the single writer of the audit log and its HTTP API (SPEC §6).

`python -m tradingbot_audit --log-dir DIR serve` runs as a second container in the
operator pod, with the log directory on a PersistentVolume. It is the only process that
writes the log (the writer's flock enforces that), so every event reaches the chain through
here. Two listeners:

* ingest, `--ingest-listen` (default 127.0.0.1:8900): `POST /v1/events` from the operator.
  There is no authentication on this path. The trust boundary is the pod's network
  namespace: a loopback address is reachable only from containers of the same pod, i.e. the
  operator. Never bind it to a pod or node address. (On the localkube process node every pod
  is a host process sharing one loopback interface, so there the boundary is the machine; it
  is a development environment, not a place for real money.)
* main, `--listen` (default 0.0.0.0:8901), every request authenticated with a Kubernetes
  bearer token except `/healthz` and `/metrics`:
  `POST /v1/bot-events` from bots (TokenReview; a bot's ServiceAccount
  `tradingbot-<bot>` may report only about itself), and the read API used by
  `kubectl tradingbot audit`: `GET /v1/events`, `/v1/summary`, `/v1/verify` (TokenReview,
  then a SubjectAccessReview for `get` on `tradingbots/audit`).

Ingest acknowledges only after fsync; the operator retries until it gets 200 and the
writer's dedup window turns retries into `duplicate: true`, which is what makes delivery
at-least-once without duplicates. The sidecar's ServiceAccount needs the
`system:auth-delegator` ClusterRole (create tokenreviews and subjectaccessreviews).

With `--head-configmap NAMESPACE/NAME` the sidecar also records the chain head (last seq and
hash) in that ConfigMap after fsync batches, checks the log against it on start, and refuses
to append to a log that ends before it (details in head.py); that needs get, update and
patch on the ConfigMap and create on configmaps.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import logging
import signal
import ssl
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from tradingbot_api.constants import API_GROUP, PLURAL

from .head import (
    DEFAULT_MIN_INTERVAL,
    ChainHead,
    ConfigMapHeadStore,
    HeadCheck,
    HeadPublisher,
    HeadStore,
    HeadStoreError,
    check_log,
    log_tail,
    parse_configmap_ref,
    parse_head,
)
from .metrics import AuditHooks, HeadMetrics, PrometheusHooks
from .reader import AuditFilter, parse_time_arg, query, summary
from .schema import SEVERITIES, AuditSchemaError, normalize_event
from .verify import verify_log
from .writer import DEFAULT_MAX_FILE_BYTES, AppendResult, open_writer

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_INGEST_LISTEN: Final = "127.0.0.1:8900"
DEFAULT_LISTEN: Final = "0.0.0.0:8901"

# One request is one operator batch or one bot report; anything larger is a bug upstream, and
# bounding it bounds the memory an authenticated (or co-located) caller can make us spend.
MAX_BODY_BYTES: Final = 1024 * 1024
MAX_EVENTS_PER_REQUEST: Final = 1000
# Concurrent requests are written as one batch (one fsync) up to this many events.
MAX_BATCH_EVENTS: Final = 5000

DEFAULT_QUERY_LIMIT: Final = 100
MAX_QUERY_LIMIT: Final = 10_000
# Reads run on the default thread pool; bounding them keeps a burst of `verify` calls from
# occupying every thread (writes have a thread of their own and are never queued behind them).
READ_CONCURRENCY: Final = 4

AUTH_CACHE_SECONDS: Final = 10.0
AUTH_CACHE_ENTRIES: Final = 4096
AUTH_REQUEST_TIMEOUT: Final = 5.0
DEFAULT_SHUTDOWN_TIMEOUT: Final = 20.0
RETENTION_INTERVAL_SECONDS: Final = 3600.0
# Reading the recorded head on start is retried this long while the API server is unreachable
# (the ingest listener opens only after the check, so the operator buffers meanwhile).
HEAD_READ_TIMEOUT: Final = 60.0
# On shutdown the last head gets this long to be written.
HEAD_FLUSH_TIMEOUT: Final = 5.0
ACCEPT_MISMATCH_FLAG: Final = "--accept-head-mismatch"

BOT_EVENT_TYPES: Final = ("trade", "position_change", "error", "halt")
SERVICE_ACCOUNT_PREFIX: Final = "system:serviceaccount:"
# A bot's pods run as ServiceAccount `tradingbot-<bot>` (render.service_account_name).
BOT_ACCOUNT_PREFIX: Final = "tradingbot-"

READ_PARAMS: Final = {
    "type": "event_type",
    "severity": "severity",
    "source": "source",
    "bot": "target",
    "user": "user_id",
    "namespace": "namespace",
}


# -- authentication and authorization --------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """An authenticated Kubernetes user, as TokenReview reports it (hashable: a cache key)."""

    username: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()


@dataclass(frozen=True)
class AccessCheck:
    """The resource attributes of a SubjectAccessReview; namespace None is cluster-wide."""

    verb: str
    group: str
    resource: str
    subresource: str = ""
    namespace: str | None = None

    def describe(self) -> str:
        resource = f"{self.resource}/{self.subresource}" if self.subresource else self.resource
        where = f"in namespace {self.namespace}" if self.namespace else "cluster-wide"
        return f"{self.verb} {resource}.{self.group} {where}"


AUDIT_READ: Final = AccessCheck(verb="get", group=API_GROUP, resource=PLURAL, subresource="audit")


class AuthUnavailableError(Exception):
    """The API server could not answer a TokenReview or SubjectAccessReview (503, not 401)."""


class Authorizer(Protocol):
    """Who is calling and what they may do. The real one asks the API server; tests fake it."""

    async def authenticate(self, token: str) -> Identity | None:
        """The token's user, or None when the token is invalid or expired."""
        ...

    async def allowed(self, identity: Identity, check: AccessCheck) -> bool:
        """Whether RBAC (or the cluster's authorizer chain) allows `check` for `identity`."""
        ...


def token_review_body(token: str, audiences: Sequence[str] = ()) -> dict[str, Any]:
    spec: dict[str, Any] = {"token": token}
    if audiences:
        spec["audiences"] = list(audiences)
    return {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec}


def identity_from_token_review(review: Mapping[str, Any]) -> Identity | None:
    status = review.get("status") or {}
    if not status.get("authenticated"):
        return None
    user = status.get("user") or {}
    username = user.get("username")
    if not isinstance(username, str) or not username:
        return None
    extra = user.get("extra") or {}
    return Identity(
        username=username,
        uid=str(user.get("uid") or ""),
        groups=tuple(str(group) for group in user.get("groups") or ()),
        extra=tuple(
            sorted((str(key), tuple(str(v) for v in values or ())) for key, values in extra.items())
        ),
    )


def access_review_body(identity: Identity, check: AccessCheck) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "verb": check.verb,
        "group": check.group,
        "resource": check.resource,
    }
    if check.subresource:
        attributes["subresource"] = check.subresource
    if check.namespace:
        attributes["namespace"] = check.namespace
    spec: dict[str, Any] = {
        "user": identity.username,
        "groups": list(identity.groups),
        "resourceAttributes": attributes,
    }
    if identity.uid:
        spec["uid"] = identity.uid
    if identity.extra:
        spec["extra"] = {key: list(values) for key, values in identity.extra}
    return {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": spec,
    }


def kube_api_client(kubeconfig: str | None = None) -> Any:
    """The given kubeconfig; else in-cluster credentials; else the default kubeconfig."""
    from kubernetes import client, config

    try:
        if kubeconfig:
            return config.new_client_from_config(config_file=kubeconfig)
        configuration = client.Configuration()
        try:
            # In a pod: the projected token is re-read when it rotates (the loader's
            # refresh hook), so a long-running sidecar keeps working.
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException:
            config.load_kube_config(client_configuration=configuration)
    except config.ConfigException as exc:
        raise ValueError(f"no usable Kubernetes credentials: {exc}") from exc
    return client.ApiClient(configuration)


class KubeTransport:
    """Raw JSON requests over the official client's (blocking) transport: the sidecar's one
    way to the API server, shared by the reviews and the chain head."""

    def __init__(self, api_client: Any, *, timeout: float = AUTH_REQUEST_TIMEOUT) -> None:
        self.api_client = api_client
        self.timeout = timeout

    @classmethod
    def from_kubeconfig(cls, kubeconfig: str | None = None) -> KubeTransport:
        return cls(kube_api_client(kubeconfig))

    def request(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        content_type: str = "application/json",
    ) -> tuple[int, bytes]:
        """(HTTP status, body); raises when the API server cannot be reached."""
        method, url, headers, payload, _ = self.api_client.param_serialize(
            method=method,
            resource_path=path,
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=None if body is None else dict(body),
            auth_settings=["BearerToken"],
        )
        response = self.api_client.call_api(
            method, url, header_params=headers, body=payload, _request_timeout=self.timeout
        )
        return int(response.status), bytes(response.read())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.api_client.close()


class KubeAuthorizer:
    """TokenReview and SubjectAccessReview against the API server, as raw JSON.

    The official client's transport is blocking, so each review runs on a worker thread.
    """

    TOKEN_REVIEWS: Final = "/apis/authentication.k8s.io/v1/tokenreviews"
    ACCESS_REVIEWS: Final = "/apis/authorization.k8s.io/v1/subjectaccessreviews"

    def __init__(
        self,
        api_client: Any,
        *,
        timeout: float = AUTH_REQUEST_TIMEOUT,
        audiences: Sequence[str] = (),
    ) -> None:
        self.transport = KubeTransport(api_client, timeout=timeout)
        self.audiences = tuple(audiences)

    @property
    def api_client(self) -> Any:
        return self.transport.api_client

    @classmethod
    def from_kubeconfig(cls, kubeconfig: str | None = None) -> KubeAuthorizer:
        """The given kubeconfig; else in-cluster credentials; else the default kubeconfig."""
        return cls(kube_api_client(kubeconfig))

    def close(self) -> None:
        self.transport.close()

    async def authenticate(self, token: str) -> Identity | None:
        review = await asyncio.to_thread(
            self._post, self.TOKEN_REVIEWS, token_review_body(token, self.audiences)
        )
        return identity_from_token_review(review)

    async def allowed(self, identity: Identity, check: AccessCheck) -> bool:
        review = await asyncio.to_thread(
            self._post, self.ACCESS_REVIEWS, access_review_body(identity, check)
        )
        return bool((review.get("status") or {}).get("allowed"))

    def _post(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        # Errors are reported without the request body: it carries the caller's token.
        try:
            status, data = self.transport.request("POST", path, body)
        except Exception as exc:
            raise AuthUnavailableError(f"POST {path} failed: {type(exc).__name__}: {exc}") from None
        if status in (401, 403):
            raise AuthUnavailableError(
                f"the API server refused POST {path} (HTTP {status}); the audit sidecar's "
                "ServiceAccount needs the system:auth-delegator ClusterRole"
            )
        if not 200 <= status < 300:
            raise AuthUnavailableError(f"POST {path} answered HTTP {status}")
        try:
            parsed = json.loads(data)
        except ValueError:
            raise AuthUnavailableError(f"POST {path} answered with something not JSON") from None
        if not isinstance(parsed, dict):
            raise AuthUnavailableError(f"POST {path} answered with a non-object")
        return parsed


class _TtlCache:
    """A small LRU map whose entries expire; the clock is monotonic seconds."""

    def __init__(self, ttl: float, max_entries: int, clock: Callable[[], float]) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[Any, tuple[float, Any]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Any) -> tuple[bool, Any]:
        entry = self._entries.get(key)
        if entry is None:
            return False, None
        expires, value = entry
        if self._clock() >= expires:
            del self._entries[key]
            return False, None
        self._entries.move_to_end(key)
        return True, value

    def put(self, key: Any, value: Any) -> None:
        self._entries[key] = (self._clock() + self.ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


class CachingAuthorizer:
    """Remembers TokenReview and SubjectAccessReview answers for a few seconds.

    Keeps query latency at one lookup instead of two API round trips. Denials and invalid
    tokens are cached too, so a client retrying with a bad token cannot turn the sidecar into
    a load generator against the API server. The cost: a revoked token or a removed
    RoleBinding takes up to `ttl` seconds to take effect. Tokens are keyed by their SHA-256,
    so no token is held in the cache.
    """

    def __init__(
        self,
        inner: Authorizer,
        *,
        ttl: float = AUTH_CACHE_SECONDS,
        max_entries: int = AUTH_CACHE_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = inner
        self._identities = _TtlCache(ttl, max_entries, clock)
        self._decisions = _TtlCache(ttl, max_entries, clock)

    async def authenticate(self, token: str) -> Identity | None:
        key = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        hit, cached = self._identities.get(key)
        if hit:
            return cached if isinstance(cached, Identity) else None
        identity = await self.inner.authenticate(token)
        self._identities.put(key, identity)
        return identity

    async def allowed(self, identity: Identity, check: AccessCheck) -> bool:
        key = (identity, check)
        hit, decision = self._decisions.get(key)
        if hit:
            return bool(decision)
        decision = await self.inner.allowed(identity, check)
        self._decisions.put(key, decision)
        return bool(decision)


def bot_of(username: str) -> tuple[str, str] | None:
    """(namespace, bot) when `username` is a bot's ServiceAccount, else None."""
    if not username.startswith(SERVICE_ACCOUNT_PREFIX):
        return None
    namespace, _, account = username[len(SERVICE_ACCOUNT_PREFIX) :].partition(":")
    if not namespace or not account.startswith(BOT_ACCOUNT_PREFIX):
        return None
    bot = account[len(BOT_ACCOUNT_PREFIX) :]
    return (namespace, bot) if bot else None


# -- the single writer ------------------------------------------------------------------------


class LogWriter(Protocol):
    """What the sidecar needs of an AuditWriter (tests substitute failing ones)."""

    def append_many(self, events: Iterable[Mapping[str, Any]]) -> list[AppendResult]: ...

    def apply_retention(self) -> list[Path]: ...

    def close(self) -> None: ...


class WriterUnavailableError(Exception):
    """The events were not stored (disk failure, or shutting down); the caller should retry."""


@dataclass
class _Pending:
    events: list[Mapping[str, Any]]
    future: asyncio.Future[list[AppendResult]]


class SerialWriter:
    """Owns the one writer; appends run one batch at a time on a thread of their own.

    Requests that arrive while a batch is being written wait in a queue and are then written
    together (one fsync for all of them). A dedicated thread rather than the shared pool keeps
    slow reads from ever delaying an acknowledgement. After a failed write the writer is
    closed and reopened before the next batch: reopening runs the writer's recovery (torn
    tail truncated, chain state re-read), the only state worth trusting after an I/O error.
    """

    def __init__(
        self,
        open_log: Callable[[], LogWriter],
        *,
        on_failure: Callable[[BaseException], None] = lambda exc: None,
        on_head: Callable[[ChainHead], None] | None = None,
        max_batch_events: int = MAX_BATCH_EVENTS,
    ) -> None:
        self._open_log = open_log
        self._on_failure = on_failure
        # Told the new chain head after each durable batch, on the event loop; it must return
        # at once (it runs before the next batch starts).
        self.on_head = on_head
        self._max_batch_events = max_batch_events
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-writer")
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self._writer: LogWriter | None = None
        self._consumer: asyncio.Task[None] | None = None
        self._closing = False
        self._failed = False
        self.batches_written = 0

    @property
    def healthy(self) -> bool:
        """Open, not stopping, and the last write (if any) succeeded."""
        return self._consumer is not None and not self._closing and not self._failed

    async def start(self) -> None:
        """Open the writer; raises what open_writer raises (e.g. another writer holds the lock)."""
        try:
            self._writer = await self._run(self._open_log)
        except BaseException:
            self._closing = True
            self._executor.shutdown(wait=False)
            raise
        self._consumer = asyncio.create_task(self._consume(), name="audit-writer")

    async def append(self, events: Sequence[Mapping[str, Any]]) -> list[AppendResult]:
        """Durably append `events`; results in input order, returned after the fsync."""
        if self._closing or self._consumer is None:
            raise WriterUnavailableError("the audit sidecar is shutting down")
        if not events:
            return []
        future: asyncio.Future[list[AppendResult]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(list(events), future))
        # A caller that goes away cancels only its future: its events stay in the batch and
        # are written anyway, which at-least-once delivery allows (the retry is a duplicate).
        return await future

    async def apply_retention(self) -> None:
        if self._writer is None or self._closing:
            return
        try:
            removed = await self._run(self._writer.apply_retention)
        except Exception as exc:
            log.warning("audit retention failed: %s", exc)
            return
        if removed:
            log.info("audit retention removed %d file(s)", len(removed))

    async def close(self) -> None:
        """Write everything queued, then close the writer. Idempotent."""
        if self._closing:
            return
        self._closing = True
        if self._consumer is not None:
            self._queue.put_nowait(None)
            await self._consumer
        if self._writer is not None:
            writer, self._writer = self._writer, None
            await self._run(writer.close)
        self._executor.shutdown(wait=True)

    async def _run(self, call: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def _consume(self) -> None:
        stop = False
        while not stop:
            first = await self._queue.get()
            if first is None:
                return
            batch = [first]
            size = len(first.events)
            while size < self._max_batch_events and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is None:
                    stop = True  # write what is queued before the sentinel, then stop
                    break
                batch.append(item)
                size += len(item.events)
            try:
                await self._write(batch)
            except Exception as exc:
                # A bug here must not stop the consumer: every later request would hang.
                log.exception("audit batch failed unexpectedly")
                self._failed = True
                for pending in batch:
                    _settle(pending.future, WriterUnavailableError(f"audit write failed: {exc}"))

    async def _write(self, batch: list[_Pending]) -> None:
        events = [event for pending in batch for event in pending.events]
        try:
            results = await self._run(lambda: self._append(events))
        except AuditSchemaError as exc:
            if len(batch) == 1:
                _settle(batch[0].future, exc)
                return
            # One request's bad event must not fail the others it was batched with.
            for pending in batch:
                await self._write([pending])
            return
        except Exception as exc:
            self._failed = True
            self._on_failure(exc)
            log.error("audit write failed; %d event(s) not stored: %s", len(events), exc)
            await self._discard_writer()
            for pending in batch:
                _settle(pending.future, WriterUnavailableError(f"audit write failed: {exc}"))
            return
        self._failed = False
        self.batches_written += 1
        start = 0
        for pending in batch:
            end = start + len(pending.events)
            _settle(pending.future, results[start:end])
            start = end
        head = head_after(results, getattr(self._writer, "current_file", None))
        if head is not None and self.on_head is not None:
            try:
                self.on_head(head)
            except Exception:
                log.exception("recording the chain head failed")

    def _append(self, events: list[Mapping[str, Any]]) -> list[AppendResult]:
        # Runs on the writer thread, so reopening blocks no request handler.
        if self._writer is None:
            self._writer = self._open_log()
            log.info("audit writer reopened")
        return self._writer.append_many(events)

    async def _discard_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            with contextlib.suppress(Exception):
                await self._run(writer.close)


def head_after(results: Sequence[AppendResult], current_file: Path | None) -> ChainHead | None:
    """The chain head after a batch: its newest written record (None if all were duplicates)."""
    written = [result for result in results if not result.duplicate]
    if not written:
        return None
    newest = max(written, key=lambda result: result.seq)
    return ChainHead(
        seq=newest.seq, hash=newest.hash, file="" if current_file is None else current_file.name
    )


def _settle(future: asyncio.Future[T], outcome: T | BaseException) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


class _WriterHooks:
    """Forwards written events to Prometheus. Write errors are counted by the server instead,
    once per failed batch, so that failures outside the write itself (a reopen that fails, a
    closed writer) are counted too and nothing is counted twice."""

    def __init__(self, prometheus: PrometheusHooks) -> None:
        self._prometheus = prometheus

    def event_written(self, record: Mapping[str, Any]) -> None:
        self._prometheus.event_written(record)

    def duplicate_skipped(self, record: Mapping[str, Any]) -> None:
        self._prometheus.duplicate_skipped(record)

    def write_failed(self, error: BaseException) -> None:
        return None


# -- HTTP -------------------------------------------------------------------------------------


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


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class HeadSettings:
    """Keeping the chain head outside the log volume (head.py): where, how often, and
    whether a log that fails its check against it may be continued anyway."""

    store: HeadStore
    min_interval: float = DEFAULT_MIN_INTERVAL
    accept_mismatch: bool = False
    read_timeout: float = HEAD_READ_TIMEOUT


def acceptance_event(
    problem: str, ref: str, log_seq: int, recorded: ChainHead | None
) -> dict[str, Any]:
    """The critical event that puts a continued mismatching log on record, in the log itself."""
    details: dict[str, Any] = {
        "reason": problem,
        "configmap": ref,
        "log_seq": log_seq,
        "flag": ACCEPT_MISMATCH_FLAG,
    }
    if recorded is not None:
        details["recorded_seq"] = recorded.seq
        details["recorded_hash"] = recorded.hash
        details["recorded_at"] = recorded.updated_at or None
    return {
        "event_type": "error",
        "severity": "critical",
        "source": "audit",
        "action": "chain_head_mismatch_accepted",
        "details": details,
    }


class AuditServer:
    """The two HTTP applications around one SerialWriter. Build it with `AuditServer.create`."""

    def __init__(
        self,
        log_dir: Path,
        writer: SerialWriter,
        authorizer: Authorizer,
        registry: CollectorRegistry,
        *,
        clock: Callable[[], datetime] = _utc_now,
        head: HeadSettings | None = None,
    ) -> None:
        self.log_dir = log_dir
        self.writer = writer
        self.authorizer = authorizer
        self.registry = registry
        self._clock = clock
        self._reads = asyncio.Semaphore(READ_CONCURRENCY)
        self.head = head
        self.head_metrics = HeadMetrics.create(registry)
        self.publisher: HeadPublisher | None = None
        # Set when the log failed its check against the recorded head: then nothing is
        # appended, and this says why (in logs, /healthz and every refused write).
        self.refusal: str | None = None
        if head is not None:
            store = head.store
            self.publisher = HeadPublisher(
                lambda new_head: asyncio.to_thread(store.write, new_head),
                min_interval=head.min_interval,
                on_error=self.head_metrics.write_failed,
                on_written=lambda new_head: self.head_metrics.written(new_head.seq),
                name=f"chain head in configmap {store.ref}",
            )
            writer.on_head = self.publisher.offer

    @classmethod
    def create(
        cls,
        log_dir: str | Path,
        authorizer: Authorizer,
        *,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        retention_days: int | None = None,
        fsync: bool = True,
        registry: CollectorRegistry | None = None,
        open_log: Callable[[AuditHooks], LogWriter] | None = None,
        clock: Callable[[], datetime] = _utc_now,
        head: HeadSettings | None = None,
    ) -> AuditServer:
        """A server writing `log_dir`, with its own metrics registry unless one is given.

        `open_log(hooks)` replaces the real writer (tests inject failing ones); it must pass
        `hooks` on to the writer it opens, or the event metrics stay at zero. `head` keeps
        the chain head outside the log volume.
        """
        path = Path(log_dir)
        registry = CollectorRegistry() if registry is None else registry
        prometheus = PrometheusHooks.create(registry)
        hooks = _WriterHooks(prometheus)

        def open_real(hooks: AuditHooks) -> LogWriter:
            return open_writer(
                path,
                max_file_bytes=max_file_bytes,
                retention_days=retention_days,
                hooks=hooks,
                fsync=fsync,
            )

        opener = open_log or open_real
        writer = SerialWriter(lambda: opener(hooks), on_failure=prometheus.write_failed)
        return cls(path, writer, authorizer, registry, clock=clock, head=head)

    async def start(self) -> None:
        """Open the writer; with a head store, check the log against the recorded head.

        Raises what open_writer raises, and HeadStoreError when the recorded head cannot be
        read (after retrying for `read_timeout` if the API server is unreachable). A failed
        check does not raise: it sets `refusal`.
        """
        await self.writer.start()
        if self.head is None or self.publisher is None:
            return
        try:
            await self._check_head(self.head, self.publisher)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        await self.writer.close()
        if self.publisher is not None:
            # After the writer: its last batch has offered the final head by now.
            await self.publisher.close(HEAD_FLUSH_TIMEOUT)

    async def _check_head(self, head: HeadSettings, publisher: HeadPublisher) -> None:
        ref = head.store.ref
        # The writer holds the directory lock and has recovered the tail, and nothing is
        # appended before this returns: the log read here is the one appends will continue.
        last, file = await asyncio.to_thread(log_tail, self.log_dir)
        check: HeadCheck | None = None
        problem: str | None = None
        try:
            recorded = await self._read_head(head)
        except ValueError as exc:
            recorded, problem = None, str(exc)
        if recorded is not None:
            check = await asyncio.to_thread(check_log, self.log_dir, recorded, last)
            if not check.ok:
                problem = check.message()
        if problem is None:
            self.head_metrics.mismatch(False)
            if check is None and last.seq > 0:
                # Expected once, when the flag is first given; otherwise someone removed it.
                log.warning(
                    "the audit log ends at seq %d but configmap %s holds no chain head to check "
                    "it against (first start with --head-configmap, or the ConfigMap was "
                    "deleted); recording the head now",
                    last.seq,
                    ref,
                )
            elif check is None:
                log.info("no chain head recorded in configmap %s yet; creating it", ref)
            else:
                log.info("audit log checked against configmap %s: %s", ref, check.message())
            publisher.start()
            publisher.offer(ChainHead(last.seq, last.hash, file))
            return
        self.head_metrics.mismatch(True)
        if not head.accept_mismatch:
            self.refusal = (
                f"{problem} (configmap {ref}); refusing to append to this log (verify it, then "
                f"restart with {ACCEPT_MISMATCH_FLAG} to continue it anyway)"
            )
            log.error("audit log check against the chain head failed: %s", self.refusal)
            return
        log.error(
            "audit log check against the chain head failed: %s (configmap %s); continuing "
            "because of %s",
            problem,
            ref,
            ACCEPT_MISMATCH_FLAG,
        )
        publisher.start()
        publisher.offer(ChainHead(last.seq, last.hash, file))
        # Written before anything else, so the log itself says that it was continued.
        await self.writer.append([acceptance_event(problem, ref, last.seq, recorded)])

    async def _read_head(self, head: HeadSettings) -> ChainHead | None:
        deadline = time.monotonic() + head.read_timeout
        delay = 0.5
        while True:
            try:
                return await asyncio.to_thread(head.store.read)
            except HeadStoreError as exc:
                if not exc.retryable or time.monotonic() + delay > deadline:
                    raise
                log.warning("cannot read the chain head yet: %s; retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    # -- applications ---------------------------------------------------------------------

    def ingest_app(self) -> web.Application:
        """The loopback listener: the operator's unauthenticated ingest (see module docstring)."""
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[_errors_as_json])
        app.router.add_post("/v1/events", self._post_events)
        app.router.add_get("/healthz", self._healthz)
        return app

    def api_app(self) -> web.Application:
        """The main listener: bot ingest and the read API (bearer tokens), health, metrics."""
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[_errors_as_json])
        app.router.add_post("/v1/bot-events", self._post_bot_events)
        app.router.add_get("/v1/events", self._get_events)
        app.router.add_get("/v1/summary", self._get_summary)
        app.router.add_get("/v1/verify", self._get_verify)
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

    async def _authenticate(self, request: web.Request) -> Identity:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        challenge = {"WWW-Authenticate": 'Bearer realm="tradingbot-audit"'}
        if scheme.lower() != "bearer" or not token:
            raise HttpError(401, "a Kubernetes bearer token is required", challenge)
        try:
            identity = await self.authorizer.authenticate(token)
        except AuthUnavailableError as exc:
            log.error("TokenReview failed: %s", exc)
            raise HttpError(503, "cannot check the token now", {"Retry-After": "2"}) from None
        if identity is None:
            raise HttpError(401, "the bearer token is invalid or expired", challenge)
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


# -- running ----------------------------------------------------------------------------------


def parse_listen(value: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or `:port` (all interfaces) → (host, port)."""
    host, sep, port_text = value.rpartition(":")
    if not sep:
        raise ValueError(f"listen address {value!r} must be HOST:PORT")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"listen address {value!r}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"listen address {value!r}: port {port} is out of range")
    return host or "0.0.0.0", port


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServeOptions:
    log_dir: Path
    ingest_listen: str = DEFAULT_INGEST_LISTEN
    listen: str = DEFAULT_LISTEN
    kubeconfig: str | None = None
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    retention_days: int | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    auth_cache_seconds: float = AUTH_CACHE_SECONDS
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT
    head_configmap: str | None = None
    head_interval: float = DEFAULT_MIN_INTERVAL
    accept_head_mismatch: bool = False


@dataclass
class RunningServer:
    """A started sidecar: its listeners' actual addresses, and how to stop it.

    `ingest_address` is None when the sidecar refuses to append (see AuditServer.refusal).
    """

    server: AuditServer
    runners: list[web.AppRunner]
    ingest_address: tuple[str, int] | None
    api_address: tuple[str, int]
    timers: list[asyncio.Task[None]]

    async def stop(self) -> None:
        """Stop accepting, finish in-flight requests (and so their writes), close the writer."""
        for timer in self.timers:
            timer.cancel()
        for timer in self.timers:
            with contextlib.suppress(asyncio.CancelledError):
                await timer
        # Both listeners stop accepting at once; each then waits for its in-flight handlers.
        await asyncio.gather(*(runner.cleanup() for runner in self.runners))
        await self.server.close()


async def _retention_loop(writer: SerialWriter, interval: float) -> None:
    # The writer applies retention on open and on day rotation; this covers a log that stays
    # idle for days.
    while True:
        await asyncio.sleep(interval)
        await writer.apply_retention()


def _address(runner: web.AppRunner) -> tuple[str, int]:
    address = runner.addresses[0]
    return str(address[0]), int(address[1])


async def start_server(
    server: AuditServer,
    *,
    ingest_listen: str = DEFAULT_INGEST_LISTEN,
    listen: str = DEFAULT_LISTEN,
    ssl_context: ssl.SSLContext | None = None,
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
    retention_interval: float | None = None,
) -> RunningServer:
    """Open the writer and both listeners (port 0 picks a free port; see the result)."""
    ingest_host, ingest_port = parse_listen(ingest_listen)
    api_host, api_port = parse_listen(listen)
    if not is_loopback(ingest_host):
        log.warning(
            "the ingest listener %s is not a loopback address: anyone who can reach it can "
            "write audit events without authentication",
            ingest_listen,
        )
    await server.start()
    runners: list[web.AppRunner] = []
    ingest: web.AppRunner | None = None
    try:
        if server.refusal is None:
            # No access log on ingest: one line per operator batch is noise; errors are logged.
            ingest = web.AppRunner(
                server.ingest_app(), access_log=None, shutdown_timeout=shutdown_timeout
            )
            await ingest.setup()
            runners.append(ingest)
            await web.TCPSite(ingest, ingest_host, ingest_port).start()
        api = web.AppRunner(server.api_app(), shutdown_timeout=shutdown_timeout)
        await api.setup()
        runners.append(api)
        await web.TCPSite(api, api_host, api_port, ssl_context=ssl_context).start()
    except BaseException:
        for runner in runners:
            await runner.cleanup()
        await server.close()
        raise
    timers: list[asyncio.Task[None]] = []
    if retention_interval and server.refusal is None:
        timers.append(asyncio.create_task(_retention_loop(server.writer, retention_interval)))
    ingest_address = None if ingest is None else _address(ingest)
    return RunningServer(server, runners, ingest_address, _address(api), timers)


def _tls_context(options: ServeOptions) -> ssl.SSLContext | None:
    if not options.tls_cert_file and not options.tls_key_file:
        return None
    if not (options.tls_cert_file and options.tls_key_file):
        raise ValueError("--tls-cert-file and --tls-key-file go together")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(options.tls_cert_file, options.tls_key_file)
    return context


async def run(options: ServeOptions, stop: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM or SIGINT (or `stop` is set), then shut down gracefully."""
    stop = stop or asyncio.Event()
    if options.accept_head_mismatch and not options.head_configmap:
        raise ValueError(f"{ACCEPT_MISMATCH_FLAG} goes with --head-configmap")
    head_ref = (
        None if options.head_configmap is None else parse_configmap_ref(options.head_configmap)
    )
    kube = KubeAuthorizer.from_kubeconfig(options.kubeconfig)
    authorizer = CachingAuthorizer(kube, ttl=options.auth_cache_seconds)
    head = None
    if head_ref is not None:
        head = HeadSettings(
            ConfigMapHeadStore(kube.transport, *head_ref),
            min_interval=options.head_interval,
            accept_mismatch=options.accept_head_mismatch,
        )
    server = AuditServer.create(
        options.log_dir,
        authorizer,
        max_file_bytes=options.max_file_bytes,
        retention_days=options.retention_days,
        head=head,
    )
    try:
        running = await start_server(
            server,
            ingest_listen=options.ingest_listen,
            listen=options.listen,
            ssl_context=_tls_context(options),
            shutdown_timeout=options.shutdown_timeout,
            retention_interval=RETENTION_INTERVAL_SECONDS if options.retention_days else None,
        )
    except BaseException:
        kube.close()
        raise
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if running.ingest_address is None:
        log.error(
            "audit sidecar NOT writing %s (%s); no ingest; API on %s:%d",
            options.log_dir,
            server.refusal,
            *running.api_address,
        )
    else:
        log.info(
            "audit sidecar writing %s; ingest on %s:%d, API on %s:%d",
            options.log_dir,
            *running.ingest_address,
            *running.api_address,
        )
    try:
        await stop.wait()
        log.info("stopping: no new requests; finishing in-flight writes")
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await running.stop()
        kube.close()
    log.info("audit sidecar stopped")
