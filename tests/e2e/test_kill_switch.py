"""One trader and a working kill switch whatever fails: the operator frozen or dead, the node
agent killed, the bot frozen on a node that went quiet. Real bot processes on the process
node, the operator with the chart's identity, a /proc census every 20 ms.

Times are compared as timestamps (the moment a write was stored, the time of each fill in
the bot's journal), never with a stopwatch."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from localkube import binaries, procfs, product
from localkube.cluster import LocalCluster
from tests import kube
from tests.e2e.harness import E2E, FAST_BOT, read_state
from tests.e2e.node_agent import CENSUS_VAR, NodeAgent, ProcessCensus, new_marker
from tests.integration.invalid_specs import spec_with
from tests.integration.operator.harness import Bots, OperatorProcess
from tradingbot_api.constants import ANNOTATION_HALT, FLEET_SWITCH_KEY, LABEL_BOT

SAMPLES = binaries.REPO_ROOT / "config" / "samples"


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def fills_after(state: dict[str, Any] | None, moment: dt.datetime) -> list[dict[str, Any]]:
    journal = (state or {}).get("journal") or []
    return [f for f in journal if dt.datetime.fromisoformat(f["time"]) > moment]


def trading_spec(**changes: Any) -> dict[str, Any]:
    """A bot that trades within seconds on the seeded feed (volatile, short windows)."""
    return spec_with(
        {
            "profile": "volatile",
            "symbols": ["BTC/USDT", "ETH/USDT"],
            "strategy.params": {
                "lookback": 3,
                "entryThresholdPct": 0.05,
                "exitThresholdPct": -0.05,
            },
            "risk": {"maxOpenPositions": 2, "stopLossPct": 0.2, "takeProfitPct": 0.2},
            "restartPolicy.coalesceSeconds": 0,
            "restartPolicy.gracePeriodSeconds": 5,
            **changes,
        }
    )


def patch_halt(bots: Bots, name: str, value: str | None) -> dt.datetime:
    """Set the kill switch and return a moment no earlier than when it was stored."""
    bots.custom.patch_namespaced_custom_object(
        "trading.r7.dev",
        "v1alpha1",
        bots.namespace,
        "tradingbots",
        name,
        {"metadata": {"annotations": {ANNOTATION_HALT: value}}},
        _request_timeout=10,
    )
    return now()


# -- the operator frozen or dead ----------------------------------------------------------


def test_a_halt_is_stored_at_once_while_the_operator_is_frozen(e2e: E2E) -> None:
    operator = e2e.start_operator()
    e2e.bots.create("bot-a", trading_spec())
    e2e.wait_trades("bot-a")
    assert operator.proc is not None
    operator.proc.send_signal(signal.SIGSTOP)  # hung: no webhook answers, no reconcile runs
    try:
        # First try, within the client's timeout: no admission call waits on the operator.
        halted_at = patch_halt(e2e.bots, "bot-a", "true")
        time.sleep(3)
        assert fills_after(e2e.state("bot-a"), halted_at + dt.timedelta(seconds=1)) == []
    finally:
        operator.proc.send_signal(signal.SIGCONT)
    e2e.bots.wait_phase("bot-a", "Halted")  # the operator finishes the stop when back


def test_with_the_operator_dead_no_fill_comes_later_than_a_second_after_the_halt(e2e: E2E) -> None:
    operator = e2e.start_operator()
    e2e.bots.create("bot-a", trading_spec())
    e2e.wait_trades("bot-a", trades=2)
    operator.kill()
    halted_at = patch_halt(e2e.bots, "bot-a", "true")
    time.sleep(4)
    state = e2e.state("bot-a")
    assert fills_after(state, halted_at + dt.timedelta(seconds=1)) == [], (
        state and state["journal"][-3:]
    )
    report = kube.wait_for(
        lambda: (
            (e2e.bots.status("bot-a").get("killSwitch") or {}).get("mode") == "true"
            and e2e.bots.status("bot-a")["killSwitch"]
        ),
        message="the bot's own report",
    )
    assert report["observedAt"]
    # The pod still runs (nobody deleted it), trading nothing; the operator stops it when back.
    assert e2e.bot_process("bot-a") is not None
    e2e.start_operator()
    e2e.bots.wait_phase("bot-a", "Halted")
    kube.wait_for(lambda: e2e.bot_process("bot-a") is None, message="the halted pod stopped")


@pytest.fixture
def fleet_switch(e2e: E2E) -> str:
    """A fleet switch ConfigMap in the test namespace, readable by every ServiceAccount (as
    the chart grants it in its release namespace)."""
    name = "fleet-switch"
    rbac = client.RbacAuthorizationV1Api(e2e.api)
    rbac.create_namespaced_role(
        e2e.namespace,
        {
            "metadata": {"name": "fleet-switch-reader"},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["configmaps"],
                    "resourceNames": [name],
                    "verbs": ["get", "list", "watch"],
                }
            ],
        },
    )
    rbac.create_namespaced_role_binding(
        e2e.namespace,
        {
            "metadata": {"name": "fleet-switch-reader"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "fleet-switch-reader",
            },
            "subjects": [
                {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Group",
                    "name": "system:serviceaccounts",
                }
            ],
        },
    )
    e2e.core.create_namespaced_config_map(e2e.namespace, {"metadata": {"name": name}, "data": {}})
    return f"{e2e.namespace}/{name}"


def test_the_fleet_switch_stops_all_four_samples_with_the_operator_dead(
    e2e: E2E, fleet_switch: str
) -> None:
    operator = e2e.start_operator(TRADINGBOT_OPERATOR_FLEET_SWITCH=fleet_switch)
    names = []
    for path in sorted(SAMPLES.glob("bot-*.yaml")):
        sample = yaml.safe_load(path.read_text())
        e2e.bots.create(sample["metadata"]["name"], sample["spec"])
        names.append(sample["metadata"]["name"])
    for name in names:
        e2e.bots.wait_running_with(name, timeout=90)
    time.sleep(3)  # trading
    operator.kill()
    namespace, _, name = fleet_switch.partition("/")
    e2e.core.patch_namespaced_config_map(name, namespace, {"data": {FLEET_SWITCH_KEY: "true"}})
    halted_at = now()
    time.sleep(4)
    for bot in names:
        assert fills_after(e2e.state(bot), halted_at + dt.timedelta(seconds=1)) == [], bot
        assert (e2e.bots.status(bot).get("killSwitch") or {}).get("mode") == "true", bot
    e2e.start_operator(TRADINGBOT_OPERATOR_FLEET_SWITCH=fleet_switch)
    for bot in names:
        e2e.bots.wait_phase(bot, "Halted", timeout=60)


# -- drain and flatten ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["flatten", "drain"])
def test_drain_and_flatten_end_flat_then_halted_and_are_recorded(e2e: E2E, mode: str) -> None:
    e2e.start_operator()
    e2e.bots.create("bot-a", trading_spec())
    kube.wait_for(
        lambda: (e2e.bots.status("bot-a").get("positions") or {}).get("open", 0) > 0,
        timeout=90,
        message="an open position",
    )
    patch_halt(e2e.bots, "bot-a", mode)
    label = "Flattening" if mode == "flatten" else "Draining"
    e2e.bots.wait_reason("bot-a", label, timeout=30)
    e2e.bots.wait_phase("bot-a", "Halted", timeout=120)
    status = e2e.bots.status("bot-a")
    assert status["killSwitch"]["mode"] == mode and status["killSwitch"]["flat"] is True
    assert status["positions"]["open"] == 0
    state = read_state(e2e.core, e2e.namespace, "bot-a")
    assert state is not None and not state["positions"]
    reasons = e2e.bots.reasons("bot-a")
    assert reasons.index(label) < len(reasons) - 1 - reasons[::-1].index("Halted")


# -- node loss ----------------------------------------------------------------------------------


class NodeLoss:
    """The operator (chart identity), real bots on a node agent of their own that a test can
    SIGKILL, and a /proc census of the bot processes (they carry a marker in their env)."""

    def __init__(
        self, cluster: LocalCluster, api: client.ApiClient, namespace: str, tmp_path: Path
    ) -> None:
        self.api, self.namespace, self.tmp_path = api, namespace, tmp_path
        self.core = client.CoreV1Api(api)
        self.coord = client.CoordinationV1Api(api)
        self.bots = Bots(api, namespace)
        self.marker = new_marker()
        self.census = ProcessCensus(self.marker)
        self.agent = NodeAgent(cluster.data_dir, f"node-{namespace}", tmp_path / "node", namespace)
        self.kubeconfig = product.operator_kubeconfig(cluster, api, tmp_path / "op.kubeconfig")
        self.operators: list[OperatorProcess] = []

    def start_operator(self) -> OperatorProcess:
        args = [arg for pair in FAST_BOT for arg in ("--bot-env", pair)]
        args += ["--bot-env", f"{CENSUS_VAR}={self.marker}"]
        proc = OperatorProcess(
            self.kubeconfig,
            self.namespace,
            self.tmp_path / f"operator-{len(self.operators)}.log",
            args=tuple(args),
        )
        self.operators.append(proc)
        return proc.start()

    def state(self, bot: str) -> dict[str, Any] | None:
        return read_state(self.core, self.namespace, bot)

    def wait_trades(self, bot: str, trades: int = 1, timeout: float = 60) -> dict[str, Any]:
        def traded() -> dict[str, Any] | None:
            state = self.state(bot)
            return state if state and state["stats"]["totalTrades"] >= trades else None

        return dict(kube.wait_for(traded, timeout=timeout, message=f"{bot} to trade"))

    def bot_processes(self) -> list[procfs.ProcessIdentity]:
        return self.census.count()


@pytest.fixture
def node_loss(
    cluster: LocalCluster,
    api_client: client.ApiClient,
    namespace: str,
    apply_crds: list[str],
    tmp_path: Path,
) -> Iterator[NodeLoss]:
    loss = NodeLoss(cluster, api_client, namespace, tmp_path)
    loss.agent.start(loss.coord)
    loss.census.start()
    yield loss
    loss.census.stop()
    for operator in loss.operators:
        operator.stop()
    loss.agent.stop()
    with contextlib.suppress(client.ApiException):
        for pod in loss.core.list_namespaced_pod(namespace).items:
            loss.core.delete_namespaced_pod(pod.metadata.name, namespace, grace_period_seconds=0)
    for identity in loss.census.count():
        with contextlib.suppress(ProcessLookupError):
            os.kill(identity.pid, signal.SIGKILL)
    assert loss.census.max_alive <= 1, f"two processes traded for one bot ({loss.census.seen})"


def start_operator(loss: NodeLoss) -> OperatorProcess:
    return loss.start_operator()


def bot_pods(loss: NodeLoss) -> list[client.V1Pod]:
    return [
        p
        for p in loss.core.list_namespaced_pod(
            loss.namespace, label_selector=f"{LABEL_BOT}=bot-a"
        ).items
        if not p.metadata.deletion_timestamp
    ]


def bot_pod(loss: NodeLoss) -> client.V1Pod:
    pods = bot_pods(loss)
    assert len(pods) == 1, [p.metadata.name for p in pods]
    return pods[0]


def test_a_killed_node_agent_with_live_bots_is_adopted_not_replaced(node_loss: NodeLoss) -> None:
    loss = node_loss
    start_operator(loss)
    loss.bots.create("bot-a", trading_spec())
    loss.wait_trades("bot-a")
    (process,) = loss.bot_processes()
    pod_uid = bot_pod(loss).metadata.uid
    loss.agent.kill()
    # Long past the node's Lease (4 s) and the operator's margin: the node reads as lost, but
    # the bot still renews its own Lease, so nothing is replaced.
    time.sleep(15)
    assert bot_pod(loss).metadata.uid == pod_uid
    assert loss.bot_processes() == [process]
    trades = loss.state("bot-a")["stats"]["totalTrades"]  # type: ignore[index]
    loss.agent.start(loss.coord)
    loss.wait_trades("bot-a", trades=trades + 1)
    assert loss.bot_processes() == [process]  # adopted: the same process, never a second
    assert bot_pod(loss).metadata.uid == pod_uid
    assert "NodeLost" not in loss.bots.reasons("bot-a")


def test_a_frozen_bot_on_a_lost_node_is_replaced_and_the_woken_orphan_never_orders(
    node_loss: NodeLoss,
) -> None:
    loss = node_loss
    start_operator(loss)
    loss.bots.create("bot-a", trading_spec())
    loss.wait_trades("bot-a")
    (old,) = loss.bot_processes()
    old_pod = bot_pod(loss).metadata.uid
    loss.agent.kill()
    os.kill(old.pid, signal.SIGSTOP)  # a partitioned node: the process lives, frozen
    try:
        loss.bots.wait_reason("bot-a", "NodeLost", timeout=60)
        kube.wait_for(
            lambda: [p.metadata.uid for p in bot_pods(loss)] not in ([], [old_pod]),
            timeout=30,
            message="the replacement pod",
        )
        frozen_state = loss.state("bot-a")
    finally:
        os.kill(old.pid, signal.SIGCONT)
    woke = now()
    # The old process finds its Lease gone: it orders nothing, writes nothing, and ends.
    kube.wait_for(lambda: old not in loss.bot_processes(), timeout=30, message="the orphan ends")
    assert loss.state("bot-a") == frozen_state
    # The node comes back and runs the replacement, which trades on the same ledger.
    loss.agent.start(loss.coord)
    state = loss.wait_trades(
        "bot-a", trades=(frozen_state or {"stats": {"totalTrades": 0}})["stats"]["totalTrades"] + 1
    )
    assert state["checkpointSeq"] > (frozen_state or {}).get("checkpointSeq", 0)
    assert all(f["time"] for f in fills_after(state, woke))
    (new,) = loss.bot_processes()
    assert new != old
