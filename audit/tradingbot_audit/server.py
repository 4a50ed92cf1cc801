"""The audit sidecar assembled: one SerialWriter, its metrics, the HTTP API, the chain head.

`AuditServer.create` opens the real writer with Prometheus hooks; `start` opens it and, with a
head store, checks the log against the recorded head; `close` writes what is queued and
flushes the last head.

With `--head-configmap NAMESPACE/NAME` the sidecar also records the chain head (last seq and
hash) in that ConfigMap after fsync batches, checks the log against it on start, and refuses
to append to a log that ends before it (details in head.py); that needs get, update and
patch on the ConfigMap and create on configmaps.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import tenacity
from prometheus_client import CollectorRegistry

from tradingbot_api.times import utc_now

from .auth import Authorizer
from .handlers import AuditApi
from .head import (
    DEFAULT_MIN_INTERVAL,
    ChainHead,
    HeadCheck,
    HeadPublisher,
    HeadStore,
    HeadStoreError,
    check_log,
    log_tail,
)
from .ingest import LogWriter, SerialWriter
from .metrics import AuditHooks, HeadMetrics, PrometheusHooks
from .writer import DEFAULT_MAX_FILE_BYTES, open_writer

log = logging.getLogger(__name__)

# Reading the recorded head on start is retried this long while the API server is unreachable
# (the ingest listener opens only after the check, so the operator buffers meanwhile).
HEAD_READ_TIMEOUT: Final = 60.0
# On shutdown the last head gets this long to be written.
HEAD_FLUSH_TIMEOUT: Final = 5.0
ACCEPT_MISMATCH_FLAG: Final = "--accept-head-mismatch"


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


class AuditServer(AuditApi):
    """The two HTTP applications around one SerialWriter, which it opens and closes, and the
    chain head it checks and publishes. Build it with `AuditServer.create`."""

    head: HeadSettings | None = None
    publisher: HeadPublisher | None = None
    head_metrics: HeadMetrics

    def _keep_head(self, head: HeadSettings | None) -> None:
        self.head = head
        self.head_metrics = HeadMetrics.create(self.registry)
        if head is not None:
            store = head.store
            self.publisher = HeadPublisher(
                store.write,
                min_interval=head.min_interval,
                on_error=self.head_metrics.write_failed,
                on_written=lambda new_head: self.head_metrics.written(new_head.seq),
                name=f"chain head in configmap {store.ref}",
            )
            self.writer.on_head = self.publisher.offer

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
        clock: Callable[[], datetime] = utc_now,
        head: HeadSettings | None = None,
        operator_users: Sequence[str] = (),
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
        server = cls(path, writer, authorizer, registry, clock=clock, operator_users=operator_users)
        server._keep_head(head)
        return server

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
        retrying = tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception(
                lambda exc: isinstance(exc, HeadStoreError) and exc.retryable
            ),
            wait=tenacity.wait_exponential(multiplier=0.5, max=5.0),
            stop=tenacity.stop_before_delay(head.read_timeout),
            before_sleep=_log_head_retry,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await head.store.read()
        raise AssertionError("unreachable")  # tenacity returns or re-raises


def _log_head_retry(state: tenacity.RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome is not None else None
    delay = state.next_action.sleep if state.next_action is not None else 0.0
    log.warning("cannot read the chain head yet: %s; retrying in %.1fs", error, delay)
