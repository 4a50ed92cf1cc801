"""The chain head kept outside the log volume, so that a log cut short is noticed.

The hash chain proves that every line follows from the one before it, but a log whose last
lines were deleted is still a valid chain, only a shorter one; whoever can write the volume
can even re-chain a rewritten tail. What catches both is a copy of the head (the last seq and
its hash) kept where writing the volume does not reach: a ConfigMap in the API server.

* The sidecar (`serve --head-configmap NAMESPACE/NAME`) publishes its head after fsync
  batches through `HeadPublisher`: at most one API write in flight, the newest head written
  when the previous write completes (and no sooner than `--head-interval` after it started,
  so a log appending thousands of batches a second costs the API server a few writes a
  second), failures retried with back-off and counted in
  `tradingbot_audit_head_write_errors_total`. Appends and acknowledgements never wait for it.
  The price: lines appended since the last published head can still be removed unnoticed, a
  window of one interval plus one write (or longer while the API server is unreachable).
* On start, before any append, the sidecar compares the recorded head with its log
  (`compare_head`). A log that ends before the head (a truncated tail) or holds another hash
  at the head's seq (a rewritten tail) is refused: the error is logged,
  `tradingbot_audit_head_mismatch` is 1, no ingest listener is opened and bot events are
  answered 503, while /metrics, /healthz (503, with the reason) and the read API stay up.
  Refusing rather than exiting: an exit would hide the metric and the read API behind a
  crash loop, whereas a running, unready sidecar shows both and can be inspected with
  `kubectl tradingbot audit verify`. `--accept-head-mismatch` continues such a log anyway
  (a restored backup, a recreated volume): the acceptance is first written into the log as a
  critical event, so it is on the chain itself, and the head is then replaced.
* `verify --head SEQ:HASH` and `verify --head-configmap NAMESPACE/NAME` check a log against a
  recorded head; lines after the head's seq are fine (written after its last update).

The ConfigMap is created by the sidecar, not by the chart: Helm would reset its data on every
upgrade, which would erase the very record this is about. It is only as trustworthy as the
RBAC on it: whoever may update or delete it can reset the check.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

from tradingbot_api.audit_http import AuditStatusError
from tradingbot_api.kubeclient import KubeError
from tradingbot_api.times import utc_now

from .chain import GENESIS, HASH_HEX_LENGTH, ChainState, parse_line
from .files import iter_lines_reverse, list_log_files, read_anchor

if TYPE_CHECKING:
    import asyncio

log = logging.getLogger(__name__)

# Measured on two shared cores against a local API server, one event per request: writing
# heads back to back (no interval) meant ~130 ConfigMap writes/s and cut the ingest rate to
# about a third; with 0.2 s it is 5 writes/s and no difference within the noise.
DEFAULT_MIN_INTERVAL: Final = 0.2
BACKOFF_INITIAL: Final = 0.5
BACKOFF_MAX: Final = 30.0
HEAD_REQUEST_TIMEOUT: Final = 5.0

DATA_SEQ: Final = "seq"
DATA_HASH: Final = "hash"
DATA_FILE: Final = "file"
DATA_UPDATED_AT: Final = "updatedAt"

WHERE: Final = "the chain head recorded outside the log volume"

_HASH: Final = re.compile(rf"^[0-9a-f]{{{HASH_HEX_LENGTH}}}$")
# DNS-1123: a namespace is a label, a ConfigMap name a subdomain.
_NAMESPACE: Final = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_CONFIGMAP: Final = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


@dataclass(frozen=True)
class ChainHead:
    """A recorded position of the chain: `seq` and the hash of the line with that seq."""

    seq: int
    hash: str
    file: str = ""
    updated_at: str = ""

    def __str__(self) -> str:
        return f"{self.seq}:{self.hash}"


def parse_head(text: str) -> ChainHead:
    """`SEQ:HASH` (as `--head` takes it) → ChainHead; ValueError naming what is wrong."""
    seq_text, sep, digest = text.strip().partition(":")
    if not sep:
        raise ValueError(f"chain head {text!r} must be SEQ:HASH")
    try:
        seq = int(seq_text)
    except ValueError:
        raise ValueError(f"chain head {text!r}: seq {seq_text!r} is not a number") from None
    if seq < 0:
        raise ValueError(f"chain head {text!r}: seq must be >= 0")
    digest = digest.lower()
    if not _HASH.match(digest):
        raise ValueError(
            f"chain head {text!r}: the hash must be {HASH_HEX_LENGTH} hexadecimal digits"
        )
    return ChainHead(seq=seq, hash=digest)


def parse_configmap_ref(text: str) -> tuple[str, str]:
    """`NAMESPACE/NAME` → (namespace, name); ValueError when it is not one."""
    namespace, sep, name = text.partition("/")
    if not sep or not _NAMESPACE.match(namespace) or not _CONFIGMAP.match(name):
        raise ValueError(f"{text!r} is not NAMESPACE/NAME of a ConfigMap")
    return namespace, name


def head_from_data(data: Mapping[str, Any] | None) -> ChainHead | None:
    """The head in a ConfigMap's data; None when it holds none, ValueError when malformed."""
    if not data or (DATA_SEQ not in data and DATA_HASH not in data):
        return None
    head = parse_head(f"{data.get(DATA_SEQ, '')}:{data.get(DATA_HASH, '')}")
    return replace(
        head, file=str(data.get(DATA_FILE) or ""), updated_at=str(data.get(DATA_UPDATED_AT) or "")
    )


def head_data(head: ChainHead, now: datetime) -> dict[str, str]:
    """The ConfigMap data recording `head` (every value a string, as ConfigMaps require)."""
    return {
        DATA_SEQ: str(head.seq),
        DATA_HASH: head.hash,
        DATA_FILE: head.file,
        DATA_UPDATED_AT: now.astimezone(UTC).isoformat(timespec="milliseconds"),
    }


def configmap_body(namespace: str, name: str, data: Mapping[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/name": "tradingbot-operator",
                "app.kubernetes.io/component": "audit-head",
            },
        },
        "data": dict(data),
    }


# -- comparing a log with a head (pure) -------------------------------------------------------


class HeadStatus(Enum):
    MATCH = "match"  # the log ends exactly at the head
    AHEAD = "ahead"  # the log holds the head and more lines after it
    TRUNCATED = "truncated"  # the log ends before the head
    DIVERGED = "diverged"  # the log's line at the head's seq has another hash
    UNCHECKABLE = "uncheckable"  # the log no longer holds the head's seq


@dataclass(frozen=True)
class HeadCheck:
    status: HeadStatus
    head: ChainHead
    log_seq: int
    found_hash: str | None

    @property
    def ok(self) -> bool:
        return self.status in (HeadStatus.MATCH, HeadStatus.AHEAD)

    def message(self) -> str:
        seq, n = self.head.seq, self.log_seq
        if self.status is HeadStatus.TRUNCATED:
            return (
                f"the log ends at seq {n} but {WHERE} is at seq {seq}: the tail was truncated "
                f"({seq - n} line(s) missing)"
            )
        if self.status is HeadStatus.DIVERGED:
            return (
                f"the line at seq {seq} hashes to {_short(self.found_hash)} but {WHERE} has "
                f"{_short(self.head.hash)} for that seq: the log was rewritten at or before "
                f"seq {seq}"
            )
        if self.status is HeadStatus.UNCHECKABLE:
            return (
                f"{WHERE} is at seq {seq}, which the log (ending at seq {n}) no longer holds: "
                "it cannot be checked (files were removed, or the head was not updated for "
                "longer than the retention period)"
            )
        if self.status is HeadStatus.MATCH:
            return f"the log ends at {WHERE} (seq {seq})"
        return f"the log ends at seq {n}, {n - seq} line(s) after {WHERE} (seq {seq})"


def _short(digest: str | None) -> str:
    return "nothing" if digest is None else f"{digest[:12]}…"


def compare_head(head: ChainHead, last: ChainState, found_hash: str | None) -> HeadCheck:
    """How a log ending at `last` stands to `head`.

    `found_hash` is the hash the log holds for `head.seq` (see `hash_at`), None when it holds
    no line with that seq.
    """
    if last.seq < head.seq:
        return HeadCheck(HeadStatus.TRUNCATED, head, last.seq, found_hash)
    if found_hash is None:
        return HeadCheck(HeadStatus.UNCHECKABLE, head, last.seq, None)
    if found_hash != head.hash:
        return HeadCheck(HeadStatus.DIVERGED, head, last.seq, found_hash)
    status = HeadStatus.MATCH if last.seq == head.seq else HeadStatus.AHEAD
    return HeadCheck(status, head, last.seq, found_hash)


# -- reading a log's side ---------------------------------------------------------------------


def log_tail(log_dir: Path) -> tuple[ChainState, str]:
    """The seq and hash of the log's last complete line, and its file's name.

    A log without lines ends at its retention anchor, else at genesis (no file name then).
    Raises ValueError when the last line is not a record (the writer refuses such a log).
    """
    for log_file in reversed(list_log_files(log_dir)):
        for _offset, line in iter_lines_reverse(log_file.path):
            try:
                record = parse_line(line)
                return ChainState(int(record["seq"]), str(record["hash"])), log_file.name
            except (KeyError, TypeError) as exc:
                raise ValueError(f"the last line of {log_file.path} is not a record") from exc
    anchor = read_anchor(log_dir)
    if anchor is not None:
        return ChainState(anchor.seq, anchor.hash), ""
    return GENESIS, ""


def hash_at(log_dir: Path, seq: int) -> str | None:
    """The hash the log holds for `seq`, or None when no line (nor the anchor) has that seq.

    Reads the file that should hold it from its end: the head is normally among the last few
    lines, so this costs a small read however large the log is.
    """
    if seq == GENESIS.seq:
        return GENESIS.hash
    anchor = read_anchor(log_dir)
    if anchor is not None and anchor.seq == seq:
        return anchor.hash
    candidates = [f for f in list_log_files(log_dir) if f.first_seq <= seq]
    if not candidates:
        return None
    for _offset, line in iter_lines_reverse(candidates[-1].path):
        try:
            record = parse_line(line)
        except ValueError:
            continue
        found = record.get("seq") if isinstance(record, dict) else None
        if found == seq:
            return str(record.get("hash"))
        if isinstance(found, int) and found < seq:
            return None
    return None


def check_log(log_dir: Path, head: ChainHead, last: ChainState | None = None) -> HeadCheck:
    """Compare the log in `log_dir` (ending at `last`, read from the log if not given)."""
    if last is None:
        last, _file = log_tail(log_dir)
    if last.seq == head.seq:
        found: str | None = last.hash
    elif last.seq > head.seq:
        found = hash_at(log_dir, head.seq)
    else:
        found = None
    return compare_head(head, last, found)


# -- the ConfigMap ----------------------------------------------------------------------------


class HeadStoreError(AuditStatusError):
    """The head ConfigMap could not be read or written; `status` None: the API was unreachable."""


class KubeRequester(Protocol):
    """One JSON request to the API server (`tradingbot_api.kubeclient.KubeClient` is one):
    the decoded answer; KubeError when refused (status >= 400) or unreachable (status 0)."""

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float = ...,
    ) -> Any: ...


class HeadStore(Protocol):
    """Where the head is kept."""

    @property
    def ref(self) -> str: ...

    async def read(self) -> ChainHead | None:
        """The recorded head, None when there is none; HeadStoreError, or ValueError when
        what is recorded is not a head."""
        ...

    async def write(self, head: ChainHead) -> None:
        """Record `head`; HeadStoreError when the API server refuses or cannot be reached."""
        ...


class ConfigMapHeadStore:
    """The head in ConfigMap `namespace/name`: get, merge patch, and create when absent.

    Exactly the verbs the chart's `<fullname>-audit-head` Role grants: get, update and patch
    on that one ConfigMap, create on configmaps.
    """

    def __init__(
        self,
        api: KubeRequester,
        namespace: str,
        name: str,
        *,
        clock: Callable[[], datetime] = utc_now,
        timeout: float = HEAD_REQUEST_TIMEOUT,
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.name = name
        self.timeout = timeout
        self._clock = clock
        self._collection = f"/api/v1/namespaces/{namespace}/configmaps"
        self._path = f"{self._collection}/{name}"

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    async def read(self) -> ChainHead | None:
        try:
            obj = await self._call("get", "GET", self._path)
        except _Missing:
            return None
        data = obj.get("data") if isinstance(obj, dict) else None
        try:
            return head_from_data(data if isinstance(data, dict) else None)
        except ValueError as exc:
            raise ValueError(f"configmap {self.ref} holds no valid chain head: {exc}") from None

    async def write(self, head: ChainHead) -> None:
        data = head_data(head, self._clock())
        try:
            await self._patch(data)
            return
        except _Missing:
            pass
        try:
            await self._call(
                "create", "POST", self._collection, configmap_body(self.namespace, self.name, data)
            )
        except HeadStoreError as exc:
            if exc.status != 409:
                raise
            # Created in between, by an earlier write that timed out.
            await self._patch(data)

    async def _patch(self, data: Mapping[str, str]) -> Any:
        return await self._call(
            "patch",
            "PATCH",
            self._path,
            {"data": dict(data)},
            content_type="application/merge-patch+json",
        )

    async def _call(
        self,
        verb: str,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        content_type: str = "application/json",
    ) -> Any:
        try:
            return await self.api.request(
                method, path, body=body, content_type=content_type, timeout=self.timeout
            )
        except KubeError as exc:
            raise self._error(verb, exc) from None
        except ValueError:
            raise HeadStoreError(
                f"{verb} configmap {self.ref} answered with something not JSON"
            ) from None
        except Exception as exc:
            raise HeadStoreError(
                f"{verb} configmap {self.ref} failed: {type(exc).__name__}: {exc}"
            ) from None

    def _error(self, verb: str, exc: KubeError) -> HeadStoreError:
        if exc.status == 0:
            return HeadStoreError(f"{verb} configmap {self.ref} failed: {exc.reason}: {exc.body}")
        if exc.status == 404 and verb in ("get", "patch"):
            return _Missing(verb, exc.status)
        message = exc.message[:300] or "no message"
        if exc.status in (401, 403):
            return HeadStoreError(
                f"the API server refused to {verb} configmap {self.ref} (HTTP {exc.status}: "
                f"{message}); the audit sidecar's ServiceAccount needs get, update and patch on "
                "it and create on configmaps (the chart's <fullname>-audit-head Role)",
                exc.status,
            )
        return HeadStoreError(
            f"{verb} configmap {self.ref}: HTTP {exc.status}: {message}", exc.status
        )


class _Missing(HeadStoreError):
    """The ConfigMap does not exist (answered to get and patch, which then create)."""


# -- publishing -------------------------------------------------------------------------------


class HeadPublisher:
    """Writes the newest offered head, one write at a time, in a background task.

    `offer` only remembers the head and wakes the task, so whoever appends never waits for
    the API server. Heads offered while a write is in flight are coalesced: only the newest
    is written next. A failed write is retried with exponential back-off (the newest head at
    that moment, not the one that failed).
    """

    def __init__(
        self,
        write: Callable[[ChainHead], Awaitable[None]],
        *,
        min_interval: float = DEFAULT_MIN_INTERVAL,
        backoff_initial: float = BACKOFF_INITIAL,
        backoff_max: float = BACKOFF_MAX,
        on_error: Callable[[BaseException], None] = lambda exc: None,
        on_written: Callable[[ChainHead], None] = lambda head: None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        name: str = "chain head",
    ) -> None:
        # Imported here: the verify command and the plugin use this module without asyncio.
        import asyncio

        if min_interval < 0:
            raise ValueError(f"min_interval must be >= 0, got {min_interval}")
        self._write = write
        self._min_interval = min_interval
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._on_error = on_error
        self._on_written = on_written
        self._clock = clock
        self._sleep = sleep or asyncio.sleep
        self._name = name
        self._latest: ChainHead | None = None
        self._written: ChainHead | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self.writes = 0
        self.failures = 0

    @property
    def latest(self) -> ChainHead | None:
        return self._latest

    @property
    def written(self) -> ChainHead | None:
        return self._written

    def offer(self, head: ChainHead) -> None:
        """Note a new head and return at once; call it from the event loop's thread."""
        if self._latest is not None and head.seq < self._latest.seq:
            return
        self._latest = head
        self._wake.set()

    def start(self) -> None:
        import asyncio

        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="audit-head-publisher")

    async def close(self, grace: float) -> None:
        """Give the newest head up to `grace` seconds to be written, then stop."""
        import asyncio

        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        self._wake.set()
        try:
            await asyncio.wait_for(task, grace)
        except TimeoutError:
            log.warning(
                "stopping with the %s at seq %s unwritten (the API server is slow or down)",
                self._name,
                None if self._latest is None else self._latest.seq,
            )

    def _pending(self) -> ChainHead | None:
        latest = self._latest
        return latest if latest is not None and latest != self._written else None

    async def _run(self) -> None:
        delay = self._backoff_initial
        started: float | None = None
        while True:
            if self._pending() is None:
                if self._stopping:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if started is not None and not self._stopping:
                # Spacing writes bounds the API load whatever the append rate; the head
                # written afterwards is the newest one, so nothing is lost by waiting.
                wait = started + self._min_interval - self._clock()
                if wait > 0:
                    await self._sleep(wait)
            head = self._pending()
            if head is None:
                continue
            started = self._clock()
            try:
                await self._write(head)
            except Exception as exc:
                self.failures += 1
                self._notify(self._on_error, exc)
                if self._stopping:
                    log.warning("could not record the %s (seq %d): %s", self._name, head.seq, exc)
                    return
                log.warning(
                    "could not record the %s (seq %d): %s; retrying in %.1fs",
                    self._name,
                    head.seq,
                    exc,
                    delay,
                )
                await self._sleep(delay)
                delay = min(delay * 2, self._backoff_max)
                continue
            delay = self._backoff_initial
            self._written = head
            self.writes += 1
            self._notify(self._on_written, head)

    @staticmethod
    def _notify(callback: Callable[[Any], None], arg: Any) -> None:
        try:
            callback(arg)
        except Exception:
            # A metrics problem must not stop the head from being published.
            log.exception("chain head callback failed")
