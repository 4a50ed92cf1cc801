"""End-to-end fixtures: the process node runs pods of e2e namespaces as real processes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from localkube.cluster import LocalCluster
from localkube.node import ProcessNode
from tests import kube
from tests.e2e.harness import E2E


@pytest.fixture(scope="session")
def process_node(
    cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProcessNode]:
    node = ProcessNode(
        cluster.kubeconfig,
        tmp_path_factory.mktemp("node"),
        server=cluster.server,
        ca_cert=cluster.pki.ca_cert,
        namespaces=set(),
    )
    node.start()
    yield node
    node.stop(timeout=30)


@pytest.fixture
def node_namespace(api_client: client.ApiClient, process_node: ProcessNode) -> Iterator[str]:
    """A fresh namespace whose pods the process node runs."""
    name = kube.create_namespace(api_client)
    assert process_node.namespaces is not None
    process_node.namespaces.add(name)
    yield name
    core = client.CoreV1Api(api_client)
    with contextlib.suppress(client.ApiException):
        for pod in core.list_namespaced_pod(name).items:
            core.delete_namespaced_pod(pod.metadata.name, name, grace_period_seconds=1)
    kube.wait_for(
        lambda: not core.list_namespaced_pod(name).items, timeout=30, message=f"pods of {name} gone"
    )
    process_node.namespaces.discard(name)


@pytest.fixture
def e2e(
    cluster: LocalCluster,
    api_client: client.ApiClient,
    node_namespace: str,
    process_node: ProcessNode,
    apply_crds: list[str],
    tmp_path: Path,
) -> Iterator[E2E]:
    env = E2E(cluster, api_client, node_namespace, process_node, tmp_path)
    yield env
    env.close()
