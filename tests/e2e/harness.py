"""The whole product on one machine: operator (chart identity) + process node + real bots."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client

from localkube import product
from localkube.cluster import LocalCluster
from localkube.node import ProcessNode
from tests import kube
from tests.integration.operator.harness import Bots, OperatorProcess
from tradingbot_api.constants import LABEL_BOT

FAST_BOT = (
    "TICK_SECONDS=0.2",
    "CHECKPOINT_INTERVAL_SECONDS=2",
    "LEASE_DURATION_SECONDS=6",
    "PRICE_FEED=seeded",
)


class ProcessCensus(threading.Thread):
    """Samples the node every 20 ms: the most bot processes ever alive at once, per bot."""

    def __init__(self, node: ProcessNode) -> None:
        super().__init__(daemon=True)
        self.node = node
        self.max_per_bot: dict[str, int] = {}
        self.max_down = 0  # most bots with no live process at once (after they all started)
        self.watch_down: set[str] = set()
        self._stop = threading.Event()

    def run(self) -> None:
        while not self._stop.wait(0.02):
            counts = self.node.live_processes(LABEL_BOT)
            for bot, n in counts.items():
                self.max_per_bot[bot] = max(self.max_per_bot.get(bot, 0), n)
            if self.watch_down:
                down = sum(1 for bot in self.watch_down if counts.get(bot, 0) == 0)
                self.max_down = max(self.max_down, down)

    def stop(self) -> None:
        self._stop.set()


def read_state(core: client.CoreV1Api, namespace: str, bot: str) -> dict[str, Any] | None:
    try:
        cm = core.read_namespaced_config_map(f"{bot}-state", namespace)
    except client.ApiException:
        return None
    raw = (cm.data or {}).get("state.json")
    return json.loads(raw) if raw else None


def ledger(state: dict[str, Any]) -> dict[str, Any]:
    """What must survive any restart: positions, balances and the realized PnL."""
    return {
        "positions": state["positions"],
        "balances": state["balances"],
        "realizedPnl": state["stats"]["realizedPnl"],
        "totalTrades": state["stats"]["totalTrades"],
    }


class StateRecorder(threading.Thread):
    """Records every distinct checkpoint a bot's ConfigMap goes through."""

    def __init__(self, core: client.CoreV1Api, namespace: str, bot: str) -> None:
        super().__init__(daemon=True)
        self.core, self.namespace, self.bot = core, namespace, bot
        self.checkpoints: list[dict[str, Any]] = []
        self._stop = threading.Event()

    def run(self) -> None:
        from kubernetes import watch

        stream = watch.Watch()
        while not self._stop.is_set():
            try:
                for event in stream.stream(
                    self.core.list_namespaced_config_map,
                    self.namespace,
                    field_selector=f"metadata.name={self.bot}-state",
                    timeout_seconds=5,
                ):
                    raw = (event["object"].data or {}).get("state.json")
                    if raw:
                        state = json.loads(raw)
                        if (
                            not self.checkpoints
                            or self.checkpoints[-1]["checkpointSeq"] != state["checkpointSeq"]
                        ):
                            self.checkpoints.append(state)
                    if self._stop.is_set():
                        break
            except Exception:  # reconnect
                self._stop.wait(0.2)

    def stop(self) -> None:
        self._stop.set()


class E2E:
    def __init__(
        self,
        cluster: LocalCluster,
        api: client.ApiClient,
        namespace: str,
        node: ProcessNode,
        tmp_path: Path,
    ) -> None:
        self.cluster, self.api, self.namespace, self.node = cluster, api, namespace, node
        self.tmp_path = tmp_path
        self.core = client.CoreV1Api(api)
        self.bots = Bots(api, namespace)
        self.kubeconfig = product.operator_kubeconfig(
            cluster, api, tmp_path / "operator.kubeconfig"
        )
        self.operators: list[OperatorProcess] = []
        self.census = ProcessCensus(node)
        self.census.start()
        self.threads: list[Any] = [self.census]

    def start_operator(self, *args: str, **env: str) -> OperatorProcess:
        bot_env = [arg for pair in FAST_BOT for arg in ("--bot-env", pair)]
        proc = OperatorProcess(
            self.kubeconfig,
            self.namespace,
            self.tmp_path / f"operator-{len(self.operators)}.log",
            args=(*bot_env, *args),
        )
        self.operators.append(proc)
        return proc.start(**env)

    def record_state(self, bot: str) -> StateRecorder:
        recorder = StateRecorder(self.core, self.namespace, bot)
        recorder.start()
        self.threads.append(recorder)
        return recorder

    def state(self, bot: str) -> dict[str, Any] | None:
        return read_state(self.core, self.namespace, bot)

    def wait_trades(self, bot: str, trades: int = 1, timeout: float = 60) -> dict[str, Any]:
        def traded() -> dict[str, Any] | None:
            state = self.state(bot)
            return state if state and state["stats"]["totalTrades"] >= trades else None

        return dict(kube.wait_for(traded, timeout=timeout, message=f"{bot} to trade"))

    def bot_process(self, bot: str) -> Any:
        for run in list(self.node.pods.values()):
            if run.labels.get(LABEL_BOT) == bot:
                for c in run.containers:
                    if c.proc is not None and c.proc.poll() is None:
                        return c.proc
        return None

    def close(self) -> None:
        for proc in self.operators:
            proc.stop()
        for thread in self.threads:
            thread.stop()
        assert all(n <= 1 for n in self.census.max_per_bot.values()), (
            f"two processes traded for one bot: {self.census.max_per_bot}"
        )
        for proc in self.operators:
            if proc.exited() not in (None, 0, -15, -9):
                print(proc.logs())


def bot_logs(node: ProcessNode, namespace: str, bot: str) -> str:
    out = []
    for root in (node.data_dir / "pods").glob("*/logs/bot.log"):
        text = root.read_text(errors="replace")
        if f'"{bot}"' in text or bot in text[:2000]:
            out.append(f"--- {root}\n{text[-3000:]}")
    return "\n".join(out)


Predicate = Callable[[], Any]
