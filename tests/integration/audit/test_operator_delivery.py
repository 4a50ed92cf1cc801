"""Operator -> audit sidecar delivery survives SIGKILL of either side: nothing lost, no twins."""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from kubernetes import client

from tests import kube
from tests.integration.conftest import SidecarProcess
from tests.integration.operator.harness import Bots, Kubelet, OperatorProcess
from tests.integration.operator.test_restarts import base_spec
from tradingbot_audit import AuditFilter, query, verify_log
from tradingbot_operator.recorder import event_name_for_key


def test_every_action_reaches_the_log_exactly_once_through_random_kills(
    start_sidecar: Callable[..., SidecarProcess],
    kubeconfig: Path,
    namespace: str,
    apply_crds: list[str],
    api_client: client.ApiClient,
    tmp_path: Path,
) -> None:
    log_dir = tmp_path / "audit"
    sidecar = start_sidecar(log_dir)
    env = {"TRADINGBOT_OPERATOR_AUDIT_URL": sidecar.ingest_url}
    operators: list[OperatorProcess] = []

    def start_operator() -> OperatorProcess:
        proc = OperatorProcess(kubeconfig, namespace, tmp_path / f"op-{len(operators)}.log")
        proc.extra_env = env
        operators.append(proc)
        return proc.start()

    bots = Bots(api_client, namespace)
    kubelet = Kubelet(api_client, namespace)
    kubelet.start()
    state = {"operator": start_operator(), "sidecar": sidecar}
    stop = threading.Event()
    rng = random.Random(7)
    kills = Counter[str]()
    # The victims come in a fixed order (the sidecar early) and only the pauses are random:
    # on a slow machine few steps fit in the workload, and each must count.
    victims = itertools.cycle(["operator", "sidecar", "operator", "operator", "sidecar"])

    def enough_chaos() -> bool:
        return kills["operator"] >= 3 and kills["sidecar"] >= 1

    def chaos() -> None:
        while not stop.wait(rng.uniform(0.4, 1.5)):
            victim = next(victims)
            if victim == "operator":
                state["operator"].kill()
                state["operator"] = start_operator()
            else:
                state["sidecar"].kill()
                state["sidecar"] = start_sidecar(log_dir)
                # The new sidecar listens on new ports: the operator learns it on restart.
                env["TRADINGBOT_OPERATOR_AUDIT_URL"] = state["sidecar"].ingest_url
                state["operator"].kill()
                state["operator"] = start_operator()
            kills[victim] += 1

    try:
        bots.create("bot-a", base_spec(coalesceSeconds=0, maxRestartsPerHour=100))
        bots.wait_running_with("bot-a", timeout=60)
        monkey = threading.Thread(target=chaos, daemon=True)
        monkey.start()
        # At least eight changes, and more until the chaos did its minimum (bounded).
        for i in range(40):
            if i >= 8 and enough_chaos():
                break
            bots.patch("bot-a", {"spec": {"risk": {"maxOpenPositions": 3 + i}}})
            time.sleep(1.2)
        bots.annotate("bot-a", **{"trading.r7.dev/halt": "true"})
        time.sleep(1.5)
        bots.annotate("bot-a", **{"trading.r7.dev/halt": None})
        time.sleep(1.5)
        stop.set()
        monkey.join(timeout=60)
        kube.wait_for(
            lambda: (
                (s := bots.status("bot-a")).get("phase") == "Running"
                and not s.get("auditOutbox")
                and not s.get("pendingAction")
                and s.get("configHash") == s.get("desiredConfigHash")
            ),
            timeout=90,
            message="everything settled and delivered",
        )
        time.sleep(2)
    finally:
        stop.set()
        for proc in operators:
            proc.stop()
        kubelet.stop()
        state["sidecar"].stop()

    assert enough_chaos(), kills
    records = list(query(log_dir, AuditFilter.build(), limit=None))
    keys = [r["dedup_key"] for r in records]
    assert len(keys) == len(set(keys)), "an event was written twice"
    assert verify_log(log_dir).ok
    # Nothing lost: every Event the operator posted (they share the dedup keys) is in the
    # log, and the log agrees with the bot's own restart counter.
    bot = bots.get("bot-a")
    logged = {event_name_for_key("bot-a", r["dedup_key"]) for r in records}
    posted = {e.metadata.name for e in bots.events("bot-a")}
    assert posted <= logged, posted - logged
    completed = [r for r in records if r["action"] == "RestartCompleted"]
    assert len(completed) == bot["status"]["restarts"]["total"] >= 1
    assert any(r["action"] == "Halted" for r in records)
