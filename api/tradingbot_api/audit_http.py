"""The audit sidecar's HTTP API (SPEC §6): its paths and limits, stated once, and the one
client that posts events to it.

The controller posts to `EVENTS_PATH` on the main listener with a ServiceAccount token issued
for `OPERATOR_AUDIENCE` (so that the token it hands the sidecar opens nothing on the API
server), or, where the sidecar shares its pod, on the loopback ingest without one; a bot posts
to `BOT_EVENTS_PATH` with its ServiceAccount token, asked for before every request because the
projected token rotates.

`AuditClient.post` sends one request and never raises for what the network or the sidecar does:
the `Answer` says (status None when no answer came). `AuditClient.send` is for callers that
want "stored, or an exception": it splits a list into requests within the sidecar's limits and
raises `AuditDeliveryError`, whose `retryable` says whether sending the same events again can
help (their dedup keys make a resend harmless). HTTP 200 comes only after the sidecar fsynced.

aiohttp is imported on first use, so importing this module stays cheap for the plugin.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, NamedTuple

if TYPE_CHECKING:
    import aiohttp

# POST: the controller's events (main listener, or the loopback ingest); GET: the read API.
EVENTS_PATH: Final = "/v1/events"
# The audience of the token the controller presents: bound to the sidecar, useless elsewhere.
OPERATOR_AUDIENCE: Final = "tradingbot-audit"
BOT_EVENTS_PATH: Final = "/v1/bot-events"
SUMMARY_PATH: Final = "/v1/summary"
VERIFY_PATH: Final = "/v1/verify"
MAX_EVENTS_PER_REQUEST: Final = 1000
MAX_BODY_BYTES: Final = 1024 * 1024
DEFAULT_OPERATOR_URL: Final = "http://127.0.0.1:8900"
REQUEST_TIMEOUT_SECONDS: Final = 5.0
CONNECT_TIMEOUT_SECONDS: Final = 2.0
# Room for the `{"events": [...]}` wrapper around the encoded events.
_ENVELOPE: Final = 64
_MAX_PROBLEM: Final = 300

# A bearer token, or a function (plain or coroutine) giving the current one.
TokenSource = Callable[[], str | Awaitable[str | None] | None]


class Answer(NamedTuple):
    """What one request came back with: `status` None when no answer came; `payload` the
    decoded JSON body (None when it was not JSON); `problem` a one-line reason unless 200."""

    status: int | None
    payload: Any
    problem: str


class AuditStatusError(Exception):
    """An audit request (to the sidecar, or for the chain head to the API server) that did not
    succeed; `status` is None when no answer came."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def retryable(self) -> bool:
        """False for 4xx answers (the request itself is wrong: sending it again cannot help)."""
        return self.status is None or self.status >= 500 or self.status == 429


class AuditDeliveryError(AuditStatusError):
    """The sidecar did not acknowledge the events."""


async def read_token(token: TokenSource) -> str | None:
    value = token()
    return await value if inspect.isawaitable(value) else value


def encode_event(event: Mapping[str, Any]) -> bytes:
    """One event as it goes over the wire; ValueError/TypeError when it is not plain JSON."""
    return json.dumps(event, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def request_body(encoded: Sequence[bytes]) -> bytes:
    return b'{"events":[' + b",".join(encoded) + b"]}"


def chunks(events: Sequence[Mapping[str, Any]]) -> list[list[bytes]]:
    """The events, encoded, in requests within the sidecar's limits (count and bytes)."""
    found: list[list[bytes]] = []
    current: list[bytes] = []
    size = _ENVELOPE
    for index, event in enumerate(events):
        try:
            encoded = encode_event(event)
        except (TypeError, ValueError) as exc:
            raise AuditDeliveryError(f"events[{index}] is not JSON: {exc}", 400) from exc
        if len(encoded) + _ENVELOPE > MAX_BODY_BYTES:
            raise AuditDeliveryError(
                f"events[{index}] is {len(encoded)} bytes encoded; a request holds at most "
                f"{MAX_BODY_BYTES}",
                413,
            )
        if current and (
            len(current) >= MAX_EVENTS_PER_REQUEST or size + len(encoded) + 1 > MAX_BODY_BYTES
        ):
            found.append(current)
            current, size = [], _ENVELOPE
        current.append(encoded)
        size += len(encoded) + 1
    if current:
        found.append(current)
    return found


def problem_text(status: int, payload: Any, raw: bytes) -> str:
    """The sidecar's `error` field when it sent one, else the body, on one short line."""
    error = payload.get("error") if isinstance(payload, Mapping) else None
    text = error if isinstance(error, str) and error else raw.decode("utf-8", "replace")
    return " ".join(text.split())[:_MAX_PROBLEM] or f"HTTP {status}"


class AuditClient:
    """One endpoint of the sidecar; one aiohttp session, made on first use."""

    def __init__(
        self,
        url: str,
        *,
        token: TokenSource | None = None,
        timeout: float = REQUEST_TIMEOUT_SECONDS,
        connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._token = token
        self._session = session
        self._owns_session = session is None

    async def post(self, events: Sequence[Mapping[str, Any]]) -> Answer:
        """One POST of `events` (encoded here; they must be plain JSON)."""
        return await self.post_encoded([encode_event(e) for e in events])

    async def post_encoded(self, encoded: Sequence[bytes]) -> Answer:
        import aiohttp

        headers = {"Content-Type": "application/json"}
        if self._token is not None:
            try:
                bearer = await read_token(self._token)
            except Exception as exc:
                return Answer(None, None, f"cannot read the bearer token: {type(exc).__name__}")
            if not bearer:
                return Answer(None, None, "no bearer token: the credentials are not a token")
            headers["Authorization"] = f"Bearer {bearer}"
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
            self._owns_session = True
        try:
            async with self._session.post(
                self.url,
                data=request_body(encoded),
                headers=headers,
                timeout=aiohttp.ClientTimeout(
                    total=self.timeout, connect=min(self.timeout, self.connect_timeout)
                ),
            ) as response:
                status = response.status
                raw = await response.read()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return Answer(None, None, f"{type(exc).__name__}: {exc}"[:_MAX_PROBLEM])
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = None
        return Answer(status, payload, "" if status == 200 else problem_text(status, payload, raw))

    async def send(self, events: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Store `events` durably; one `{"seq", "hash", "duplicate"}` per event, in order.

        A failure part way raises; resending the whole list is safe.
        """
        stored: list[dict[str, Any]] = []
        for encoded in chunks(events):
            answer = await self.post_encoded(encoded)
            if answer.status is None:
                raise AuditDeliveryError(
                    f"audit sidecar at {self.url} unreachable: {answer.problem}"
                )
            if answer.status != 200:
                raise AuditDeliveryError(
                    f"audit sidecar answered HTTP {answer.status}: {answer.problem}",
                    answer.status,
                )
            entries = answer.payload.get("stored") if isinstance(answer.payload, dict) else None
            if not isinstance(entries, list) or len(entries) != len(encoded):
                raise AuditDeliveryError(
                    "audit sidecar answered 200 without one stored entry per event", 200
                )
            stored.extend(dict(entry) for entry in entries)
        return stored

    async def close(self) -> None:
        if self._session is not None and self._owns_session:
            await self._session.close()
        self._session = None

    async def __aenter__(self) -> AuditClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
