"""The real bot process (`python -m tradingbot`) against the real API server.

Each bot runs as a subprocess under its own ServiceAccount (TokenRequest kubeconfig), with the
Role, Lease and state ConfigMap the operator would create for it, so RBAC is the production
one. Paper mode on the seeded price feed; only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
from kubernetes import client
from tradingbot.ledger import Execution, apply_fill
from tradingbot.state import StateCheckpoint, decode_state

from tests import kube

GROUP, VERSION, PLURAL = "trading.r7.dev", "v1alpha1", "tradingbots"
BOT = "alpha"
LEASE_SECONDS = 6
GRACE_SECONDS = 15

# Momentum with a hair trigger so that fills come within a few seconds.
PARAMS = {
    "lookback": 2,
    "entryThresholdPct": 0.05,
    "exitThresholdPct": 0.0,
    "priceFeed": "seeded",
    "seed": 11,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class BotProcess:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    started: float = field(default_factory=time.monotonic)

    def get(self, path: str) -> tuple[int, dict[str, Any] | str]:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.port}{path}", timeout=2
            ) as response:
                body = response.read().decode()
                status = response.status
        except urllib.error.HTTPError as exc:
            body, status = exc.read().decode(), exc.code
        except OSError:
            return 0, ""
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body

    @property
    def ready(self) -> bool:
        return self.get("/readyz")[0] == 200

    def logs(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.logs().splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue
        return lines

    def wait_exit(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)


@dataclass
class BotEnv:
    namespace: str
    kubeconfig: Path
    core: client.CoreV1Api
    custom: client.CustomObjectsApi
    coordination: client.CoordinationV1Api
    tmp: Path
    processes: list[BotProcess] = field(default_factory=list)

    def start(self, pod: str, **env: str) -> BotProcess:
        port = free_port()
        log_path = self.tmp / f"{pod}.log"
        environment = {
            **{k: v for k, v in os.environ.items() if k not in ("KUBECONFIG",)},
            "BOT_NAME": BOT,
            "POD_NAMESPACE": self.namespace,
            "POD_NAME": pod,
            "POD_UID": f"uid-{pod}",
            "POD_IP": "127.0.0.1",
            "METRICS_PORT": str(port),
            "KUBECONFIG": str(self.kubeconfig),
            "TICK_SECONDS": "0.05",
            "CHECKPOINT_INTERVAL_SECONDS": "1",
            "LEASE_DURATION_SECONDS": str(LEASE_SECONDS),
            "GRACE_PERIOD_SECONDS": str(GRACE_SECONDS),
            "LOG_LEVEL": "INFO",
            **env,
        }
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tradingbot"],
                env=environment,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        bot = BotProcess(pod, proc, port, log_path)
        self.processes.append(bot)
        return bot

    def state(self) -> StateCheckpoint | None:
        cm = self.core.read_namespaced_config_map(f"{BOT}-state", self.namespace)
        text = (cm.data or {}).get("state.json")
        return decode_state(text) if text else None

    def lease_holder(self) -> str | None:
        lease = self.coordination.read_namespaced_lease(f"{BOT}-trader", self.namespace)
        return lease.spec.holder_identity if lease.spec else None

    def events(self, reason: str) -> list[Any]:
        items = self.core.list_namespaced_event(self.namespace).items
        return [e for e in items if e.reason == reason]

    def status(self) -> dict[str, Any]:
        obj = cast(
            dict[str, Any],
            self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, BOT),
        )
        return dict(obj.get("status") or {})


def tradingbot_manifest(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TradingBot",
        "metadata": {"name": BOT, "namespace": namespace},
        "spec": {
            "profile": "volatile",
            "exchange": {"id": "binance", "mode": "paper"},
            "symbols": ["BTC/USDT", "ETH/USDT"],
            "strategy": {"params": PARAMS},
        },
    }


@pytest.fixture
def bot_env(
    apply_crds: list[str],
    namespace: str,
    api_client: client.ApiClient,
    custom_api: client.CustomObjectsApi,
    core_api: client.CoreV1Api,
    apply_yaml: Callable[..., list[Any]],
    sa_kubeconfig: Callable[[str, str], Path],
    tmp_path: Path,
) -> Iterator[BotEnv]:
    from tradingbot_operator.render import BotRef, render_bot_objects, service_account_name

    created = cast(
        dict[str, Any],
        custom_api.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, tradingbot_manifest(namespace)
        ),
    )
    ref = BotRef(namespace=namespace, name=BOT, uid=created["metadata"]["uid"])
    # What the operator creates before the pod: ServiceAccount, least-privilege Role and its
    # binding, the unheld Lease and the empty state ConfigMap.
    apply_yaml(render_bot_objects(ref, created["spec"]), namespace)
    env = BotEnv(
        namespace=namespace,
        kubeconfig=sa_kubeconfig(namespace, service_account_name(BOT)),
        core=core_api,
        custom=custom_api,
        coordination=client.CoordinationV1Api(api_client),
        tmp=tmp_path,
    )
    yield env
    for bot in env.processes:
        if bot.proc.poll() is None:
            bot.proc.kill()
            bot.proc.wait(timeout=10)


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
    assert bot_env.lease_holder() == "alpha-pod-1_uid-alpha-pod-1"
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
    assert bot_env.lease_holder() == "alpha-pod-1_uid-alpha-pod-1"  # never released

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
    assert bot_env.lease_holder() == f"{leader.name}_uid-{leader.name}"
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
