"""The kill switch, suspension and the order gate, as pure functions (SPEC §3, §5).

The bot obeys two switches by itself, whether or not the operator runs: the annotation
`trading.r7.dev/halt` on its TradingBot and the fleet switch (the ConfigMap named by env
FLEET_SWITCH, data key `halt`). The stronger one wins (`effective_halt`: flatten > true >
drain; an unknown value counts as true, so a typo stops instead of trading). The bot also
stops, staying alive without trading, while `spec.suspend` is true, the annotation
`trading.r7.dev/suspend` is "true", or its TradingBot is being deleted.

What each mode does, in this order. None of it is atomic: prices move and orders fill
between the steps, and a step that fails is tried again on the next tick.

- `true`: (1) from the moment the change is read, the order gate refuses every order, so a
  tick in progress places nothing more; (2) the bot's own open entry orders are cancelled;
  (3) a `halt` checkpoint; (4) `status.killSwitch` is written at once and readiness turns
  false; (5) a `halt` audit event with the positions before. Positions stay open. Stop-loss
  and take-profit are the bot's own decisions, not orders resting on the exchange, so while
  halted nothing acts on them. Removing the switch resumes trading.
- `drain`: (1) entries refused; (2) open entry orders cancelled; (3) exits (strategy exit,
  stop-loss, take-profit) still placed as usual; (4) once flat, `status.killSwitch.flat` is
  written at once.
- `flatten`: (1) entries refused; (2) every open order cancelled; (3) one market sell per
  position, each through the exit checks (`tradingbot.risk.check_exit_order`: never more than
  held, never below the exchange's precision; entry limits never block it), repeated on each
  tick for whatever is left; (4) once flat, reported as for drain.
- suspended: no order at all, nothing cancelled, positions kept; resumes when lifted.

"Flat" means no position the exchange would let the bot sell (dust below the market's
precision does not count) and no order still settling. A position in a symbol the bot no
longer trades has no price and is neither sold nor managed: a drain or flatten then never
reports flat, and a human decides what to do with it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from tradingbot.engine import OrderIntent
from tradingbot.state.model import StateCheckpoint
from tradingbot_api.constants import (
    ANNOTATION_HALT,
    ANNOTATION_SUSPEND,
    FLEET_SWITCH_KEY,
    SUSPEND_VALUE,
    HaltMode,
    effective_halt,
)

# Switch values are copied into logs, Events and the audit: a longer value is no valid mode
# anyway (it counts as `true`), so only its beginning is kept.
MAX_SWITCH_VALUE_LENGTH = 64

REASON_FLATTEN = "flatten"

Precision = Callable[[str, float], float]


# -- what the API says ------------------------------------------------------------------------


@dataclass(frozen=True)
class BotControl:
    """The control facts of the bot's own TradingBot."""

    halt: str | None = None  # the annotation's raw value (bounded)
    suspended: bool = False
    why_suspended: str = ""  # spec.suspend | annotation | deleted


def _bounded(value: Any) -> str | None:
    if value is None:
        return None
    return str(value)[:MAX_SWITCH_VALUE_LENGTH]


def bot_control(obj: Mapping[str, Any] | None) -> BotControl:
    """Control facts from a TradingBot object; None (it no longer exists) reads as deleted."""
    if obj is None:
        return BotControl(suspended=True, why_suspended="deleted")
    metadata = obj.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    halt = _bounded(annotations.get(ANNOTATION_HALT))
    spec = obj.get("spec") or {}
    why = ""
    if metadata.get("deletionTimestamp"):
        why = "deleted"
    elif spec.get("suspend") is True:
        why = "spec.suspend"
    elif str(annotations.get(ANNOTATION_SUSPEND, "")).strip().lower() == SUSPEND_VALUE:
        why = ANNOTATION_SUSPEND
    return BotControl(halt=halt, suspended=bool(why), why_suspended=why)


def fleet_halt(obj: Mapping[str, Any] | None) -> str | None:
    """The fleet switch's value from its ConfigMap (None: no ConfigMap or no key)."""
    if obj is None:
        return None
    return _bounded((obj.get("data") or {}).get(FLEET_SWITCH_KEY))


@dataclass(frozen=True)
class ControlState:
    """Everything the bot must obey, from both switches."""

    bot: BotControl = BotControl()
    fleet: str | None = None

    @property
    def mode(self) -> HaltMode | None:
        return effective_halt(self.bot.halt, self.fleet)

    @property
    def suspended(self) -> bool:
        return self.bot.suspended

    @property
    def source(self) -> str:
        """Which switch set the mode in force: `bot`, `fleet` (or `` when none)."""
        mode = self.mode
        if mode is None:
            return ""
        return "bot" if effective_halt(self.bot.halt) == mode else "fleet"


# -- the order gate ---------------------------------------------------------------------------


class OrderKind(StrEnum):
    ENTRY = "entry"  # opens or grows a position
    EXIT = "exit"  # strategy exit, stop-loss, take-profit, flatten


@dataclass(frozen=True)
class GateFacts:
    lease_valid: bool
    stopping: bool = False
    suspended: bool = False
    mode: HaltMode | None = None
    control_silent: bool = False
    write_failing: bool = False
    daily_loss_breached: bool = False


@dataclass(frozen=True)
class GateVerdict:
    allowed: bool
    check: str = ""  # the check that refused: lease, stopping, suspended, halt, ...

    @property
    def lease_lost(self) -> bool:
        return self.check == "lease"


def order_gate(kind: OrderKind, facts: GateFacts) -> GateVerdict:
    """May an order of `kind` be placed now? The first check that refuses wins."""
    if not facts.lease_valid:
        return GateVerdict(False, "lease")
    if facts.stopping:
        return GateVerdict(False, "stopping")
    if facts.suspended:
        return GateVerdict(False, "suspended")
    if facts.mode == HaltMode.TRUE:
        return GateVerdict(False, "halt")
    if kind == OrderKind.EXIT:
        # Closing a position only reduces risk: nothing below may hold an exit back.
        return GateVerdict(True)
    if facts.mode is not None:
        return GateVerdict(False, str(facts.mode))
    if facts.control_silent:
        return GateVerdict(False, "control_silent")
    if facts.write_failing:
        return GateVerdict(False, "state_write_failing")
    if facts.daily_loss_breached:
        return GateVerdict(False, "daily_loss")
    return GateVerdict(True)


def order_kind(intent: OrderIntent) -> OrderKind:
    """Spot, long only: a buy opens or grows a position, a sell reduces one."""
    return OrderKind.ENTRY if intent.side == "buy" else OrderKind.EXIT


def manages_exits(mode: HaltMode | None, suspended: bool) -> bool:
    """Whether the strategy's decisions run at all (entries may still be refused)."""
    return not suspended and mode != HaltMode.TRUE


def cancels(mode: HaltMode | None) -> str:
    """Which open orders a newly obeyed mode cancels: `entries`, `all` or `` (none)."""
    if mode == HaltMode.FLATTEN:
        return "all"
    if mode in (HaltMode.TRUE, HaltMode.DRAIN):
        return "entries"
    return ""


# -- flattening and being flat ----------------------------------------------------------------


def sellable(symbol: str, amount: float, precision: Precision) -> float:
    """What of `amount` the exchange would accept in a sell (0 for dust)."""
    try:
        return max(0.0, float(precision(symbol, amount)))
    except (ValueError, ArithmeticError):
        return 0.0


def is_flat(state: StateCheckpoint, precision: Precision) -> bool:
    """No sellable position and no order still settling."""
    if state.open_orders:
        return False
    return all(sellable(s, p.amount, precision) <= 0 for s, p in state.positions.items())


def flatten_intents(
    state: StateCheckpoint, prices: Mapping[str, float], precision: Precision
) -> list[OrderIntent]:
    """One market sell per sellable position with a known price, in symbol order. Symbols
    with an order still settling wait for it (never two orders on one symbol)."""
    settling = {o.symbol for o in state.open_orders}
    intents = []
    for symbol in sorted(state.positions):
        price = prices.get(symbol)
        amount = sellable(symbol, state.positions[symbol].amount, precision)
        if symbol in settling or price is None or price <= 0 or amount <= 0:
            continue
        intents.append(OrderIntent(symbol, "sell", amount, price, REASON_FLATTEN))
    return intents


def positions_summary(state: StateCheckpoint) -> dict[str, float]:
    """Amount held per symbol (what the audit records as the positions before a halt)."""
    return {s: p.amount for s, p in sorted(state.positions.items())}


# -- what the bot reports ---------------------------------------------------------------------


def kill_switch_report(
    mode: HaltMode | None, observed_at: str | None, flat: bool
) -> dict[str, Any]:
    """`status.killSwitch` (null observedAt removes it in a merge patch)."""
    return {
        "mode": str(mode) if mode is not None else "",
        "observedAt": observed_at if mode is not None else None,
        "flat": flat,
    }


def report_is_urgent(previous: Mapping[str, Any] | None, current: Mapping[str, Any]) -> bool:
    """Whether a changed kill switch report must be written at once, past the status rate
    limit: every change while a mode is or was in force. In normal trading `flat` flips
    with every round trip and waits like any other change."""
    if previous is None:
        return bool(current.get("mode"))
    if dict(previous) == dict(current):
        return False
    return bool(previous.get("mode") or current.get("mode"))
