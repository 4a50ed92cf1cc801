"""Bot metrics (SPEC §7), each registry private to one runtime so tests can run many.

Names and labels other tools rely on:
- tradingbot_trades_total{bot,symbol,side,result}: fills and refusals; result is `filled` for
  a fill, `rejected` when the exchange refused the order (InsufficientFunds, InvalidOrder).
- tradingbot_position_notional{bot,symbol}, tradingbot_pnl_realized{bot},
  tradingbot_pnl_unrealized{bot}, tradingbot_equity{bot}: in the quote currency.
- tradingbot_state_checkpoints_total{reason}, tradingbot_state_checkpoint_duration_seconds.
- tradingbot_exchange_errors_total{error_type}: ccxt error class names.
- tradingbot_exchange_request_duration_seconds{method}: ccxt method names.
Also exported for alerts and dashboards: tradingbot_daily_loss_breached{bot} (0/1),
tradingbot_daily_loss_pct{bot}, tradingbot_open_positions{bot}, tradingbot_lease_held{bot},
tradingbot_state_write_failing{bot}, tradingbot_state_checkpoint_seq{bot},
tradingbot_state_restored_seq{bot}.
Kill switch and control (tradingbot.killswitch, tradingbot.control):
- tradingbot_kill_switch{bot,mode}: 1 for the mode obeyed (true, drain, flatten), else 0.
- tradingbot_suspended{bot}: 1 while suspended (spec.suspend, the suspend annotation).
- tradingbot_control_watch_silent{bot}: 1 while a watch on the TradingBot or the fleet
  switch has been silent too long (no new entries).
- tradingbot_orders_blocked_total{bot,check}: orders the gate refused, by the check.
Audit delivery (events reported to the audit sidecar, see tradingbot.audit):
- tradingbot_audit_events_sent_total{result}: per event and attempt; `ok` stored, `duplicate`
  already in the log (a resend), `rejected` refused for good (HTTP 4xx, dropped), `error` not
  delivered this time (5xx, timeout, unreachable; retried).
- tradingbot_audit_events_dropped_total: events lost before delivery because the journal
  trimmed their fill while it was still unaudited (sidecar unreachable for very long).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from tradingbot_api.constants import HaltMode

AUDIT_RESULTS = ("ok", "duplicate", "rejected", "error")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class BotMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, bot: str, registry: CollectorRegistry | None = None) -> None:
        self.bot = bot
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.trades = Counter(
            "tradingbot_trades_total",
            "Orders by outcome",
            ["bot", "symbol", "side", "result"],
            registry=r,
        )
        self.position_notional = Gauge(
            "tradingbot_position_notional",
            "Mark value of the open position (quote currency)",
            ["bot", "symbol"],
            registry=r,
        )
        self.pnl_realized = Gauge(
            "tradingbot_pnl_realized", "Realized PnL since the first start", ["bot"], registry=r
        )
        self.pnl_unrealized = Gauge(
            "tradingbot_pnl_unrealized", "PnL of open positions", ["bot"], registry=r
        )
        self.equity = Gauge(
            "tradingbot_equity", "Quote balance plus open positions at mark", ["bot"], registry=r
        )
        self.checkpoints = Counter(
            "tradingbot_state_checkpoints_total",
            "State checkpoints written",
            ["reason"],
            registry=r,
        )
        self.checkpoint_duration = Histogram(
            "tradingbot_state_checkpoint_duration_seconds",
            "Time to write one checkpoint",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.exchange_errors = Counter(
            "tradingbot_exchange_errors_total",
            "Exchange errors by ccxt class",
            ["error_type"],
            registry=r,
        )
        self.exchange_requests = Histogram(
            "tradingbot_exchange_request_duration_seconds",
            "Exchange request latency",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.daily_loss_breached = Gauge(
            "tradingbot_daily_loss_breached",
            "1 while maxDailyLossPct is breached (no new entries)",
            ["bot"],
            registry=r,
        )
        self.daily_loss_pct = Gauge(
            "tradingbot_daily_loss_pct", "Today's loss in percent", ["bot"], registry=r
        )
        self.open_positions = Gauge(
            "tradingbot_open_positions", "Open positions", ["bot"], registry=r
        )
        self.lease_held = Gauge(
            "tradingbot_lease_held", "1 while this process may trade", ["bot"], registry=r
        )
        self.state_write_failing = Gauge(
            "tradingbot_state_write_failing",
            "1 while checkpoints fail (no new entries)",
            ["bot"],
            registry=r,
        )
        self.checkpoint_seq = Gauge(
            "tradingbot_state_checkpoint_seq",
            "checkpointSeq of the last stored checkpoint",
            ["bot"],
            registry=r,
        )
        self.restored_seq = Gauge(
            "tradingbot_state_restored_seq",
            "checkpointSeq restored at start (-1: first start)",
            ["bot"],
            registry=r,
        )
        self.audit_events_sent = Counter(
            "tradingbot_audit_events_sent_total",
            "Audit events sent to the audit sidecar, by outcome",
            ["result"],
            registry=r,
        )
        for result in AUDIT_RESULTS:
            self.audit_events_sent.labels(result=result)
        self.audit_events_dropped = Counter(
            "tradingbot_audit_events_dropped_total",
            "Audit events lost: their fill left the journal before the sidecar acknowledged it",
            registry=r,
        )
        self.kill_switch = Gauge(
            "tradingbot_kill_switch",
            "1 for the kill switch mode the bot obeys",
            ["bot", "mode"],
            registry=r,
        )
        for mode in HaltMode:
            self.kill_switch.labels(bot=bot, mode=str(mode))
        self.suspended = Gauge(
            "tradingbot_suspended", "1 while the bot is suspended", ["bot"], registry=r
        )
        self.control_watch_silent = Gauge(
            "tradingbot_control_watch_silent",
            "1 while a control watch is silent (no new entries)",
            ["bot"],
            registry=r,
        )
        self.orders_blocked = Counter(
            "tradingbot_orders_blocked_total",
            "Orders the order gate refused, by the check that refused",
            ["bot", "check"],
            registry=r,
        )
        for gauge in (
            self.suspended,
            self.control_watch_silent,
            self.pnl_realized,
            self.pnl_unrealized,
            self.equity,
            self.daily_loss_breached,
            self.daily_loss_pct,
            self.open_positions,
            self.lease_held,
            self.state_write_failing,
            self.checkpoint_seq,
        ):
            gauge.labels(bot=bot).set(0)
        self._symbols: set[str] = set()

    # ErrorSink for the exchange layer
    def exchange_error(self, error_type: str) -> None:
        self.exchange_errors.labels(error_type=error_type).inc()

    def exchange_request(self, method: str, seconds: float) -> None:
        self.exchange_requests.labels(method=method).observe(seconds)

    def trade(self, symbol: str, side: str, result: str) -> None:
        self.trades.labels(bot=self.bot, symbol=symbol, side=side, result=result).inc()

    def checkpoint(self, reason: str, seconds: float, seq: int) -> None:
        self.checkpoints.labels(reason=reason).inc()
        self.checkpoint_duration.observe(seconds)
        self.checkpoint_seq.labels(bot=self.bot).set(seq)

    def portfolio(
        self, *, notional: dict[str, float], realized: float, unrealized: float, equity: float
    ) -> None:
        for symbol in self._symbols | set(notional):
            self.position_notional.labels(bot=self.bot, symbol=symbol).set(
                notional.get(symbol, 0.0)
            )
        self._symbols |= set(notional)
        self.pnl_realized.labels(bot=self.bot).set(realized)
        self.pnl_unrealized.labels(bot=self.bot).set(unrealized)
        self.equity.labels(bot=self.bot).set(equity)
        self.open_positions.labels(bot=self.bot).set(sum(1 for v in notional.values() if v))

    def audit_sent(self, result: str, events: int) -> None:
        if events:
            self.audit_events_sent.labels(result=result).inc(events)

    def audit_dropped(self, events: int) -> None:
        if events:
            self.audit_events_dropped.inc(events)

    def obeying(self, mode: str | None) -> None:
        for known in HaltMode:
            self.kill_switch.labels(bot=self.bot, mode=str(known)).set(float(known == mode))

    def blocked(self, check: str) -> None:
        self.orders_blocked.labels(bot=self.bot, check=check).inc()

    def set_flag(self, gauge: Gauge, value: bool | float) -> None:
        gauge.labels(bot=self.bot).set(float(value))

    def render(self) -> bytes:
        return generate_latest(self.registry)
