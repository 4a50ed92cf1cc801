"""How the runtime obeys what controls the bot: the kill switch, suspension and the order
gate (rules in tradingbot.killswitch), fed by the watches of tradingbot.control.

The gate is asked right before every order, so a halt read from the watch stops the very
next order even in the middle of a tick. The steps a newly obeyed mode takes (cancel,
checkpoint, report) run once per change at the start of a tick; the trade loop is woken as
soon as a change is read.
"""

from __future__ import annotations

import logging

from tradingbot.control import SILENCE_FACTOR, ControlWatcher
from tradingbot.engine import OrderIntent
from tradingbot.killswitch import (
    ControlState,
    GateFacts,
    GateVerdict,
    OrderKind,
    cancels,
    is_flat,
    order_gate,
    order_kind,
    positions_summary,
)
from tradingbot.parts import RuntimeParts
from tradingbot_api.constants import CheckpointReason, HaltMode
from tradingbot_api.lease import LeaseLostError
from tradingbot_api.times import utc_now, utc_now_iso

log = logging.getLogger("tradingbot")

MODE_EFFECTS = {
    HaltMode.TRUE: "no new orders, open entry orders cancelled, positions kept",
    HaltMode.DRAIN: "no new entries, exits managed until flat",
    HaltMode.FLATTEN: "open orders cancelled, every position closed at market",
}


class ControlPart(RuntimeParts):
    def _start_control(self) -> None:
        s = self.settings
        self.control = ControlWatcher(
            self._api(),
            s.namespace,
            s.bot_name,
            fleet_switch=s.fleet_switch,
            timeout_seconds=s.control_watch_timeout_seconds,
            on_change=self._control_changed,
            initial=self._initial_object,
        )
        self._control_changed(self.control.state)  # a switch already set at start
        self.control.start()

    def _control_changed(self, state: ControlState) -> None:
        """Called as soon as a watch event is read. The order gate reads the new state by
        itself before the next order; this records when a mode was first seen and wakes
        the trade loop to act on it."""
        mode = state.mode
        if mode != self._seen_mode:
            self._seen_mode = mode
            self.kill_observed_at = utc_now_iso() if mode is not None else None
            if mode is not None:
                log.warning(
                    "kill switch seen: orders stop now",
                    extra={"mode": str(mode), "switch": state.source},
                )
        if mode is not None or state.suspended:
            self.health.ready = False
        self._wake.set()

    def _holds_lease(self) -> bool:
        return self.fence is not None and self.fence.held

    def _gate(self, kind: OrderKind) -> GateVerdict:
        control = self.control.state if self.control is not None else ControlState()
        facts = GateFacts(
            lease_valid=self._holds_lease(),
            stopping=self.stopping,
            suspended=control.suspended,
            mode=control.mode,
            control_silent=self.control is None or self.control.silent(),
            write_failing=self.write_failing,
            daily_loss_breached=self._breach_day == utc_now().strftime("%Y-%m-%d"),
        )
        return order_gate(kind, facts)

    def _admit(self, intent: OrderIntent) -> bool:
        """Ask the gate right before an order; raises when the Lease is not valid."""
        verdict = self._gate(order_kind(intent))
        if verdict.allowed:
            return True
        if verdict.lease_lost:
            raise LeaseLostError("the trader lease is not valid by this process's clock")
        self.metrics.blocked(verdict.check)
        log.debug(
            "order held back",
            extra={"symbol": intent.symbol, "side": intent.side, "check": verdict.check},
        )
        return False

    async def _obey_control(self) -> None:
        """Act on a change of the kill switch or the suspension (once per change); the
        steps and their order are in tradingbot.killswitch."""
        assert self.control is not None
        control = self.control.state
        observed_at = self.kill_observed_at
        mode, suspended = control.mode, control.suspended
        before = positions_summary(self.state)
        # On every tick under a mode, so that a cancel that failed is tried again.
        cancelled = await self._cancel_open_orders(cancels(mode)) if mode is not None else 0
        if (mode, suspended) == self._obeyed:
            return
        previous_mode, previous_suspended = self._obeyed
        self._obeyed = (mode, suspended)
        self._obeyed_at = observed_at
        if mode != previous_mode:
            self.metrics.obeying(str(mode) if mode is not None else None)
            self._flat_reported = None
            if mode is not None:
                message = f"kill switch {mode} ({control.source} switch): {MODE_EFFECTS[mode]}"
                log.warning(
                    "kill switch obeyed",
                    extra={
                        "mode": str(mode),
                        "switch": control.source,
                        "positions": before,
                        "cancelled_orders": cancelled,
                        "open_orders": len(self.state.open_orders),
                    },
                )
                self._event_soon("Warning", "KillSwitch", message)
                self._notice_halt(str(mode), mode, control.source, before, cancelled)
            else:
                log.info("kill switch removed: trading resumes", extra={"was": str(previous_mode)})
                self._event_soon(
                    "Normal", "KillSwitchCleared", f"kill switch {previous_mode} removed"
                )
                self._notice_halt("resumed", previous_mode, "", before)
        if suspended != previous_suspended:
            self.metrics.set_flag(self.metrics.suspended, suspended)
            if suspended:
                why = control.bot.why_suspended
                log.warning("suspended: no orders, positions kept", extra={"why": why})
                self._event_soon("Warning", "Suspended", f"suspended ({why}): no orders")
            else:
                log.info("suspension lifted: trading resumes")
                self._event_soon("Normal", "Resumed", "suspension lifted: trading resumes")
        if mode is not None or suspended:
            await self._checkpoint(CheckpointReason.HALT)
        self._update_readiness()
        self._schedule_status()

    def _report_flat(self) -> None:
        """Drain and flatten end flat: say so at once (the operator then stops the pod)."""
        mode = self._obeyed[0]
        if mode not in (HaltMode.DRAIN, HaltMode.FLATTEN) or not self._flat():
            return
        key = (mode, self._obeyed_at)
        if self._flat_reported == key:
            return
        self._flat_reported = key
        log.info("flat under the kill switch", extra={"mode": str(mode)})
        self._event_soon(
            "Normal", "KillSwitchFlat", f"kill switch {mode}: no position left, nothing open"
        )
        control = self.control.state if self.control is not None else ControlState()
        self._notice_halt("flat", mode, control.source, positions_summary(self.state))
        self._schedule_status()

    def _flat(self) -> bool:
        return is_flat(self.state, self._precision)

    def _update_readiness(self) -> None:
        control = self.control.state if self.control is not None else ControlState()
        reason = ""
        if control.suspended:
            reason = f"suspended ({control.bot.why_suspended})"
        elif control.mode is not None:
            reason = f"kill switch {control.mode} ({control.source} switch)"
        if reason:
            self.health.detail["reason"] = reason
        else:
            self.health.detail.pop("reason", None)
        self.health.ready = self.health.phase == "trading" and not reason and not self.stopping

    def _watch_health(self) -> None:
        """Log, Event and metric when a control watch goes silent or is heard again (the
        gate itself reads the silence live, before every entry)."""
        if self.control is None:
            return
        silent = self.control.silent_watches()
        if bool(silent) == self._silent_flagged:
            return
        self._silent_flagged = bool(silent)
        self.metrics.set_flag(self.metrics.control_watch_silent, self._silent_flagged)
        limit = SILENCE_FACTOR * self.settings.control_watch_timeout_seconds
        if silent:
            log.error(
                "control watch silent: no new entries until it is heard again",
                extra={"watches": silent, "silent_after_seconds": limit},
            )
            self._event_soon(
                "Warning",
                "ControlWatchSilent",
                f"nothing heard from the watch on {', '.join(silent)} for {limit:g}s: a kill "
                "switch might not reach the bot, so it opens no position (exits go on)",
            )
        else:
            log.info("control watches heard again: entries resume")
            self._event_soon(
                "Normal", "ControlWatchRestored", "control watches heard again: entries resume"
            )

    async def _control_known(self) -> bool:
        """Never trade before both switches were read once (False: stop requested)."""
        assert self.control is not None
        if self.control.known:
            return True
        log.info("waiting until the TradingBot and the fleet switch have been read")
        return await self.control.wait_known(self.stop_event)
