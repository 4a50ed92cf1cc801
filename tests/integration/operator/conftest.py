"""Fixtures for operator tests: the operator as a process, a stand-in kubelet, a pod census."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubernetes import client

from tests.integration.operator.harness import Bots, Kubelet, OperatorProcess, PodCensus


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


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    setattr(item, "rep_" + report.when, report)
