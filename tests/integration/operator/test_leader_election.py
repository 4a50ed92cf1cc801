"""Shards and leader election on the real API server: two shards of two replicas each,
operators as separate processes. Every bot is handled by the leader of its shard alone; a
leader SIGKILLed mid-restart leaves the restart to its standby, and a leader frozen past its
Lease finds, when it runs again, that it must exit without acting. A census of pods watches
throughout: never two pods for one bot."""

from __future__ import annotations

import copy
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from kubernetes import client

from tests import kube
from tests.integration.conftest import SidecarProcess
from tests.integration.invalid_specs import VALID_BASE_SPEC
from tests.integration.operator.harness import Bots, Kubelet, OperatorProcess, PodCensus
from tradingbot_api.audit_http import OPERATOR_AUDIENCE
from tradingbot_api.constants import FINALIZER
from tradingbot_audit import AuditFilter, query, verify_log
from tradingbot_operator.leadership import EXIT_LEADERSHIP_LOST
from tradingbot_operator.recorder import event_name_for_key
from tradingbot_operator.sharding import Shard

# CI runs 24; the 200 with TRADINGBOT_TEST_SHARD_BOTS=200 (a few minutes on 2 cores).
BOTS = int(os.environ.get("TRADINGBOT_TEST_SHARD_BOTS", "24"))
RECONCILES = "tradingbot_operator_reconcile_duration_seconds_count"


def replicas(
    start_operator: Callable[..., OperatorProcess], namespace: str, shards: int
) -> dict[str, list[OperatorProcess]]:
    """Two replicas per shard, named by shard and replica (the Lease holder's prefix)."""
    found: dict[str, list[OperatorProcess]] = {}
    for index in range(shards):
        for number in range(2):
            shard = Shard(index, shards)
            found.setdefault(str(shard), []).append(
                replica(start_operator, namespace, f"op-s{index}-r{number}", shard)
            )
    return found


def replica(
    start_operator: Callable[..., OperatorProcess],
    namespace: str,
    pod_name: str,
    shard: Shard,
    **env: str,
) -> OperatorProcess:
    return start_operator(
        POD_NAME=pod_name,
        TRADINGBOT_OPERATOR_LEADER_ELECTION="true",
        TRADINGBOT_OPERATOR_LEADER_NAMESPACE=namespace,
        TRADINGBOT_OPERATOR_SHARD=str(shard) if shard.count > 1 else "",
        **env,
    )


def holder(api_client: client.ApiClient, namespace: str, shard: Shard) -> str:
    lease = client.CoordinationV1Api(api_client).read_namespaced_lease(shard.lease_name, namespace)
    return str(lease.spec.holder_identity or "")


def leader_of(
    api_client: client.ApiClient, namespace: str, shard: Shard, procs: list[OperatorProcess]
) -> tuple[OperatorProcess, OperatorProcess]:
    """(leader, standby) once the shard's Lease names one of them."""

    def found() -> tuple[OperatorProcess, OperatorProcess] | None:
        try:
            who = holder(api_client, namespace, shard)
        except client.ApiException:
            return None
        for proc in procs:
            if who.startswith(f"{proc.pod_name}_"):
                return proc, next(p for p in procs if p is not proc)
        return None

    return kube.wait_for(found, timeout=30, message=f"a leader for shard {shard}")


def restarted(bots: Bots, name: str, old_hash: str) -> dict:
    """The bot's status once it runs a config other than `old_hash`."""

    def done() -> dict | None:
        status = bots.wait_running_with(name, timeout=90)
        return status if status["configHash"] != old_hash else None

    return dict(kube.wait_for(done, timeout=90, message=f"{name} restarted"))


def spec(max_open: int = 3) -> dict:
    body = copy.deepcopy(VALID_BASE_SPEC)
    body["restartPolicy"]["coalesceSeconds"] = 0
    body["risk"]["maxOpenPositions"] = max_open
    return body


def test_two_shards_of_two_replicas_hand_over_a_restart_with_never_two_pods(
    api_client: client.ApiClient,
    namespace: str,
    bots: Bots,
    start_operator: Callable[..., OperatorProcess],
    kubelet: Kubelet,
    census: PodCensus,
) -> None:
    # The stand-in kubelet LISTs every pod each poll: at 200 bots its default 20 lists/s would
    # keep the API server busier than the four operators together.
    kubelet.poll = max(kubelet.poll, BOTS / 400)
    procs = replicas(start_operator, namespace, shards=2)
    shards = [Shard(0, 2), Shard(1, 2)]
    names = [f"bot-{i}" for i in range(BOTS)]
    for name in names:
        bots.create(name, spec())
    first = {name: bots.wait_running_with(name, timeout=300) for name in names}
    leaders = {str(s): leader_of(api_client, namespace, s, procs[str(s)]) for s in shards}
    # Only the leader of a bot's shard wrote its status: its restarts are its own.
    for shard in shards:
        leader, standby = leaders[str(shard)]
        owned = [n for n in names if shard.owns(namespace, n)]
        assert owned, "the hash gives each shard some of the bots"
        assert leader.metric(RECONCILES) > 0
        assert standby.metric(RECONCILES) == 0

    for name in names:
        bots.patch(name, {"spec": {"risk": {"maxOpenPositions": 4}}})
    time.sleep(0.3)  # mid-restart for some bots of shard 0
    doomed, standby = leaders[str(shards[0])]
    doomed.kill()

    for name in names:
        status = restarted(bots, name, first[name]["configHash"])
        assert status["restarts"]["total"] == 1, (name, status["restarts"])
        assert len(bots.pods(name)) == 1
    assert max(census.max_per_bot.values()) == 1, census.max_per_bot
    assert holder(api_client, namespace, shards[0]).startswith(f"{standby.pod_name}_")
    assert standby.metric(RECONCILES) > 0

    # Each bot carries its own shard's finalizer and no other: the shards do not take each
    # other's away (which kopf does with one shared name, several times a second).
    before = {name: bots.get(name)["metadata"]["resourceVersion"] for name in names[:5]}
    time.sleep(3)
    for name in names:
        owner = next(s for s in shards if s.owns(namespace, name))
        meta = bots.get(name)["metadata"]
        assert meta.get("finalizers") == [owner.finalizer(FINALIZER)]
        # kopf keeps no copy of the spec on the bot (no diff base: nothing reacts to one).
        kopf_keys = ("last-handled-configuration", "kopf-managed")
        assert not [a for a in meta.get("annotations") or {} if a.endswith(kopf_keys)], meta
    assert {n: bots.get(n)["metadata"]["resourceVersion"] for n in before} == before
    # A finalizer an earlier shard layout left does not hold a deletion up.
    victim = names[0]
    owner = next(s for s in shards if s.owns(namespace, victim))
    bots.patch(victim, {"metadata": {"finalizers": [owner.finalizer(FINALIZER), FINALIZER]}})
    bots.delete(victim)

    def gone() -> bool:
        try:
            bots.get(victim)
        except client.ApiException as err:
            return err.status == 404
        return False

    kube.wait_for(gone, timeout=60, message=f"{victim} deleted")


def test_a_stopped_leader_releases_and_a_frozen_one_exits_without_acting(
    api_client: client.ApiClient,
    namespace: str,
    bots: Bots,
    start_operator: Callable[..., OperatorProcess],
    kubelet: Kubelet,
    census: PodCensus,
) -> None:
    shard = Shard()
    procs = replicas(start_operator, namespace, shards=1)[str(shard)]
    bots.create("bot-a", spec())
    bots.wait_running_with("bot-a", timeout=60)
    leader, standby = leader_of(api_client, namespace, shard, procs)

    # A graceful stop gives the Lease up: the standby need not wait for it to expire.
    leader.stop()
    assert leader.exited() is not None
    who = holder(api_client, namespace, shard)
    assert who == "" or who.startswith(f"{standby.pod_name}_"), who
    leader, standby = leader_of(api_client, namespace, shard, procs)
    assert leader.pod_name == "op-s0-r1"

    # Frozen past the Lease: the other replica (started again) takes over and restarts the bot.
    replica(start_operator, namespace, "op-s0-r2", shard)
    assert leader.proc is not None
    leader.proc.send_signal(signal.SIGSTOP)
    try:
        kube.wait_for(
            lambda: holder(api_client, namespace, shard).startswith("op-s0-r2_"),
            timeout=40,
            message="the fresh replica to take the Lease of the frozen one",
        )
        before = bots.status("bot-a")
        bots.patch("bot-a", {"spec": {"risk": {"maxOpenPositions": 5}}})
        restarted(bots, "bot-a", before["configHash"])
    finally:
        leader.proc.send_signal(signal.SIGCONT)
    assert leader.wait_exit(timeout=30) == EXIT_LEADERSHIP_LOST
    assert "leader lease" in leader.logs()
    assert len(bots.pods("bot-a")) == 1
    assert max(census.max_per_bot.values()) == 1, census.max_per_bot


def test_audit_events_reach_the_one_writer_exactly_once_across_two_leader_changes(
    api_client: client.ApiClient,
    namespace: str,
    bots: Bots,
    start_operator: Callable[..., OperatorProcess],
    start_sidecar: Callable[..., SidecarProcess],
    kubelet: Kubelet,
    census: PodCensus,
    tmp_path: Path,
) -> None:
    """As the chart runs it: one audit writer, every replica posting to its main listener
    with a token for the sidecar's audience. The first leader is SIGKILLed mid-restart; the
    second dies (a failpoint) between the status write that carries audit events and their
    delivery; the third delivers them. Nothing lost, nothing twice, one chain."""
    account = "operator-audit"
    token = kube.service_account_token(
        api_client, namespace, account, audiences=[OPERATOR_AUDIENCE]
    )
    token_file = tmp_path / "audit.token"
    token_file.write_text(token)
    log_dir = tmp_path / "audit"
    sidecar = start_sidecar(log_dir, [f"system:serviceaccount:{namespace}:{account}"])
    audit = {
        "TRADINGBOT_OPERATOR_AUDIT_URL": sidecar.api_url,
        "TRADINGBOT_OPERATOR_AUDIT_TOKEN_FILE": str(token_file),
    }
    shard = Shard()
    first = replica(start_operator, namespace, "op-r0", shard, **audit)
    kube.wait_for(
        lambda: holder(api_client, namespace, shard).startswith("op-r0_"),
        timeout=30,
        message="the first replica to lead",
    )
    second = replica(
        start_operator,
        namespace,
        "op-r1",
        shard,
        TRADINGBOT_OPERATOR_FAILPOINT="before-audit-delivery",
        **audit,
    )
    names = [f"bot-{i}" for i in range(6)]
    for name in names:
        bots.create(name, spec())
    for name in names:
        bots.wait_running_with(name, timeout=90)

    for name in names:
        bots.patch(name, {"spec": {"risk": {"maxOpenPositions": 4}}})
    time.sleep(0.3)
    first.kill()
    kube.wait_for(
        lambda: holder(api_client, namespace, shard).startswith("op-r1_"),
        timeout=40,
        message="the standby to take over",
    )
    third = replica(start_operator, namespace, "op-r2", shard, **audit)
    # The new leader has something to record for every bot: it dies before delivering it.
    for name in names:
        bots.patch(name, {"spec": {"risk": {"maxOpenPositions": 5}}})
    assert second.wait_exit(timeout=60) == -signal.SIGKILL, second.logs()

    def settled(name: str) -> bool:
        status = bots.status(name)
        return (
            status.get("phase") == "Running"
            and not status.get("auditOutbox")
            and not status.get("pendingAction")
            and status.get("configHash") == status.get("desiredConfigHash")
        )

    for name in names:
        kube.wait_for(lambda n=name: settled(n), timeout=120, message=f"{name} settled")
    assert holder(api_client, namespace, shard).startswith("op-r2_")
    third.stop()
    assert sidecar.stop() == 0

    records = list(query(log_dir, AuditFilter.build(), limit=None))
    keys = [r["dedup_key"] for r in records]
    assert len(keys) == len(set(keys)), "an event was written twice"
    assert verify_log(log_dir).ok
    for name in names:
        bot = bots.get(name)
        mine = [r for r in records if r["target"] == name]
        completed = [r for r in mine if r["action"] == "RestartCompleted"]
        assert len(completed) == bot["status"]["restarts"]["total"] >= 1, (name, completed)
        # Every Event the leaders posted (they share the dedup keys) is in the log.
        logged = {event_name_for_key(name, r["dedup_key"]) for r in mine}
        posted = {e.metadata.name for e in bots.events(name)}
        assert posted <= logged, (name, posted - logged)
        assert len(bots.pods(name)) == 1
    assert max(census.max_per_bot.values()) == 1, census.max_per_bot
