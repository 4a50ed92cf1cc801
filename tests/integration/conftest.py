"""Integration fixtures shared by the audit and bot tests: the audit sidecar as a real
process, authorizing against the real API server.

It runs with a kubeconfig for a ServiceAccount bound to `system:auth-delegator` only, so these
tests also prove that this is all the RBAC the sidecar needs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from localkube.cluster import free_port
from tests import kube

SIDECAR_ACCOUNT = "audit-sidecar"


class SidecarProcess:
    """`python -m tradingbot_audit --log-dir DIR serve`, killable at will."""

    def __init__(
        self,
        log_dir: Path,
        kubeconfig: Path,
        output: Path,
        operator_users: Sequence[str] = (),
    ) -> None:
        """With `operator_users`, as the chart runs it: no loopback ingest, and operators
        post to the main listener (`api_url`) with a token for the sidecar's audience."""
        self.log_dir = log_dir
        self.kubeconfig = kubeconfig
        self.output = output
        self.operator_users = tuple(operator_users)
        self.ingest_port = free_port()
        self.api_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def ingest_url(self) -> str:
        return f"http://127.0.0.1:{self.ingest_port}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def start(self) -> SidecarProcess:
        with open(self.output, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tradingbot_audit",
                    "--log-dir",
                    str(self.log_dir),
                    "serve",
                    "--kubeconfig",
                    str(self.kubeconfig),
                    "--listen",
                    f"127.0.0.1:{self.api_port}",
                    "--ingest-listen",
                    "" if self.operator_users else f"127.0.0.1:{self.ingest_port}",
                    *(f"--operator-user={user}" for user in self.operator_users),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        kube.wait_for(self._serving, timeout=30, message="audit sidecar /healthz")
        return self

    def _serving(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"sidecar exited with {self.proc.returncode}:\n{self.logs()}")
        try:
            urls = [self.api_url] if self.operator_users else [self.ingest_url, self.api_url]
            for url in urls:
                with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
                    if response.status != 200:
                        return False
        except OSError:
            return False
        return True

    def kill(self) -> None:
        """SIGKILL: no flush, no goodbye, as an OOM kill or node loss would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM and wait; the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def logs(self) -> str:
        return self.output.read_text(errors="replace")[-6000:]

    # -- HTTP -------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        body: Any = None,
        ingest: bool = False,
    ) -> tuple[int, Any]:
        """(status, parsed JSON body) of one request."""
        url = (self.ingest_url if ingest else self.api_url) + path
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")


@pytest.fixture
def sidecar_kubeconfig(
    api_client: client.ApiClient,
    rbac_api: client.RbacAuthorizationV1Api,
    namespace: str,
    sa_kubeconfig: Callable[[str, str], Path],
) -> Iterator[Path]:
    """A kubeconfig for a ServiceAccount that may do TokenReviews and SubjectAccessReviews."""
    binding = f"audit-sidecar-{uuid.uuid4().hex[:8]}"
    path = sa_kubeconfig(namespace, SIDECAR_ACCOUNT)
    rbac_api.create_cluster_role_binding(
        client.V1ClusterRoleBinding(
            metadata=client.V1ObjectMeta(name=binding),
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io",
                kind="ClusterRole",
                name="system:auth-delegator",
            ),
            subjects=[
                client.RbacV1Subject(
                    kind="ServiceAccount", name=SIDECAR_ACCOUNT, namespace=namespace
                )
            ],
        )
    )
    user = f"system:serviceaccount:{namespace}:{SIDECAR_ACCOUNT}"
    wait_allowed(api_client, user, None, "authentication.k8s.io", "tokenreviews", verb="create")
    yield path
    with contextlib.suppress(client.ApiException):
        rbac_api.delete_cluster_role_binding(binding)


@pytest.fixture
def start_sidecar(
    tmp_path: Path, sidecar_kubeconfig: Path
) -> Iterator[Callable[..., SidecarProcess]]:
    started: list[SidecarProcess] = []

    def start(log_dir: Path | None = None, operator_users: Sequence[str] = ()) -> SidecarProcess:
        process = SidecarProcess(
            log_dir or tmp_path / "audit",
            sidecar_kubeconfig,
            tmp_path / f"sidecar-{len(started)}.log",
            operator_users,
        )
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.kill()


def wait_allowed(
    api_client: client.ApiClient,
    user: str,
    namespace: str | None,
    group: str,
    resource: str,
    *,
    verb: str = "get",
    subresource: str | None = None,
    expected: bool = True,
) -> None:
    """Until the API server's RBAC cache agrees (new bindings take a moment to apply)."""
    groups = ["system:serviceaccounts", "system:authenticated"]
    if user.startswith("system:serviceaccount:"):
        groups.append("system:serviceaccounts:" + user.split(":")[2])
    review = client.V1SubjectAccessReview(
        spec=client.V1SubjectAccessReviewSpec(
            user=user,
            groups=groups,
            resource_attributes=client.V1ResourceAttributes(
                verb=verb,
                group=group,
                resource=resource,
                subresource=subresource,
                namespace=namespace,
            ),
        )
    )
    authz = client.AuthorizationV1Api(api_client)

    def agrees() -> bool:
        answer = authz.create_subject_access_review(review)
        return bool(answer.status.allowed) is expected

    kube.wait_for(agrees, timeout=15, message=f"RBAC: {verb} {resource} for {user} = {expected}")
