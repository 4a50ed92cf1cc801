"""Checkpoints: the current state stored as the next checkpointSeq, only by the Lease holder,
one write at a time; a failed write pauses new entries until one succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import replace

from tradingbot.parts import RuntimeParts
from tradingbot.state.stores import StateConflictError, StateWriteError
from tradingbot_api.constants import CheckpointReason
from tradingbot_api.lease import LeaseLostError

log = logging.getLogger("tradingbot")


class CheckpointPart(RuntimeParts):
    async def _checkpoint(self, reason: CheckpointReason) -> bool:
        """Store the current state as the next checkpoint. False if the write failed (new
        entries pause until one succeeds); raises when fencing says another writer exists."""
        assert self.store is not None and self.fence is not None
        if self._save_task is not None and not self._save_task.done():
            # A write abandoned by a cancelled caller is still running; let it finish so two
            # writes never race.
            with contextlib.suppress(Exception):
                await asyncio.shield(self._save_task)
        if not self.fence.held:
            raise LeaseLostError("not the lease holder: refusing to write state")
        candidate = self.state.next(reason=reason, writer_pod=self.settings.pod_name)
        started = time.monotonic()
        self._save_task = asyncio.ensure_future(self.store.save(candidate))
        try:
            stored = await asyncio.shield(self._save_task)
        except StateConflictError:
            raise
        except (StateWriteError, OSError) as exc:
            if not self.write_failing:
                log.error(
                    "state write failed: no new entries until a write succeeds",
                    extra={"reason": reason, "error": str(exc)},
                )
            self._report_error("state_write", type(exc).__name__, str(exc))
            self.write_failing = True
            self.metrics.set_flag(self.metrics.state_write_failing, True)
            return False
        seconds = time.monotonic() - started
        # Keep in memory whatever changed while the write was in flight; drop only the
        # journal entries the size guard trimmed from what was stored.
        trimmed = len(candidate.journal) - len(stored.journal)
        if trimmed:
            self._audit_lost(self.state.journal[:trimmed], ())
        self.state = replace(
            self.state,
            checkpoint_seq=stored.checkpoint_seq,
            saved_at=stored.saved_at,
            reason=stored.reason,
            writer_pod=stored.writer_pod,
            journal=self.state.journal[trimmed:],
        )
        if self.write_failing:
            log.info("state writes succeed again: entries resume")
        self.write_failing = False
        self.metrics.set_flag(self.metrics.state_write_failing, False)
        self.metrics.checkpoint(reason, seconds, stored.checkpoint_seq)
        self._last_checkpoint = time.monotonic()
        self.health.detail["checkpointSeq"] = stored.checkpoint_seq
        if stored.journal:
            self._durable_fill_seq = stored.journal[-1].seq
        if self.audit is not None:
            self.audit.notify()
        return True
