"""The operator's side of audit ingest: `POST /v1/events` to the sidecar on loopback.

`send` returns only once the sidecar has fsynced the events. Anything else raises
AuditDeliveryError; when `retryable` is true the caller should send the same events again
(their dedup keys make a retry harmless), otherwise the events themselves are wrong.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Final

import aiohttp

DEFAULT_URL: Final = "http://127.0.0.1:8900"
DEFAULT_TIMEOUT: Final = 5.0
# The sidecar's limits (handlers.MAX_EVENTS_PER_REQUEST, MAX_BODY_BYTES), repeated here so that
# importing the client does not import the server; a unit test keeps them in step.
MAX_EVENTS_PER_REQUEST: Final = 1000
MAX_BODY_BYTES: Final = 1024 * 1024
# Room for the `{"events": [...]}` wrapper around the encoded events.
_ENVELOPE: Final = 64


class AuditDeliveryError(Exception):
    """The sidecar did not acknowledge the events. `status` is None when it was unreachable."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def retryable(self) -> bool:
        """False for 4xx answers (bad events: resending the same ones cannot succeed)."""
        return self.status is None or self.status >= 500 or self.status == 429


class AuditClient:
    """Async client of the sidecar's ingest listener; one aiohttp session, made on first use."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._session = session
        self._owns_session = session is None

    async def send(self, events: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Store `events` durably; one `{"seq", "hash", "duplicate"}` per event, in order.

        Splits large lists into requests within the sidecar's limits; a failure part way
        raises, and resending the whole list is safe.
        """
        stored: list[dict[str, Any]] = []
        for chunk in _chunks(events):
            stored.extend(await self._post(chunk))
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

    async def _post(self, encoded: list[bytes]) -> list[dict[str, Any]]:
        if self._session is None:
            self._session = aiohttp.ClientSession()
            self._owns_session = True
        body = b'{"events":[' + b",".join(encoded) + b"]}"
        url = f"{self.base_url}/v1/events"
        try:
            async with self._session.post(
                url,
                data=body,
                headers={"Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as response:
                payload = await response.read()
                status = response.status
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise AuditDeliveryError(
                f"audit sidecar at {self.base_url} unreachable: {type(exc).__name__}: {exc}"
            ) from exc
        if status != 200:
            raise AuditDeliveryError(
                f"audit sidecar answered HTTP {status}: {_error_text(payload)}", status
            )
        try:
            stored = json.loads(payload)["stored"]
        except (ValueError, KeyError, TypeError):
            stored = None
        if not isinstance(stored, list) or len(stored) != len(encoded):
            raise AuditDeliveryError(
                "audit sidecar answered 200 without one stored entry per event", status
            )
        return [dict(entry) for entry in stored]


def _chunks(events: Sequence[Mapping[str, Any]]) -> list[list[bytes]]:
    chunks: list[list[bytes]] = []
    current: list[bytes] = []
    size = _ENVELOPE
    for index, event in enumerate(events):
        try:
            encoded = json.dumps(event, ensure_ascii=False, allow_nan=False).encode()
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
            chunks.append(current)
            current, size = [], _ENVELOPE
        current.append(encoded)
        size += len(encoded) + 1
    if current:
        chunks.append(current)
    return chunks


def _error_text(payload: bytes) -> str:
    text = payload.decode("utf-8", "replace")
    try:
        parsed = json.loads(text)
    except ValueError:
        return " ".join(text.split())[:300]
    if isinstance(parsed, Mapping) and parsed.get("error"):
        return str(parsed["error"])[:300]
    return " ".join(text.split())[:300]
