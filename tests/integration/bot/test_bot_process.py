"""The real bot process (`python -m tradingbot`) against the real API server.

Each bot runs as a subprocess under its own ServiceAccount (TokenRequest kubeconfig), with the
Role, Lease and state ConfigMap the operator would create for it, so RBAC is the production
one. Paper mode on the seeded price feed (sandbox mode only where a bot must refuse to start,
before any exchange is contacted); only 127.0.0.1 is contacted. The harness is in conftest.py.
"""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest
from kubernetes import client

from tests import kube
from tradingbot.ledger import Execution, apply_fill
from tradingbot.state import StateCheckpoint

from .conftest import (
    BOT,
    GRACE_SECONDS,
    GROUP,
    LEASE_SECONDS,
    PLURAL,
    VERSION,
    BotEnv,
    tradingbot_manifest,
)


def replay(journal: tuple[Any, ...]) -> StateCheckpoint:
    """Positions and stats rebuilt from the recorded fills alone."""
    state = StateCheckpoint()
    for fill in journal:
        state, _ = apply_fill(
            state,
            Execution(
                fill.symbol,
                fill.side,
                fill.amount,
                fill.price,
                fill.cost,
                fill.fee,
                fill.fee_currency,
                fill.order_id,
                fill.client_order_id,
                fill.time,
            ),
        )
    return state


def test_bot_trades_and_sigterm_flushes_exactly_its_positions(bot_env: BotEnv) -> None:
    bot = bot_env.start("alpha-pod-1")
    kube.wait_for(lambda: bot.ready, timeout=60, message="bot ready")
    # The pod, its uid and this process's nonce.
    assert (bot_env.lease_holder() or "").startswith("alpha-pod-1_uid-alpha-pod-1_")
    first = bot_env.state()
    assert first is not None and first.reason in ("restore", "fill", "periodic")

    traded = kube.wait_for(
        lambda: (s := bot_env.state()) and s.stats.total_trades >= 4 and s,
        timeout=60,
        message="fills checkpointed to the ConfigMap",
    )
    assert traded.checkpoint_seq > first.checkpoint_seq
    assert traded.writer_pod == "alpha-pod-1"
    status, metrics = bot.get("/metrics")
    assert status == 200 and 'tradingbot_trades_total{bot="alpha"' in str(metrics)
    assert bot_env.events("StateInitialized")

    stopped_at = time.monotonic()
    bot.proc.send_signal(signal.SIGTERM)
    assert bot.wait_exit(GRACE_SECONDS) == 0
    assert time.monotonic() - stopped_at < GRACE_SECONDS

    final = bot_env.state()
    assert final is not None and final.reason == "shutdown"
    assert final.writer_pod == "alpha-pod-1"
    rebuilt = replay(final.journal)
    assert final.stats.total_trades == len(final.journal) == rebuilt.stats.total_trades
    assert {s: p.amount for s, p in final.positions.items()} == pytest.approx(
        {s: p.amount for s, p in rebuilt.positions.items()}
    )
    assert final.stats.realized_pnl == pytest.approx(rebuilt.stats.realized_pnl)
    logged = [line for line in bot.log_lines() if line.get("message") == "final checkpoint written"]
    assert logged and logged[-1]["positions"] == sorted(final.positions)
    assert not bot_env.lease_holder()  # released: a successor need not wait
    kube.wait_for(
        lambda: bot_env.status().get("state", {}).get("lastShutdownClean") is True,
        timeout=10,
        message="status reports a clean shutdown",
    )


def test_sigkill_loses_no_recorded_fill(bot_env: BotEnv) -> None:
    first = bot_env.start("alpha-pod-1")
    kube.wait_for(
        lambda: (s := bot_env.state()) and s.stats.total_trades >= 3,
        timeout=60,
        message="fills before the kill",
    )
    first.proc.send_signal(signal.SIGKILL)
    first.wait_exit(10)
    before = bot_env.state()
    assert before is not None and before.reason != "shutdown"
    assert (bot_env.lease_holder() or "").startswith("alpha-pod-1_uid-alpha-pod-1_")  # kept

    second = bot_env.start("alpha-pod-2")
    kube.wait_for(
        lambda: second.ready,
        timeout=LEASE_SECONDS * 4 + 30,
        message="successor ready after the dead holder's lease expired",
    )
    # It had to wait for the expiry: the killed process could not hand over.
    assert time.monotonic() - second.started >= LEASE_SECONDS - 1
    restored = bot_env.events("StateRestored")
    assert any(f"checkpointSeq {before.checkpoint_seq} " in e.message for e in restored)
    kube.wait_for(
        lambda: bot_env.status().get("state", {}).get("restoredFromSeq") == before.checkpoint_seq,
        timeout=10,
        message="restoredFromSeq in status",
    )
    after = kube.wait_for(
        lambda: (s := bot_env.state()) and s.writer_pod == "alpha-pod-2" and s,
        timeout=20,
        message="successor writes state",
    )
    assert after.checkpoint_seq > before.checkpoint_seq
    assert after.journal[: len(before.journal)] == before.journal  # every recorded fill
    assert after.stats.total_trades >= before.stats.total_trades
    second.proc.send_signal(signal.SIGTERM)
    assert second.wait_exit(GRACE_SECONDS) == 0


def test_two_processes_for_one_bot_only_one_trades(bot_env: BotEnv) -> None:
    a = bot_env.start("alpha-pod-a")
    b = bot_env.start("alpha-pod-b")
    kube.wait_for(lambda: a.ready or b.ready, timeout=60, message="one of two ready")
    leader, follower = (a, b) if a.ready else (b, a)
    writers: set[str] = set()
    seen: StateCheckpoint | None = None
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        assert not follower.ready
        state = bot_env.state()
        if state is not None:
            writers.add(state.writer_pod)
            seen = state
        time.sleep(0.2)
    assert writers == {leader.name} and seen is not None
    assert (bot_env.lease_holder() or "").startswith(f"{leader.name}_uid-{leader.name}_")
    code, body = follower.get("/readyz")
    assert code == 503 and isinstance(body, dict)
    assert body["phase"] in ("waiting-for-lease", "starting")

    leader.proc.send_signal(signal.SIGTERM)
    assert leader.wait_exit(GRACE_SECONDS) == 0
    # The follower may overwrite the ConfigMap within milliseconds of the release, so the
    # leader's last checkpoint is taken from its own log.
    (final,) = [
        line for line in leader.log_lines() if line.get("message") == "final checkpoint written"
    ]
    kube.wait_for(lambda: follower.ready, timeout=20, message="follower takes over")
    takeover = kube.wait_for(
        lambda: (s := bot_env.state()) and s.writer_pod == follower.name and s,
        timeout=20,
        message="follower writes state",
    )
    assert takeover.checkpoint_seq > final["checkpoint_seq"]
    assert takeover.journal[: len(seen.journal)] == seen.journal  # nothing the leader did is lost
    assert any(
        f"checkpointSeq {final['checkpoint_seq']} " in e.message
        for e in bot_env.events("StateRestored")
    )
    follower.proc.send_signal(signal.SIGTERM)
    assert follower.wait_exit(GRACE_SECONDS) == 0


def test_a_sandbox_bot_missing_a_mounted_credentials_file_exits_naming_it(
    bot_env: BotEnv,
) -> None:
    # The mode of an existing TradingBot is immutable: the fixture's paper bot is created
    # again in sandbox mode (its ServiceAccount and Role stay; nothing garbage-collects them).
    manifest = tradingbot_manifest(bot_env.namespace)
    bot_env.custom.delete_namespaced_custom_object(GROUP, VERSION, bot_env.namespace, PLURAL, BOT)
    manifest["spec"]["exchange"] = {
        "id": "binance",
        "mode": "sandbox",
        "credentialsSecretRef": {"name": "keys"},
    }

    def created() -> bool:
        try:
            bot_env.custom.create_namespaced_custom_object(
                GROUP, VERSION, bot_env.namespace, PLURAL, manifest
            )
        except client.ApiException as exc:
            if exc.status == 409:  # the deleted one is not gone yet
                return False
            raise
        return True

    kube.wait_for(created, timeout=30, message="sandbox TradingBot created")
    # A credentials directory with one of the two files absent (a hand-run bot, a volume
    # without the contract's items).
    credentials = bot_env.tmp / "credentials"
    credentials.mkdir()
    (credentials / "apiKey").write_text("loopback-api-key-0123456789\n")
    bot = bot_env.start("alpha-pod-1", CREDENTIALS_DIR=str(credentials))
    assert bot.wait_exit(30) == 2, bot.logs()
    assert f"{credentials}/secret: missing" in bot.logs()
    assert "loopback-api-key-0123456789" not in bot.logs()
    (event,) = bot_env.events("InvalidConfig")
    assert f"{credentials}/secret: missing" in event.message
    assert bot_env.state() is None  # never traded, never wrote state
