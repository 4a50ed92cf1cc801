"""The versioned state document (SPEC §11) and its pure encoding, decoding and trimming.

Top-level keys, exactly: schemaVersion, checkpointSeq, savedAt, reason, writerPod, positions,
balances, stats {realizedPnl, totalTrades, wins}, openOrders, journal. A journal entry is one
fill; besides the trade it records the position around it (positionBefore, positionAfter) and
whether the audit sidecar has acknowledged its events (audited, see tradingbot.audit). Those
three are optional when reading, so states written before them still restore.

Decoding is strict: anything that is not a state this code wrote (bad JSON, unknown
schemaVersion, a missing or unexpected key, a negative amount) raises StateCorruptError,
because trading on a misread position is worse than not trading.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from typing import Any, Final

from tradingbot_api.times import utc_now_iso

# `schemaVersion` of the document this code writes, and the only one it reads.
STATE_SCHEMA_VERSION: Final = 1
TOP_LEVEL_KEYS = (
    "schemaVersion",
    "checkpointSeq",
    "savedAt",
    "reason",
    "writerPod",
    "positions",
    "balances",
    "stats",
    "openOrders",
    "journal",
)
STATS_KEYS = ("realizedPnl", "totalTrades", "wins")

# Count bound on the journal; the byte budget of the backend may trim further.
MAX_JOURNAL_ENTRIES = 500


class StateCorruptError(Exception):
    """A stored state exists but cannot be trusted."""


class StateTooLargeError(Exception):
    """Even with an empty journal the state does not fit the backend's size budget."""


@dataclass(frozen=True)
class Position:
    """A long spot position; `entry_price` is the average cost per unit including fees."""

    symbol: str
    amount: float
    entry_price: float
    mark_price: float
    opened_at: str

    @property
    def notional(self) -> float:
        return self.amount * self.mark_price

    @property
    def unrealized_pnl(self) -> float:
        return self.amount * (self.mark_price - self.entry_price)

    def to_json(self) -> dict[str, Any]:
        return {
            "symbol": self.symbol,
            "side": "long",
            "amount": self.amount,
            "entryPrice": self.entry_price,
            "markPrice": self.mark_price,
            "openedAt": self.opened_at,
        }

    @classmethod
    def from_json(cls, raw: Any, path: str) -> Position:
        obj = _object(raw, path)
        if obj.get("side", "long") != "long":
            raise StateCorruptError(
                f"{path}.side: only long positions exist, got {obj.get('side')!r}"
            )
        return cls(
            symbol=_string(obj, "symbol", path),
            amount=_number(obj, "amount", path, minimum=0.0),
            entry_price=_number(obj, "entryPrice", path, minimum=0.0),
            mark_price=_number(obj, "markPrice", path, minimum=0.0),
            opened_at=_string(obj, "openedAt", path),
        )


@dataclass(frozen=True)
class Stats:
    realized_pnl: float = 0.0
    total_trades: int = 0
    wins: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "realizedPnl": self.realized_pnl,
            "totalTrades": self.total_trades,
            "wins": self.wins,
        }

    @classmethod
    def from_json(cls, raw: Any, path: str) -> Stats:
        obj = _object(raw, path)
        _exact_keys(obj, STATS_KEYS, path)
        return cls(
            realized_pnl=_number(obj, "realizedPnl", path),
            total_trades=_integer(obj, "totalTrades", path),
            wins=_integer(obj, "wins", path),
        )


@dataclass(frozen=True)
class Fill:
    """One filled order as recorded in the journal (newest last)."""

    seq: int  # position of the fill in the bot's whole history (totalTrades after it)
    time: str
    symbol: str
    side: str
    amount: float
    price: float
    cost: float
    fee: float
    fee_currency: str
    order_id: str
    client_order_id: str
    realized_pnl: float
    day: str  # UTC date of the fill
    day_realized_pnl: float  # realized PnL of that UTC day up to and including this fill
    reason: str = ""
    # Amount of `symbol` held before and after this fill; None in entries written before the
    # bot recorded it (the position_change audit event needs it).
    position_before: float | None = None
    position_after: float | None = None
    # Set once the audit sidecar acknowledged this fill's events (stored durably). Delivery
    # bookkeeping, not part of the trade: two records of the same fill compare equal whatever
    # its value.
    audited: bool = field(default=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "seq": self.seq,
            "time": self.time,
            "symbol": self.symbol,
            "side": self.side,
            "amount": self.amount,
            "price": self.price,
            "cost": self.cost,
            "fee": self.fee,
            "feeCurrency": self.fee_currency,
            "orderId": self.order_id,
            "clientOrderId": self.client_order_id,
            "realizedPnl": self.realized_pnl,
            "day": self.day,
            "dayRealizedPnl": self.day_realized_pnl,
            "reason": self.reason,
        }
        if self.position_before is not None:
            doc["positionBefore"] = self.position_before
        if self.position_after is not None:
            doc["positionAfter"] = self.position_after
        doc["audited"] = self.audited
        return doc

    @classmethod
    def from_json(cls, raw: Any, path: str) -> Fill:
        obj = _object(raw, path)
        side = _string(obj, "side", path)
        if side not in ("buy", "sell"):
            raise StateCorruptError(f"{path}.side: must be buy or sell, got {side!r}")
        return cls(
            seq=_integer(obj, "seq", path),
            time=_string(obj, "time", path),
            symbol=_string(obj, "symbol", path),
            side=side,
            amount=_number(obj, "amount", path, minimum=0.0),
            price=_number(obj, "price", path, minimum=0.0),
            cost=_number(obj, "cost", path, minimum=0.0),
            fee=_number(obj, "fee", path, minimum=0.0),
            fee_currency=_string(obj, "feeCurrency", path),
            order_id=_string(obj, "orderId", path),
            client_order_id=_string(obj, "clientOrderId", path),
            realized_pnl=_number(obj, "realizedPnl", path),
            day=_string(obj, "day", path),
            day_realized_pnl=_number(obj, "dayRealizedPnl", path),
            reason=str(obj.get("reason", "")),
            position_before=_optional_number(obj, "positionBefore", path, minimum=0.0),
            position_after=_optional_number(obj, "positionAfter", path, minimum=0.0),
            audited=_optional_flag(obj, "audited", path),
        )


@dataclass(frozen=True)
class OpenOrder:
    """An order sent (or about to be sent) to a real exchange and not yet settled.

    Recorded before submission in live/sandbox mode, so a restart can ask the exchange what
    became of it (by clientOrderId) instead of forgetting a fill.
    """

    client_order_id: str
    symbol: str
    side: str
    amount: float
    created_at: str
    order_id: str = ""
    status: str = "submitting"  # submitting | open
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "clientOrderId": self.client_order_id,
            "orderId": self.order_id,
            "symbol": self.symbol,
            "side": self.side,
            "amount": self.amount,
            "status": self.status,
            "createdAt": self.created_at,
            "reason": self.reason,
        }

    @classmethod
    def from_json(cls, raw: Any, path: str) -> OpenOrder:
        obj = _object(raw, path)
        return cls(
            client_order_id=_string(obj, "clientOrderId", path),
            order_id=str(obj.get("orderId") or ""),
            symbol=_string(obj, "symbol", path),
            side=_string(obj, "side", path),
            amount=_number(obj, "amount", path, minimum=0.0),
            status=_string(obj, "status", path),
            created_at=_string(obj, "createdAt", path),
            reason=str(obj.get("reason", "")),
        )


@dataclass(frozen=True)
class StateCheckpoint:
    """Everything a bot must not lose, as of one checkpoint."""

    checkpoint_seq: int = 0
    saved_at: str = ""
    reason: str = ""
    writer_pod: str = ""
    positions: dict[str, Position] = field(default_factory=dict)
    balances: dict[str, float] = field(default_factory=dict)
    stats: Stats = field(default_factory=Stats)
    open_orders: tuple[OpenOrder, ...] = ()
    journal: tuple[Fill, ...] = ()
    schema_version: int = STATE_SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        return {
            "schemaVersion": self.schema_version,
            "checkpointSeq": self.checkpoint_seq,
            "savedAt": self.saved_at,
            "reason": self.reason,
            "writerPod": self.writer_pod,
            "positions": [self.positions[s].to_json() for s in sorted(self.positions)],
            "balances": {k: self.balances[k] for k in sorted(self.balances)},
            "stats": self.stats.to_json(),
            "openOrders": [o.to_json() for o in self.open_orders],
            "journal": [f.to_json() for f in self.journal],
        }

    def next(self, *, reason: str, writer_pod: str, saved_at: str | None = None) -> StateCheckpoint:
        """The same content stamped as the following checkpoint."""
        return replace(
            self,
            checkpoint_seq=self.checkpoint_seq + 1,
            reason=reason,
            writer_pod=writer_pod,
            saved_at=saved_at or utc_now_iso(),
        )


def encode_state(
    state: StateCheckpoint, *, max_bytes: int | None = None
) -> tuple[str, StateCheckpoint]:
    """JSON text of `state`, trimming the oldest journal entries until it fits `max_bytes`.

    Returns the text and the state it encodes (with the trimmed journal), so memory and storage
    agree. Positions, balances and open orders are never trimmed; if they alone do not fit,
    StateTooLargeError is raised and the write must fail loudly.
    """
    doc = state.to_json()
    text = _dumps(doc)
    if max_bytes is None or len(text.encode()) <= max_bytes:
        return text, state
    entries = [_dumps(entry) for entry in doc["journal"]]
    # Each journal entry costs its own bytes plus one separating comma.
    excess = len(text.encode()) - max_bytes
    drop = 0
    while drop < len(entries) and excess > 0:
        excess -= len(entries[drop].encode()) + 1
        drop += 1
    trimmed = replace(state, journal=state.journal[drop:])
    text = _dumps(trimmed.to_json())
    if len(text.encode()) > max_bytes:
        raise StateTooLargeError(
            f"state is {len(text.encode())} bytes without a journal, budget is {max_bytes}"
        )
    return text, trimmed


def decode_state(text: str | bytes) -> StateCheckpoint:
    """Parse and validate a stored state; StateCorruptError on anything unexpected."""
    try:
        raw = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise StateCorruptError(f"state is not valid JSON: {exc}") from exc
    obj = _object(raw, "state")
    version = obj.get("schemaVersion")
    if version != STATE_SCHEMA_VERSION:
        raise StateCorruptError(
            f"state.schemaVersion: this bot reads version {STATE_SCHEMA_VERSION}, found {version!r}"
        )
    _exact_keys(obj, TOP_LEVEL_KEYS, "state")
    positions: dict[str, Position] = {}
    raw_positions = obj["positions"]
    if not isinstance(raw_positions, list):
        raise StateCorruptError("state.positions: must be a list")
    for i, item in enumerate(raw_positions):
        position = Position.from_json(item, f"state.positions[{i}]")
        if position.symbol in positions:
            raise StateCorruptError(f"state.positions[{i}]: duplicate symbol {position.symbol}")
        positions[position.symbol] = position
    balances_raw = _object(obj["balances"], "state.balances")
    balances = {str(k): _number(balances_raw, k, "state.balances") for k in balances_raw}
    open_orders = tuple(
        OpenOrder.from_json(o, f"state.openOrders[{i}]")
        for i, o in enumerate(_list(obj["openOrders"], "state.openOrders"))
    )
    journal = tuple(
        Fill.from_json(f, f"state.journal[{i}]")
        for i, f in enumerate(_list(obj["journal"], "state.journal"))
    )
    reason = obj["reason"]
    if not isinstance(reason, str):
        raise StateCorruptError("state.reason: must be a string")
    return StateCheckpoint(
        schema_version=STATE_SCHEMA_VERSION,
        checkpoint_seq=_integer(obj, "checkpointSeq", "state"),
        saved_at=_string(obj, "savedAt", "state"),
        reason=reason,
        writer_pod=str(obj["writerPod"] or ""),
        positions=positions,
        balances=balances,
        stats=Stats.from_json(obj["stats"], "state.stats"),
        open_orders=open_orders,
        journal=journal,
    )


def _dumps(doc: Any) -> str:
    return json.dumps(doc, separators=(",", ":"), allow_nan=False)


def _object(raw: Any, path: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise StateCorruptError(f"{path}: must be an object, got {type(raw).__name__}")
    return raw


def _list(raw: Any, path: str) -> list[Any]:
    if not isinstance(raw, list):
        raise StateCorruptError(f"{path}: must be a list, got {type(raw).__name__}")
    return raw


def _exact_keys(obj: dict[str, Any], keys: tuple[str, ...], path: str) -> None:
    missing = [k for k in keys if k not in obj]
    extra = sorted(k for k in obj if k not in keys)
    if missing:
        raise StateCorruptError(f"{path}: missing {', '.join(missing)}")
    if extra:
        raise StateCorruptError(f"{path}: unexpected {', '.join(extra)}")


def _string(obj: dict[str, Any], key: str, path: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise StateCorruptError(f"{path}.{key}: must be a string, got {value!r}")
    return value


def _number(obj: dict[str, Any], key: str, path: str, *, minimum: float | None = None) -> float:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise StateCorruptError(f"{path}.{key}: must be a finite number, got {value!r}")
    if minimum is not None and value < minimum:
        raise StateCorruptError(f"{path}.{key}: must be >= {minimum:g}, got {value!r}")
    return float(value)


def _optional_number(
    obj: dict[str, Any], key: str, path: str, *, minimum: float | None = None
) -> float | None:
    return None if obj.get(key) is None else _number(obj, key, path, minimum=minimum)


def _optional_flag(obj: dict[str, Any], key: str, path: str) -> bool:
    value = obj.get(key, False)
    if not isinstance(value, bool):
        raise StateCorruptError(f"{path}.{key}: must be true or false, got {value!r}")
    return value


def _integer(obj: dict[str, Any], key: str, path: str) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise StateCorruptError(f"{path}.{key}: must be a non-negative integer, got {value!r}")
    return value
