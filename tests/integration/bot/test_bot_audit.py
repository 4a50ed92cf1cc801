"""The real bot process reports its fills to the real audit sidecar (TokenReview against the
real API server, under the bot's own ServiceAccount): one `trade` and one `position_change`
record per journal fill, none lost across SIGKILL, none twice."""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests import kube
from tests.integration.conftest import SidecarProcess
from tradingbot.audit import fill_key
from tradingbot.state import StateCheckpoint
from tradingbot_api.constants import ANNOTATION_HALT
from tradingbot_audit import AuditFilter, query, verify_log

from .conftest import BOT, GRACE_SECONDS, LEASE_SECONDS, BotEnv

OK_SAMPLE = 'tradingbot_audit_events_sent_total{result="ok"}'


def records(log_dir: Path, event_type: str) -> list[dict[str, Any]]:
    return query(log_dir, AuditFilter.build(event_type=event_type), limit=None)


def keys_of(journal: tuple[Any, ...], namespace: str, suffix: str = "") -> list[str]:
    return sorted(f"bot/{namespace}/{BOT}/{fill_key(f)}{suffix}" for f in journal)


def assert_one_record_per_fill(log_dir: Path, final: StateCheckpoint, namespace: str) -> None:
    trades = records(log_dir, "trade")
    changes = records(log_dir, "position_change")
    twice = [k for k, n in Counter(r["dedup_key"] for r in trades + changes).items() if n > 1]
    assert twice == []
    assert sorted(r["dedup_key"] for r in trades) == keys_of(final.journal, namespace)
    assert sorted(r["dedup_key"] for r in changes) == keys_of(final.journal, namespace, "/position")
    user = f"system:serviceaccount:{namespace}:tradingbot-{BOT}"
    for record in trades + changes:
        assert (record["source"], record["user_id"]) == ("bot", user)
        assert (record["target"], record["namespace"]) == (BOT, namespace)
    by_key = {r["dedup_key"]: r for r in trades}
    for f in final.journal:
        details = by_key[f"bot/{namespace}/{BOT}/{fill_key(f)}"]["details"]
        assert (details["symbol"], details["side"]) == (f.symbol, f.side)
        assert details["tradeSeq"] == f.seq
        assert details["amount"] == f.amount and details["price"] == f.price
    assert verify_log(log_dir).ok


def unaudited_after_a_fill(env: BotEnv, least_trades: int) -> StateCheckpoint | None:
    """The stored state, once it holds `least_trades` fills and its newest fill is not yet
    marked audited (the fill checkpoint is written, the acknowledgement not yet stored)."""
    state = env.state()
    if state is None or state.stats.total_trades < least_trades:
        return None
    return state if state.reason == "fill" and not state.journal[-1].audited else None


def test_every_fill_reaches_the_audit_log_once(
    bot_env: BotEnv, audit_sidecars: Callable[[], SidecarProcess]
) -> None:
    sidecar = audit_sidecars()
    bot = bot_env.start("alpha-pod-1", AUDIT_URL=sidecar.api_url)
    kube.wait_for(
        lambda: (s := bot_env.state()) and s.stats.total_trades >= 4,
        timeout=60,
        message="fills checkpointed",
    )
    kube.wait_for(
        lambda: len(records(sidecar.log_dir, "trade")) >= 4, timeout=30, message="trade records"
    )
    status, metrics = bot.get("/metrics")
    assert status == 200 and isinstance(metrics, str)
    ok = [line for line in metrics.splitlines() if line.startswith(OK_SAMPLE)]
    assert ok and float(ok[0].split()[-1]) >= 8  # a trade and a position change per fill
    bot.proc.send_signal(signal.SIGTERM)
    assert bot.wait_exit(GRACE_SECONDS) == 0
    final = bot_env.state()
    assert final is not None and final.reason == "shutdown"
    assert all(f.audited for f in final.journal)  # acknowledged and stored with the state
    sent = [
        line
        for line in bot.log_lines()
        if line.get("message") == "reporting fills, halts and errors to the audit sidecar"
    ]
    assert sent and sent[0]["audit_url"] == sidecar.api_url
    sidecar.stop()
    assert_one_record_per_fill(sidecar.log_dir, final, bot_env.namespace)


def test_sigkill_after_a_fill_loses_no_event_and_writes_none_twice(
    bot_env: BotEnv, audit_sidecars: Callable[[], SidecarProcess]
) -> None:
    first_sidecar = audit_sidecars()
    first = bot_env.start("alpha-pod-1", AUDIT_URL=first_sidecar.api_url)
    delivered = kube.wait_for(
        lambda: (s := bot_env.state()) and sum(f.audited for f in s.journal) >= 2 and s,
        timeout=60,
        message="fills acknowledged and the flags stored",
    )
    # The sidecar goes away: the next fills are certainly not in the log when the bot dies.
    first_sidecar.kill()
    before = kube.wait_for(
        lambda: unaudited_after_a_fill(bot_env, delivered.stats.total_trades + 2),
        timeout=60,
        interval=0.02,
        message="a fill stored but not acknowledged",
    )
    first.proc.send_signal(signal.SIGKILL)
    first.wait_exit(10)
    logged = {r["dedup_key"] for r in records(first_sidecar.log_dir, "trade")}
    absent = [f for f in before.journal if keys_of((f,), bot_env.namespace)[0] not in logged]
    assert absent and not any(f.audited for f in absent)

    sidecar = audit_sidecars()  # same log directory, new ports
    second = bot_env.start("alpha-pod-2", AUDIT_URL=sidecar.api_url)
    kube.wait_for(lambda: second.ready, timeout=LEASE_SECONDS * 4 + 30, message="successor ready")
    seqs = {f.seq for f in before.journal}
    kube.wait_for(
        lambda: (
            (s := bot_env.state())
            and s.writer_pod == "alpha-pod-2"
            and all(f.audited for f in s.journal if f.seq in seqs)
        ),
        timeout=30,
        message="the successor delivered what the killed process left unaudited",
    )
    second.proc.send_signal(signal.SIGTERM)
    assert second.wait_exit(GRACE_SECONDS) == 0
    final = bot_env.state()
    assert final is not None and final.journal[: len(before.journal)] == before.journal
    sidecar.stop()
    assert_one_record_per_fill(sidecar.log_dir, final, bot_env.namespace)


def test_a_halt_reaches_the_audit_log_with_the_positions_before(
    bot_env: BotEnv, audit_sidecars: Callable[[], SidecarProcess]
) -> None:
    sidecar = audit_sidecars()
    bot = bot_env.start("alpha-pod-1", AUDIT_URL=sidecar.api_url)
    kube.wait_for(
        lambda: (s := bot_env.state()) and s.stats.total_trades >= 2,
        timeout=60,
        message="fills checkpointed",
    )
    bot_env.annotate(**{ANNOTATION_HALT: "true"})
    kube.wait_for(lambda: records(sidecar.log_dir, "halt"), timeout=30, message="halt record")
    (record,) = records(sidecar.log_dir, "halt")
    user = f"system:serviceaccount:{bot_env.namespace}:tradingbot-{BOT}"
    assert (record["source"], record["user_id"], record["target"]) == ("bot", user, BOT)
    assert record["action"] == "true" and record["severity"] == "critical"
    (obeyed,) = bot.logged("kill switch obeyed")
    assert record["details"]["positions"] == obeyed["positions"]
    assert record["details"]["switch"] == "bot"
    bot.proc.send_signal(signal.SIGTERM)
    assert bot.wait_exit(GRACE_SECONDS) == 0
    sidecar.stop()
    assert verify_log(sidecar.log_dir).ok
