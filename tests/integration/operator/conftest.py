"""Fixtures for operator tests: the operator as a process, a stand-in kubelet, a pod census."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubernetes import client

from localkube import product
from tests import kube
from tests.integration.operator.harness import Bots, Kubelet, OperatorProcess, PodCensus
from tradingbot_api.constants import API_GROUP, PLURAL, VERSION


@pytest.fixture
def bots(api_client: client.ApiClient, namespace: str, apply_crds: list[str]) -> Bots:
    return Bots(api_client, namespace)


@pytest.fixture
def kubelet(api_client: client.ApiClient, namespace: str) -> Iterator[Kubelet]:
    thread = Kubelet(api_client, namespace)
    thread.start()
    yield thread
    thread.stop()


@pytest.fixture
def census(api_client: client.ApiClient, namespace: str) -> Iterator[PodCensus]:
    thread = PodCensus(api_client, namespace)
    thread.start()
    thread.ready.wait(10)
    yield thread
    thread.stop()
    assert all(n <= 1 for n in thread.max_per_bot.values()), (
        f"two pods of one bot existed at once: {thread.max_per_bot}"
    )


@pytest.fixture
def start_operator(
    kubeconfig: Path,
    namespace: str,
    tmp_path: Path,
    apply_crds: list[str],
    request: pytest.FixtureRequest,
) -> Iterator[Callable[..., OperatorProcess]]:
    started: list[OperatorProcess] = []

    def _start(*args: str, **env: str) -> OperatorProcess:
        proc = OperatorProcess(
            kubeconfig, namespace, tmp_path / f"operator-{len(started)}.log", args=args
        )
        started.append(proc)
        return proc.start(**env)

    yield _start
    for proc in started:
        proc.stop()
    if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
        for proc in started:
            print(f"--- {proc.log_path} ---\n{proc.logs()}")


@pytest.fixture
def operator(start_operator: Callable[..., OperatorProcess]) -> OperatorProcess:
    return start_operator()


@pytest.fixture(scope="session")
def user_roles(api_client: client.ApiClient) -> list[str]:
    roles = [d for d in product.render_chart("tradingbot-system") if d["kind"] == "ClusterRole"]
    roles = [r for r in roles if r["metadata"]["name"].startswith("tradingbot-")]
    kube.apply(api_client, roles)
    return [r["metadata"]["name"] for r in roles]


@pytest.fixture
def subject(
    api_client: client.ApiClient,
    namespace: str,
    user_roles: list[str],
    sa_client: Callable[[str, str], client.ApiClient],
) -> Callable[[str], tuple[client.ApiClient, str]]:
    """A ServiceAccount bound to one of the chart's user roles in the test namespace."""
    rbac = client.RbacAuthorizationV1Api(api_client)
    made: dict[str, tuple[client.ApiClient, str]] = {}

    def _subject(role: str) -> tuple[client.ApiClient, str]:
        if role not in made:
            assert f"tradingbot-{role}" in user_roles
            rbac.create_namespaced_role_binding(
                namespace,
                client.V1RoleBinding(
                    metadata=client.V1ObjectMeta(name=f"as-{role}"),
                    role_ref=client.V1RoleRef(
                        api_group="rbac.authorization.k8s.io",
                        kind="ClusterRole",
                        name=f"tradingbot-{role}",
                    ),
                    subjects=[
                        client.RbacV1Subject(kind="ServiceAccount", name=role, namespace=namespace)
                    ],
                ),
            )
            api = sa_client(namespace, role)
            user = f"system:serviceaccount:{namespace}:{role}"
            kube.wait_for(lambda: _can_list(api, namespace), message=f"RBAC for {role}")
            made[role] = (api, user)
        return made[role]

    return _subject


def _can_list(api: client.ApiClient, namespace: str) -> bool:
    try:
        client.CustomObjectsApi(api).list_namespaced_custom_object(
            API_GROUP, VERSION, namespace, PLURAL
        )
    except client.ApiException:
        return False
    return True


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    setattr(item, "rep_" + report.when, report)
