"""Fixtures shared by every test that needs the real API server.

One etcd + kube-apiserver per test session (started by localkube from the pinned binaries,
torn down at the end, its processes bound to this run so none outlive it), a fresh namespace
per test, and clients for admin or any ServiceAccount (TokenRequest, so RBAC is real).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from localkube import product
from localkube.binaries import REPO_ROOT
from localkube.cluster import LocalCluster
from tests import kube

CRD_DIR = REPO_ROOT / "crds"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(str(item.fspath))
        if "integration" in path.parts:
            item.add_marker(pytest.mark.integration)
        elif "e2e" in path.parts:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    data_dir = tmp_path_factory.mktemp("localkube")
    with LocalCluster(data_dir, die_with_parent=True) as running:
        yield running


@pytest.fixture(scope="session")
def kubeconfig(cluster: LocalCluster) -> Path:
    return cluster.kubeconfig


@pytest.fixture(scope="session")
def api_client(cluster: LocalCluster) -> Iterator[client.ApiClient]:
    api = kube.admin_client(cluster)
    yield api
    api.close()


@pytest.fixture(scope="session")
def core_api(api_client: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api_client)


@pytest.fixture(scope="session")
def custom_api(api_client: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api_client)


@pytest.fixture(scope="session")
def rbac_api(api_client: client.ApiClient) -> client.RbacAuthorizationV1Api:
    return client.RbacAuthorizationV1Api(api_client)


@pytest.fixture(scope="session")
def apply_crds(api_client: client.ApiClient) -> list[str]:
    """Install every CRD in crds/ and wait until the API server serves them."""
    ext = client.ApiextensionsV1Api(api_client)
    names = []
    for path in sorted(CRD_DIR.glob("*.yaml")):
        for crd in kube.apply(api_client, path):
            names.append(crd.metadata.name)

    def established() -> bool:
        for name in names:
            status = ext.read_custom_resource_definition(name).status
            conditions = {c.type: c.status for c in (status.conditions or [])}
            if conditions.get("Established") != "True":
                return False
        return True

    kube.wait_for(established, timeout=30, message=f"CRDs {names} established")
    # As the chart installs them: every test runs behind the same admission as a cluster.
    product.install_admission_policies(api_client)
    return names


@pytest.fixture
def without_admission_policies(
    api_client: client.ApiClient, apply_crds: list[str]
) -> Iterator[None]:
    """A cluster without the chart's admission policies (older clusters, or an admin who
    removed them) for the length of one test; they are installed again afterwards."""
    kube.remove_admission_policies(api_client)
    try:
        yield
    finally:
        product.install_admission_policies(api_client)


@pytest.fixture
def namespace(api_client: client.ApiClient) -> Iterator[str]:
    name = kube.create_namespace(api_client)
    yield name
    # Without a controller-manager a namespace stays Terminating; the session's cluster is
    # discarded at the end, so the request is enough.
    with contextlib.suppress(client.ApiException):
        client.CoreV1Api(api_client).delete_namespace(name)


@pytest.fixture
def apply_yaml(api_client: client.ApiClient) -> Callable[..., list[Any]]:
    def _apply(source: Any, namespace: str | None = None) -> list[Any]:
        return kube.apply(api_client, source, namespace)

    return _apply


@pytest.fixture
def sa_kubeconfig(
    cluster: LocalCluster, api_client: client.ApiClient, tmp_path: Path
) -> Callable[[str, str], Path]:
    def _make(namespace: str, name: str) -> Path:
        return kube.service_account_kubeconfig(cluster, api_client, namespace, name, tmp_path)

    return _make


@pytest.fixture
def sa_client(
    cluster: LocalCluster, api_client: client.ApiClient, tmp_path: Path
) -> Iterator[Callable[[str, str], client.ApiClient]]:
    made: list[client.ApiClient] = []

    def _make(namespace: str, name: str) -> client.ApiClient:
        api = kube.service_account_client(cluster, api_client, namespace, name, tmp_path)
        made.append(api)
        return api

    yield _make
    for api in made:
        api.close()
