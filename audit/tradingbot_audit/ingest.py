"""The sidecar's single writer: every stored event goes through one SerialWriter.

Requests' events are queued and written in batches on a thread of their own, one fsync per
batch, and each request is acknowledged only after the fsync of its batch. The operator
retries until it gets 200 and the writer's dedup window turns retries into
`duplicate: true`, which is what makes delivery at-least-once without duplicates. After each
durable batch the new chain head is handed on (to the head publisher, see server.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar

from .head import ChainHead
from .schema import AuditSchemaError
from .writer import AppendResult

log = logging.getLogger(__name__)

T = TypeVar("T")

# Concurrent requests are written as one batch (one fsync) up to this many events.
MAX_BATCH_EVENTS: Final = 5000


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
