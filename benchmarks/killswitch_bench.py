"""The kill switch with the operator dead, and the takeover after a node is lost.

- halt: one real paper bot on a process node of its own, the operator SIGKILLed, the halt
  annotation set and cleared N times. Measured from the moment the write was sent to the
  bot's own report (`status.killSwitch.observedAt`, the bot's clock on the same machine),
  and whether any fill came after the write.
- node loss: the node agent SIGKILLed and the bot process SIGSTOPped (a partitioned node),
  the operator running. Measured from the kill to the operator's NodeLost removal of the pod
  and to the replacement pod's creation; this is bounded by the node Lease (4 s here), the
  operator's skew margin (5 s) and the bot's own Lease (6 s here), which must all expire.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from kubernetes import client, config

from benchmarks.report import summarize
from localkube import binaries, product
from localkube.cluster import LocalCluster
from tests.e2e.harness import FAST_BOT, read_state
from tests.e2e.node_agent import CENSUS_VAR, NodeAgent, ProcessCensus, new_marker
from tests.integration.operator.harness import Bots, OperatorProcess
from tradingbot_api.constants import ANNOTATION_HALT, LABEL_BOT
from tradingbot_api.times import parse_time

NAMESPACE = "bench-kill"
HALTS = 10
LOSSES = 3
SPEC: dict[str, Any] = {
    "profile": "volatile",
    "exchange": {"id": "binance", "mode": "paper"},
    "symbols": ["BTC/USDT", "ETH/USDT"],
    "strategy": {"params": {"lookback": 3, "entryThresholdPct": 0.05, "exitThresholdPct": -0.05}},
    "risk": {"maxOpenPositions": 2, "stopLossPct": 0.2, "takeProfitPct": 0.2},
    "restartPolicy": {"coalesceSeconds": 0, "gracePeriodSeconds": 5, "maxRestartsPerHour": 100},
}


def _wait(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise TimeoutError(what)


def _pods(core: client.CoreV1Api) -> list[client.V1Pod]:
    return [
        p
        for p in core.list_namespaced_pod(NAMESPACE, label_selector=f"{LABEL_BOT}=bench").items
        if not p.metadata.deletion_timestamp
    ]


STEADY_SECONDS = 60


def _status_writes(bots: Bots, seconds: float) -> int:
    """Writes of the bot object (any writer) seen on a watch during `seconds`."""
    from kubernetes import watch

    count = 0
    deadline = time.monotonic() + seconds
    stream = watch.Watch()
    version = bots.get("bench")["metadata"]["resourceVersion"]
    while time.monotonic() < deadline:
        for event in stream.stream(
            bots.custom.list_namespaced_custom_object,
            "trading.r7.dev",
            "v1alpha1",
            NAMESPACE,
            "tradingbots",
            field_selector="metadata.name=bench",
            resource_version=version,
            timeout_seconds=max(1, int(deadline - time.monotonic())),
        ):
            if event["type"] == "MODIFIED":
                count += 1
            version = event["object"]["metadata"]["resourceVersion"]
            if time.monotonic() >= deadline:
                break
    return count


def run() -> str:
    binaries.ensure()
    halts: list[float] = []
    late_fills = 0
    writes = 0
    removed: list[float] = []
    replaced: list[float] = []
    with tempfile.TemporaryDirectory() as tmp, LocalCluster(Path(tmp) / "kube") as cluster:
        api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
        core = client.CoreV1Api(api)
        coord = client.CoordinationV1Api(api)
        product.install_crds(api)
        product.ensure_namespace(api, NAMESPACE)
        product.install_admission_policies(api)
        kubeconfig = product.operator_kubeconfig(cluster, api, Path(tmp) / "op.kubeconfig")
        marker = new_marker()
        agent = NodeAgent(cluster.data_dir, "bench-node", Path(tmp) / "node", NAMESPACE)
        agent.start(coord)
        census = ProcessCensus(marker)
        bot_env = [a for pair in FAST_BOT for a in ("--bot-env", pair)]
        bot_env += ["--bot-env", f"{CENSUS_VAR}={marker}"]

        def operator() -> OperatorProcess:
            return OperatorProcess(
                kubeconfig, NAMESPACE, Path(tmp) / f"op-{time.time()}.log", args=tuple(bot_env)
            ).start()

        bots = Bots(api, NAMESPACE)
        op = operator()
        try:
            bots.create("bench", dict(SPEC))
            bots.wait_running_with("bench", timeout=120)
            # -- status writes at steady state (trading, nothing else changing) -------------
            time.sleep(5)
            writes = _status_writes(bots, STEADY_SECONDS)
            # -- halts with the operator dead --------------------------------------------------
            op.kill()
            for _ in range(HALTS):
                sent = dt.datetime.now(dt.UTC)
                bots.annotate("bench", **{ANNOTATION_HALT: "true"})
                report = _wait(
                    lambda: (
                        (k := bots.status("bench").get("killSwitch") or {}).get("mode") == "true"
                        and k.get("observedAt")
                    ),
                    30,
                    "the bot's halt report",
                )
                seen = parse_time(report)
                assert seen is not None
                halts.append(max((seen - sent).total_seconds(), 0.0))
                time.sleep(2)
                state = read_state(core, NAMESPACE, "bench") or {}
                late = [
                    f
                    for f in state.get("journal") or []
                    if dt.datetime.fromisoformat(f["time"]) > sent + dt.timedelta(seconds=1)
                ]
                late_fills += len(late)
                bots.annotate("bench", **{ANNOTATION_HALT: None})
                _wait(
                    lambda: not (bots.status("bench").get("killSwitch") or {}).get("mode"),
                    30,
                    "the bot trading again",
                )
                time.sleep(1)
            # -- node loss ------------------------------------------------------------------
            op = operator()
            census.start()
            for _ in range(LOSSES):
                bots.wait_running_with("bench", timeout=120)
                (old,) = census.count()
                old_uid = _pods(core)[0].metadata.uid
                killed = time.monotonic()
                agent.kill()
                os.kill(old.pid, signal.SIGSTOP)
                _wait(
                    lambda u=old_uid: all(p.metadata.uid != u for p in _pods(core)),
                    120,
                    "the lost pod removed",
                )
                removed.append(time.monotonic() - killed)
                _wait(lambda u=old_uid: _pods(core), 60, "a replacement pod")
                replaced.append(time.monotonic() - killed)
                os.kill(old.pid, signal.SIGCONT)  # it finds its Lease gone and ends
                _wait(lambda o=old: o not in census.count(), 60, "the orphan ends")
                agent.start(coord)
            census.stop()
        finally:
            op.stop()
            agent.stop()
            for identity in census.count():
                os.kill(identity.pid, signal.SIGKILL)
    h, r, p = summarize(halts), summarize(removed), summarize(replaced)
    return "\n".join(
        [
            "| measure | median | p95 | max | runs |",
            "|---|---|---|---|---|",
            f"| halt, operator dead: write sent to the bot's own report | {h['median']:.3f} s | "
            f"{h['p95']:.3f} s | {h['max']:.3f} s | {len(halts)} |",
            f"| node lost (agent killed, bot frozen) to the pod removed (NodeLost) | "
            f"{r['median']:.1f} s | {r['p95']:.1f} s | {r['max']:.1f} s | {len(removed)} |",
            f"| node lost to the replacement pod created | {p['median']:.1f} s | "
            f"{p['p95']:.1f} s | {p['max']:.1f} s | {len(replaced)} |",
            "",
            f"Status writes of a trading bot at steady state: {writes} in {STEADY_SECONDS} s "
            "(all writers; the bot writes at most every 10 s).",
            "",
            f"Fills later than 1 s after a halt was written: {late_fills} (over {len(halts)} "
            "halts with no operator running). The node-loss times are bounded below by the "
            "node Lease (4 s), the operator's skew margin (5 s) and the bot's Lease (6 s, "
            "`LEASE_DURATION_SECONDS`), all of which must expire before a replacement is "
            "safe; the operator polls node Leases every 2 s.",
        ]
    )
