"""Fills reported to the audit sidecar as `trade` and `position_change` events (SPEC §6).

Delivery is at least once and never in the way of trading:

* The durable outbox is the journal the bot already writes through on every fill. Each entry
  carries `audited`, false until the sidecar acknowledged its events (HTTP 200 comes only
  after fsync); the flag reaches storage with the next checkpoint. A SIGKILL between a fill
  and its report therefore loses nothing: the restarted bot finds the entry unaudited and
  sends it again, and the dedup key derived from the fill makes a resend that did arrive the
  first time a no-op (`duplicate`).
* Only fills already in a stored checkpoint are reported, so the log never shows a trade that
  a restart would not know about.
* `AuditReporter` sends in the background (its own coroutine) in batches of at most
  MAX_EVENTS_PER_REQUEST events with a short timeout, backs off exponentially (capped) while
  the sidecar is unreachable or failing (5xx, 401, 408, 429), and drops what the sidecar
  refuses for good (other 4xx), after isolating the refused fill by halving the batch when
  the refusal may be about one event (400, 413). A dropped fill is marked audited too, so it
  is not offered again on every pass and every restart.
* If the sidecar stays away so long that the bounded journal trims an unaudited fill, its
  events are lost: counted in `tradingbot_audit_events_dropped_total` and logged (see
  `unaudited_removed`); trading and checkpoints never wait for the audit.

The functions above the reporter are pure: events from journal entries, what to send, how
acknowledgements change the state, how long to back off. The bot's other events (halts and
errors) have no journal behind them and go through tradingbot.notices.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import replace
from typing import Any, Final, NamedTuple

from tradingbot.metrics import BotMetrics
from tradingbot.state.model import Fill, StateCheckpoint
from tradingbot_api.audit_http import (
    BOT_EVENTS_PATH,
    REQUEST_TIMEOUT_SECONDS,
    Answer,
    AuditClient,
    TokenSource,
)
from tradingbot_api.constants import EventType, Severity
from tradingbot_api.times import micro_time, parse_zoned

log = logging.getLogger(__name__)

# Below the sidecar's own limit (1000 events, 1 MiB); a fill's events never span two requests.
MAX_EVENTS_PER_REQUEST: Final = 500
# Unaudited fills are offered again this often even without a new fill (e.g. at start).
RESEND_INTERVAL_SECONDS: Final = 10.0
BACKOFF_BASE_SECONDS: Final = 0.5
BACKOFF_CAP_SECONDS: Final = 30.0
# What SIGTERM grants the last flush: the shutdown checkpoint must not wait longer for it.
SHUTDOWN_FLUSH_SECONDS: Final = 1.0

# Longer keys are hashed. The sidecar prefixes them with bot/<namespace>/<bot>/ (names of at
# most 63 characters) and stores at most 256: 4 + 63 + 1 + 63 + 1 + 100 + len("/position").
MAX_FILL_KEY_LENGTH: Final = 100

# HTTP answers that say "try again later" rather than "these events are wrong": server
# errors, a token the sidecar could not confirm this time (rotated, or its cache is stale),
# request timeout and rate limiting.
RETRY_STATUSES: Final = frozenset({401, 408, 425, 429})
# Refusals that may concern a single event of the batch: halve it to find that one.
SPLIT_STATUSES: Final = frozenset({400, 413, 422})

OUTCOME_ACKED: Final = "acked"
OUTCOME_RETRY: Final = "retry"
OUTCOME_SPLIT: Final = "split"
OUTCOME_REJECTED: Final = "rejected"

# -- pure parts -------------------------------------------------------------------------------


def fill_key(fill: Fill) -> str:
    """A deterministic id of the fill, the base of its events' dedup keys.

    The clientOrderId the bot generated for the order: unique per bot, and the same when a
    live fill is reconciled again after a crash (so it is reported once). Entries without one
    fall back to the exchange's order id and the fill time.
    """
    key = fill.client_order_id or f"{fill.order_id or 'order'}@{fill.time}"
    if len(key) > MAX_FILL_KEY_LENGTH:
        key = "sha256-" + hashlib.sha256(key.encode()).hexdigest()
    return key


def position_action(fill: Fill) -> str | None:
    """What the fill did to the position: opened, increased, reduced or closed.

    None for journal entries written before positions were recorded in them.
    """
    before, after = fill.position_before, fill.position_after
    if before is None or after is None:
        return None
    if fill.side == "buy":
        return "opened" if before <= 0 else "increased"
    return "closed" if after <= 0 else "reduced"


def events_per_fill(fill: Fill) -> int:
    return 1 if position_action(fill) is None else 2


def event_timestamp(text: str) -> str | None:
    """The fill's time as ISO 8601 UTC, or None when it is not a zoned ISO timestamp (the
    sidecar then stamps the time of arrival; the raw value stays in details)."""
    try:
        return micro_time(parse_zoned(text))
    except ValueError:  # also NoOffsetError
        return None


def build_events(
    fill: Fill,
    *,
    bot: str,
    namespace: str,
    checkpoint_seq: int,
    redact: Callable[[str], str] | None = None,
) -> list[dict[str, Any]]:
    """The audit events of one journal entry: a `trade`, then its `position_change`.

    Details are built from an explicit list of the fill's fields, so nothing the bot holds
    besides the trade (credentials above all) can reach the log; `redact` masks registered
    secret values in the strings anyway. `checkpointSeq` is a checkpoint that holds the fill.
    """
    clean = redact or (lambda text: text)
    key = fill_key(fill)
    if clean(key) != key:  # never a credential in the key either, and still deterministic
        key = "sha256-" + hashlib.sha256(key.encode()).hexdigest()
    timestamp = event_timestamp(fill.time)
    common: dict[str, Any] = {"severity": Severity.INFO, "target": bot, "namespace": namespace}
    if timestamp is not None:
        common["timestamp"] = timestamp
    ids = {
        "orderId": clean(fill.order_id),
        "clientOrderId": clean(fill.client_order_id),
        "tradeSeq": fill.seq,
        "checkpointSeq": checkpoint_seq,
    }
    trade = {
        **common,
        "event_type": EventType.TRADE,
        "action": fill.side,
        "details": {
            "symbol": fill.symbol,
            "side": fill.side,
            "amount": fill.amount,
            "price": fill.price,
            "cost": fill.cost,
            "fee": fill.fee,
            "feeCurrency": clean(fill.fee_currency),
            "realizedPnl": fill.realized_pnl,
            "reason": clean(fill.reason),
            "fillTime": clean(fill.time),
            **ids,
        },
        "dedup_key": key,
    }
    action = position_action(fill)
    if action is None:
        return [trade]
    position = {
        **common,
        "event_type": EventType.POSITION_CHANGE,
        "action": action,
        "details": {
            "symbol": fill.symbol,
            "side": "long",
            "amountBefore": fill.position_before,
            "amountAfter": fill.position_after,
            "price": fill.price,
            "realizedPnl": fill.realized_pnl,
            **ids,
        },
        "dedup_key": f"{key}/position",
    }
    return [trade, position]


def select_unaudited(
    journal: Iterable[Fill],
    durable_seq: int,
    *,
    max_events: int = MAX_EVENTS_PER_REQUEST,
    skip: Collection[int] = (),
) -> list[Fill]:
    """The oldest unaudited fills that are already stored (seq <= durable_seq), as many as
    fit `max_events` events; fills in `skip` (by seq) are left out."""
    chosen: list[Fill] = []
    count = 0
    for fill in journal:
        if fill.audited or fill.seq > durable_seq or fill.seq in skip:
            continue
        size = events_per_fill(fill)
        if chosen and count + size > max_events:
            break
        chosen.append(fill)
        count += size
    return chosen


def mark_audited(state: StateCheckpoint, seqs: Collection[int]) -> StateCheckpoint:
    """The state with the journal entries whose seq is in `seqs` marked audited."""
    if not seqs or not any(f.seq in seqs and not f.audited for f in state.journal):
        return state
    journal = tuple(
        replace(f, audited=True) if f.seq in seqs and not f.audited else f for f in state.journal
    )
    return replace(state, journal=journal)


def unaudited_removed(before: Sequence[Fill], after: Sequence[Fill]) -> list[Fill]:
    """Unaudited fills of `before` that `after` (the trimmed journal) no longer holds."""
    kept = {f.seq for f in after}
    return [f for f in before if not f.audited and f.seq not in kept]


def backoff_delay(
    failures: int,
    *,
    base: float = BACKOFF_BASE_SECONDS,
    cap: float = BACKOFF_CAP_SECONDS,
    jitter: float = 0.0,
) -> float:
    """Seconds to wait after `failures` consecutive failed attempts: base doubling per
    failure, at most `cap`; `jitter` in [0, 1) shaves up to a fifth off so bots that lost the
    sidecar together do not return together."""
    if failures <= 0:
        return 0.0
    delay = min(cap, base * 2 ** min(failures - 1, 30))
    return delay * (1.0 - 0.2 * min(max(jitter, 0.0), 1.0))


def classify_status(status: int) -> str:
    """What an HTTP answer means for the events sent (see RETRY_STATUSES, SPLIT_STATUSES)."""
    if status == 200:
        return OUTCOME_ACKED
    if status >= 500 or status in RETRY_STATUSES or status < 400:
        return OUTCOME_RETRY
    if status in SPLIT_STATUSES:
        return OUTCOME_SPLIT
    return OUTCOME_REJECTED


def stored_flags(payload: Any, expected: int) -> list[bool] | None:
    """The `duplicate` flag of each event from a 200 answer; None if it is not one entry per
    event (then nothing is known to be stored)."""
    stored = payload.get("stored") if isinstance(payload, dict) else None
    if not isinstance(stored, list) or len(stored) != expected:
        return None
    return [bool(entry.get("duplicate")) if isinstance(entry, dict) else False for entry in stored]


# -- delivery ---------------------------------------------------------------------------------


class JournalView(NamedTuple):
    """What the reporter reads from the runtime: the in-memory journal, the seq of the newest
    fill in a stored checkpoint, and that checkpoint's checkpointSeq."""

    journal: Sequence[Fill]
    durable_seq: int
    checkpoint_seq: int


def bot_events_client(
    url: str, token: TokenSource, timeout: float = REQUEST_TIMEOUT_SECONDS
) -> AuditClient:
    """The one client a bot posts its audit events with (fills and notices share it)."""
    return AuditClient(url.rstrip("/") + BOT_EVENTS_PATH, token=token, timeout=timeout)


class AuditSender:
    """What the fill reporter and the notice sender share: the bot's one audit client, the
    wake/stop events of a background sender, the back-off after failures, and how each
    delivery outcome is counted and logged."""

    def __init__(self, client: AuditClient, metrics: BotMetrics, backoff_cap: float) -> None:
        self._client = client
        self.metrics = metrics
        self.backoff_cap = backoff_cap
        self.failures = 0
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._random = random.Random()

    async def stop(self, flush_budget: float = 0.0) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        await self.stop()
        with contextlib.suppress(Exception):
            await self._client.close()

    async def _pause(self, least: float = 0.0) -> None:
        """The back-off after `failures` failed attempts, cut short by `stop`."""
        delay = backoff_delay(self.failures, cap=self.backoff_cap, jitter=self._random.random())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), max(delay, least))

    def _delivered(self, count: int, duplicates: int | None = None) -> None:
        """`duplicates`: how many of them the sidecar had stored already, when it says."""
        self.metrics.audit_sent("ok", count - (duplicates or 0))
        if duplicates is not None:
            self.metrics.audit_sent("duplicate", duplicates)
        if self.failures:
            log.info(
                "audit delivery works again",
                extra={"failed_attempts": self.failures, "events": count},
            )
        self.failures = 0

    def _retrying(self, answer: Answer, count: int) -> None:
        self.metrics.audit_sent("error", count)
        self.failures += 1
        extra = {
            "status": answer.status,
            "error": answer.problem,
            "events": count,
            "failed_attempts": self.failures,
        }
        if self.failures == 1:
            log.warning("audit events not delivered; retrying with back-off", extra=extra)
        else:
            log.debug("audit events still not delivered", extra=extra)

    def _refused(self, answer: Answer, count: int, **lost: Any) -> None:
        """Refused for good: resending the same events cannot succeed; the log line keeps
        what was lost."""
        self.metrics.audit_sent("rejected", count)
        log.error(
            "audit sidecar refused events; dropping them",
            extra={"status": answer.status, "error": answer.problem, "events": count, **lost},
        )


class AuditReporter(AuditSender):
    """Sends unaudited fills to `{url}/v1/bot-events` until acknowledged.

    `view` reads the runtime's journal; `on_acked(seqs)` marks fills audited in the runtime's
    state (the next checkpoint stores the flags); `token` returns the bot's ServiceAccount
    token (called before every request, as it rotates).
    """

    def __init__(
        self,
        client: AuditClient,
        *,
        bot: str,
        namespace: str,
        metrics: BotMetrics,
        view: Callable[[], JournalView],
        on_acked: Callable[[set[int]], None],
        redact: Callable[[str], str] | None = None,
        resend_interval: float = RESEND_INTERVAL_SECONDS,
        backoff_cap: float = BACKOFF_CAP_SECONDS,
    ) -> None:
        super().__init__(client, metrics, backoff_cap)
        self.bot = bot
        self.namespace = namespace
        self._view = view
        self._on_acked = on_acked
        self._redact = redact
        self.resend_interval = resend_interval
        self._sender: asyncio.Task[None] | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Send in the background until `stop`; a running reporter is left alone."""
        if self._sender is not None and not self._sender.done():
            return
        self._stop.clear()
        self._wake.set()  # the first pass sends whatever a previous process left unaudited
        self._sender = asyncio.create_task(self._run(), name="audit-reporter")

    def notify(self) -> None:
        """A checkpoint was stored: there may be new fills to report."""
        self._wake.set()

    async def stop(self, flush_budget: float = 0.0) -> None:
        """Stop the background sends; with a budget, one last best-effort flush within it
        (a send in flight is awaited rather than cut off, inside the same budget)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, flush_budget)
        self._stop.set()
        self._wake.set()
        sender, self._sender = self._sender, None
        if sender is not None:
            done, _ = await asyncio.wait({sender}, timeout=max(0.0, deadline - loop.time()))
            if not done:
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)
                return
        remaining = deadline - loop.time()
        if remaining > 0.05:
            try:
                await asyncio.wait_for(self.flush(), remaining)
            except TimeoutError:
                log.info("audit flush at shutdown incomplete; the next start sends the rest")
            except Exception as exc:
                log.warning("audit flush at shutdown failed", extra={"error": str(exc)})

    # -- sending ----------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.resend_interval)
            if self._stop.is_set():
                break
            self._wake.clear()
            try:
                delivered = await self.flush(background=True)
            except Exception:
                # Never let the reporter die: the journal keeps the fills, the next pass
                # sends them.
                log.exception("audit delivery pass failed")
                delivered = False
            if delivered:
                continue
            await self._pause()
            self._wake.set()  # retry after the pause whether or not a fill came meanwhile

    async def flush(self, *, background: bool = False) -> bool:
        """Send every unaudited stored fill. True when none is left (acknowledged or dropped
        for good), False when the sidecar could not take them now (retry later). A
        `background` flush gives up between two requests once `stop` was called."""
        handled: set[int] = set()
        while True:
            if background and self._stop.is_set():
                return False
            view = self._view()
            fills = select_unaudited(view.journal, view.durable_seq, skip=handled)
            if not fills:
                return True
            handled.update(f.seq for f in fills)
            if not await self._deliver(fills, view.checkpoint_seq):
                return False

    async def _deliver(self, fills: Sequence[Fill], checkpoint_seq: int) -> bool:
        """Send `fills`' events; True when they are settled (stored or refused for good)."""
        events = [
            event
            for fill in fills
            for event in build_events(
                fill,
                bot=self.bot,
                namespace=self.namespace,
                checkpoint_seq=checkpoint_seq,
                redact=self._redact,
            )
        ]
        answer = await self._post(events)
        outcome = OUTCOME_RETRY if answer.status is None else classify_status(answer.status)
        seqs = {f.seq for f in fills}
        if outcome == OUTCOME_ACKED:
            flags = stored_flags(answer.payload, len(events))
            if flags is None:
                outcome = OUTCOME_RETRY
                answer = Answer(200, None, "HTTP 200 without one stored entry per event")
            else:
                self._delivered(len(events), duplicates=sum(flags))
                self._on_acked(seqs)
                return True
        if outcome == OUTCOME_RETRY:
            self._retrying(answer, len(events))
            return False
        if outcome == OUTCOME_SPLIT and len(fills) > 1:
            half = len(fills) // 2
            return await self._deliver(fills[:half], checkpoint_seq) and await self._deliver(
                fills[half:], checkpoint_seq
            )
        # Marked audited so they are not offered again.
        self._refused(answer, len(events), trade_seqs=sorted(seqs))
        self._on_acked(seqs)
        return True

    async def _post(self, events: list[dict[str, Any]]) -> Answer:
        return await self._client.post(events)
