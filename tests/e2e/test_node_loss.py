"""Node loss on the process node: the agent SIGKILLed, its containers kept, a restarted agent
adopting instead of duplicating, and no pod process outliving its cluster."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from localkube import procfs
from localkube.cluster import ClusterState, LocalCluster
from localkube.heartbeat import NODE_LEASE_NAMESPACE, lease_expired
from localkube.processes import pid_runs
from localkube.procfs import ProcessIdentity
from tests import kube
from tests.e2e.node_agent import (
    NodeAgent,
    ProcessCensus,
    census_pod,
    container_pid,
    new_marker,
    read_lease,
    wait_gone,
)

GRACE = 3


@pytest.fixture
def coord(api_client: client.ApiClient) -> client.CoordinationV1Api:
    return client.CoordinationV1Api(api_client)


@pytest.fixture
def agent(
    cluster: LocalCluster,
    namespace: str,
    api_client: client.ApiClient,
    coord: client.CoordinationV1Api,
    tmp_path: Path,
) -> Iterator[NodeAgent]:
    """A node agent of its own for this test's namespace (not started yet)."""
    node = NodeAgent(cluster.data_dir, f"node-{namespace}", tmp_path / "node", namespace)
    yield node
    node.stop()
    core = client.CoreV1Api(api_client)
    with contextlib.suppress(client.ApiException):
        for pod in core.list_namespaced_pod(namespace).items:
            core.delete_namespaced_pod(pod.metadata.name, namespace, grace_period_seconds=0)
    with contextlib.suppress(client.ApiException):
        coord.delete_namespaced_lease(node.name, NODE_LEASE_NAMESPACE)
    with contextlib.suppress(client.ApiException):
        core.delete_node(node.name)


def reported_after(
    core: client.CoreV1Api, namespace: str, name: str, since: dt.datetime, timeout: float = 30
) -> client.V1Pod:
    """The pod once Ready, as reported after `since` (not a stale status of a dead agent)."""

    def ready() -> client.V1Pod | None:
        pod = core.read_namespaced_pod(name, namespace)
        ready = next((c for c in pod.status.conditions or [] if c.type == "Ready"), None)
        if ready is None or ready.status != "True" or ready.last_transition_time is None:
            return None
        return pod if ready.last_transition_time >= since.replace(microsecond=0) else None

    return kube.wait_for(ready, timeout=timeout, message=f"pod {name} ready")


def running_pod(
    core: client.CoreV1Api, namespace: str, name: str, since: dt.datetime
) -> tuple[client.V1Pod, ProcessIdentity]:
    pod = reported_after(core, namespace, name, since)
    pid = container_pid(pod)
    assert pid is not None
    identity = procfs.identify(pid)
    assert identity is not None and procfs.is_running(identity)
    return pod, identity


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def test_the_node_lease_is_renewed_until_the_agent_dies(
    agent: NodeAgent, coord: client.CoordinationV1Api, core_api: client.CoreV1Api
) -> None:
    agent.start(coord)
    lease = read_lease(coord, agent.name)
    assert lease.spec.holder_identity == agent.name
    assert lease.spec.lease_duration_seconds == agent.lease_seconds
    assert lease.metadata.owner_references[0].kind == "Node"
    first = lease.spec.renew_time
    kube.wait_for(
        lambda: read_lease(coord, agent.name).spec.renew_time > first,
        timeout=agent.lease_seconds,  # renewed every quarter of the duration
        message="the lease renewed",
    )
    node = core_api.read_node(agent.name)
    assert {c.type: c.status for c in node.status.conditions}["Ready"] == "True"
    assert not lease_expired(read_lease(coord, agent.name).spec.renew_time, 4, now())

    agent.kill()
    last = read_lease(coord, agent.name).spec.renew_time
    time.sleep(agent.lease_seconds + 0.5)
    lease = read_lease(coord, agent.name)
    assert lease.spec.renew_time == last  # nobody renews it any more
    assert lease_expired(lease.spec.renew_time, lease.spec.lease_duration_seconds, now())


def test_a_restarted_agent_adopts_the_running_process_and_deletion_still_ends_it(
    agent: NodeAgent,
    coord: client.CoordinationV1Api,
    core_api: client.CoreV1Api,
    namespace: str,
) -> None:
    marker = new_marker()
    with ProcessCensus(marker) as census:
        agent.start(coord)
        core_api.create_namespaced_pod(namespace, census_pod("kept", marker, grace=GRACE))
        pod, process = running_pod(core_api, namespace, "kept", agent.started_at)

        agent.kill()
        time.sleep(1.2)  # well past the dead agent's last status stamp (second precision)
        assert procfs.is_running(process), "a node agent's death must not kill its containers"

        agent.start(coord)
        adopted, same = running_pod(core_api, namespace, "kept", agent.started_at)
        assert same == process, "the restarted agent must adopt, not start another"
        status = adopted.status.container_statuses[0]
        assert status.restart_count == pod.status.container_statuses[0].restart_count == 0
        assert "adopted container" in agent.logs()
        time.sleep(1.0)  # a few sync rounds: still the one process
        assert census.count() == [process]

        started = time.monotonic()
        core_api.delete_namespaced_pod("kept", namespace)
        wait_gone(process, GRACE + 2, "the adopted process to end")
        kube.wait_for(
            lambda: not core_api.list_namespaced_pod(namespace).items,
            timeout=GRACE + 5,
            message="the pod object removed",
        )
        assert time.monotonic() - started < GRACE + 2
    assert census.max_alive == 1
    assert census.seen == {process}


def test_a_process_lost_with_the_agent_is_restarted_once_and_counted(
    agent: NodeAgent,
    coord: client.CoordinationV1Api,
    core_api: client.CoreV1Api,
    namespace: str,
) -> None:
    marker = new_marker()
    with ProcessCensus(marker) as census:
        agent.start(coord)
        core_api.create_namespaced_pod(namespace, census_pod("lost", marker, grace=GRACE))
        _, process = running_pod(core_api, namespace, "lost", agent.started_at)

        agent.kill()
        signal_process(process, signal.SIGKILL)
        wait_gone(process, 5, "the container to die")
        time.sleep(1.2)

        agent.start(coord)
        pod, successor = running_pod(core_api, namespace, "lost", agent.started_at)
        assert successor != process
        assert pod.status.container_statuses[0].restart_count == 1
        last = pod.status.container_statuses[0].last_state.terminated
        assert last is not None and last.exit_code == 137
        time.sleep(2.0)  # no second start follows
        assert census.count() == [successor]
        pod = core_api.read_namespaced_pod("lost", namespace)
        assert pod.status.container_statuses[0].restart_count == 1
    assert census.max_alive == 1
    assert census.seen == {process, successor}


def test_an_orphan_whose_pod_was_force_deleted_is_terminated_by_the_restarted_agent(
    agent: NodeAgent,
    coord: client.CoordinationV1Api,
    core_api: client.CoreV1Api,
    namespace: str,
) -> None:
    marker = new_marker()
    with ProcessCensus(marker) as census:
        agent.start(coord)
        core_api.create_namespaced_pod(namespace, census_pod("orphan", marker, grace=GRACE))
        pod, process = running_pod(core_api, namespace, "orphan", agent.started_at)

        agent.kill()
        core_api.delete_namespaced_pod("orphan", namespace, grace_period_seconds=0)
        kube.wait_for(
            lambda: not core_api.list_namespaced_pod(namespace).items,
            timeout=10,
            message="the pod force-deleted",
        )
        time.sleep(0.5)
        assert procfs.is_running(process)  # nobody left to end it, until an agent returns

        agent.start(coord)
        took = wait_gone(process, GRACE + 5, "the orphan to be terminated")
        assert took < GRACE + 3
        kube.wait_for(
            lambda: not (agent.node_dir / "containers" / pod.metadata.uid).exists(),
            timeout=5,
            message="the orphan's records removed",
        )
        assert census.count() == []
    assert census.seen == {process}


def signal_process(identity: ProcessIdentity, sig: int) -> None:
    assert procfs.is_running(identity)
    os.kill(identity.pid, sig)


def test_stopping_the_cluster_ends_every_pod_process_including_adopted_ones(
    tmp_path: Path,
) -> None:
    """`LocalCluster.stop` (also `python -m localkube down`) with a node agent that adopted
    a process from a killed predecessor, and one that started a process itself."""
    marker = new_marker()
    with ProcessCensus(marker) as census:
        cluster = LocalCluster(tmp_path / "cluster", die_with_parent=True).start()
        try:
            api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
            core, coord = client.CoreV1Api(api), client.CoordinationV1Api(api)
            namespace = kube.create_namespace(api)
            first = NodeAgent(
                cluster.data_dir, "localkube-node", cluster.data_dir / "node", namespace
            )
            first.start(coord)
            core.create_namespaced_pod(namespace, census_pod("adopted", marker, grace=GRACE))
            _, adopted = running_pod(core, namespace, "adopted", first.started_at)
            first.kill()
            time.sleep(1.2)

            since = now()
            cluster.start_node_process()  # the agent `up --node` runs, recorded for `down`
            reported_after(core, namespace, "adopted", since)
            core.create_namespaced_pod(namespace, census_pod("fresh", marker, grace=GRACE))
            _, fresh = running_pod(core, namespace, "fresh", since)
            assert sorted(census.count(), key=lambda p: p.pid) == sorted(
                [adopted, fresh], key=lambda p: p.pid
            )
            api.close()
        finally:
            cluster.stop()
        wait_gone(adopted, GRACE + 5, "the adopted process to end")
        wait_gone(fresh, GRACE + 5, "the fresh process to end")
        assert census.count() == []
    assert census.max_alive == 2


# The owner of a cluster (a test run, `make run`), in miniature: it starts a cluster whose
# processes die with it and prints where it lives, then waits to be killed.
OWNER = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from localkube.cluster import ClusterState, LocalCluster
    cluster = LocalCluster(Path(sys.argv[1]), die_with_parent=True).start()
    print(json.dumps({"kubeconfig": str(cluster.kubeconfig)}), flush=True)
    time.sleep(300)
""")


def test_killing_the_clusters_owner_ends_pod_processes_the_agent_left_behind(
    tmp_path: Path,
) -> None:
    """A test run (or `make run`) SIGKILLed after its node agent died: the API server dies
    with it, and with the API server every pod process, adopted or not."""
    marker = new_marker()
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(tmp_path / "cluster")],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    agent: NodeAgent | None = None
    try:
        assert owner.stdout is not None
        kubeconfig = json.loads(owner.stdout.readline())["kubeconfig"]
        api = config.new_client_from_config(config_file=kubeconfig)
        core, coord = client.CoreV1Api(api), client.CoordinationV1Api(api)
        namespace = kube.create_namespace(api)
        agent = NodeAgent(tmp_path / "cluster", "localkube-node", tmp_path / "node", namespace)
        with ProcessCensus(marker) as census:
            agent.start(coord)
            core.create_namespaced_pod(namespace, census_pod("bot", marker, grace=GRACE))
            _, process = running_pod(core, namespace, "bot", agent.started_at)
            agent.kill()
            api.close()
            owner.kill()
            owner.wait(timeout=10)
            # etcd, given SIGTERM with its API server, takes up to its request timeout (7 s)
            # to close; then the pod gets its grace period.
            took = wait_gone(process, GRACE + 12, "the pod process to end with its cluster")
            assert took < GRACE + 10
            assert census.count() == []
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait(timeout=10)
        if agent is not None:
            agent.stop()
        kill_control_plane(tmp_path / "cluster")


def kill_control_plane(data_dir: Path) -> None:
    """An API server whose etcd died under it can hang in its shutdown for minutes."""
    state = ClusterState.load(data_dir)
    if state is None:
        return
    for pid, binary in (
        (state.apiserver_pid, state.apiserver_binary),
        (state.etcd_pid, state.etcd_binary),
    ):
        if pid_runs(pid, binary):
            os.kill(pid, signal.SIGKILL)
