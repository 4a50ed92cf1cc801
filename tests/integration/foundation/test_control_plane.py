"""The local control plane is a real Kubernetes API server: storage, RBAC, Pod Security, CEL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from kubernetes import client

from localkube import binaries
from localkube.cluster import LocalCluster
from tests import kube

WIDGET_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.proof.r7.dev
spec:
  group: proof.r7.dev
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [mode]
            properties:
              mode: {type: string, enum: [paper, live], maxLength: 8}
              credentials: {type: string, maxLength: 63}
              size: {type: integer, minimum: 1, maximum: 10}
            x-kubernetes-validations:
            - rule: "self.mode == 'paper' || has(self.credentials)"
              message: "credentials is required unless mode is paper"
              fieldPath: ".credentials"
"""


def widget(name: str, **spec: object) -> dict:
    return {
        "apiVersion": "proof.r7.dev/v1",
        "kind": "Widget",
        "metadata": {"name": name},
        "spec": spec,
    }


@pytest.fixture(scope="module")
def widget_crd(api_client: client.ApiClient) -> None:
    kube.apply(api_client, WIDGET_CRD)
    ext = client.ApiextensionsV1Api(api_client)

    def served() -> bool:
        conditions = ext.read_custom_resource_definition("widgets.proof.r7.dev").status.conditions
        return any(c.type == "Established" and c.status == "True" for c in conditions or [])

    kube.wait_for(served, message="widgets CRD established")


def test_version_is_the_pinned_release(api_client: client.ApiClient) -> None:
    version = client.VersionApi(api_client).get_code()
    pinned = binaries.read_versions()["KUBERNETES_VERSION"]
    assert version.git_version == f"v{pinned}"


def test_configmap_round_trip(core_api: client.CoreV1Api, namespace: str) -> None:
    core_api.create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(metadata=client.V1ObjectMeta(name="proof"), data={"k": "v"}),
    )
    assert core_api.read_namespaced_config_map("proof", namespace).data == {"k": "v"}


def test_service_account_without_role_is_forbidden_then_allowed_with_one(
    widget_crd: None,
    namespace: str,
    sa_client: Callable[[str, str], client.ApiClient],
    rbac_api: client.RbacAuthorizationV1Api,
) -> None:
    custom = client.CustomObjectsApi(sa_client(namespace, "nobody"))
    with pytest.raises(client.ApiException) as denied:
        custom.list_namespaced_custom_object("proof.r7.dev", "v1", namespace, "widgets")
    assert denied.value.status == 403
    assert "system:serviceaccount:" + namespace + ":nobody" in denied.value.body

    rbac_api.create_namespaced_role(
        namespace,
        client.V1Role(
            metadata=client.V1ObjectMeta(name="widget-reader"),
            rules=[
                client.V1PolicyRule(
                    api_groups=["proof.r7.dev"], resources=["widgets"], verbs=["list"]
                )
            ],
        ),
    )
    rbac_api.create_namespaced_role_binding(
        namespace,
        client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name="widget-reader"),
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="Role", name="widget-reader"
            ),
            subjects=[
                client.RbacV1Subject(kind="ServiceAccount", name="nobody", namespace=namespace)
            ],
        ),
    )
    listed = kube.wait_for(
        lambda: _list_or_none(custom, namespace), message="RBAC to admit the list"
    )
    assert listed["items"] == []


def _list_or_none(custom: client.CustomObjectsApi, namespace: str) -> dict | None:
    try:
        return dict(
            custom.list_namespaced_custom_object("proof.r7.dev", "v1", namespace, "widgets")
        )
    except client.ApiException as err:
        if err.status == 403:
            return None
        raise


def test_restricted_namespace_rejects_a_privileged_pod(
    api_client: client.ApiClient, core_api: client.CoreV1Api
) -> None:
    namespace = kube.create_namespace(
        api_client, labels={"pod-security.kubernetes.io/enforce": "restricted"}
    )
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="privileged"),
        spec=client.V1PodSpec(
            service_account_name="default",
            containers=[
                client.V1Container(
                    name="main",
                    image="busybox",
                    security_context=client.V1SecurityContext(privileged=True),
                )
            ],
        ),
    )
    with pytest.raises(client.ApiException) as rejected:
        core_api.create_namespaced_pod(namespace, pod)
    assert rejected.value.status == 403
    message = json.loads(rejected.value.body)["message"]
    assert 'violates PodSecurity "restricted:latest"' in message
    assert 'privileged (container "main" must not set securityContext.privileged=true)' in message


def test_crd_schema_and_cel_reject_invalid_objects_naming_the_field(
    widget_crd: None, custom_api: client.CustomObjectsApi, namespace: str
) -> None:
    def create(body: dict) -> None:
        custom_api.create_namespaced_custom_object("proof.r7.dev", "v1", namespace, "widgets", body)

    for body, field in (
        (widget("live-without-credentials", mode="live"), "spec.credentials"),
        (widget("unknown-mode", mode="yolo"), "spec.mode"),
        (widget("too-big", mode="paper", size=11), "spec.size"),
    ):
        with pytest.raises(client.ApiException) as rejected:
            create(body)
        assert rejected.value.status == 422, body
        assert field in rejected.value.body, rejected.value.body
    create(widget("valid", mode="live", credentials="exchange-keys"))


def test_token_request_yields_a_token_the_server_authenticates(
    api_client: client.ApiClient, namespace: str
) -> None:
    token = kube.service_account_token(api_client, namespace, "reviewer")
    review = client.AuthenticationV1Api(api_client).create_token_review(
        client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token))
    )
    assert review.status.authenticated is True
    assert review.status.user.username == f"system:serviceaccount:{namespace}:reviewer"


def test_cli_up_prints_a_working_kubeconfig_and_down_leaves_no_process(tmp_path: Path) -> None:
    data_dir = tmp_path / "cli"
    env = dict(os.environ)
    up = subprocess.run(
        [sys.executable, "-m", "localkube", "up", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    cluster = LocalCluster(data_dir, die_with_parent=False)
    try:
        assert up.returncode == 0, up.stderr
        kubeconfig = up.stdout.strip().splitlines()[-1]
        version = subprocess.run(
            [
                str(binaries.require_binary("kubectl")),
                "--kubeconfig",
                kubeconfig,
                "get",
                "--raw",
                "/version",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert version.returncode == 0, version.stderr
        assert (
            f'"gitVersion": "v{binaries.read_versions()["KUBERNETES_VERSION"]}"' in version.stdout
        )
        state = cluster.state_from_disk()
        assert state is not None and state.running()
        pids = (state.etcd_pid, state.apiserver_pid)
    finally:
        down = subprocess.run(
            [sys.executable, "-m", "localkube", "down", "--data-dir", str(data_dir)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert down.returncode == 0, down.stderr
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid), f"pid {pid} survived"
    assert cluster.state_from_disk() is None


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def test_localkube_comes_up_in_a_network_namespace_with_only_loopback(tmp_path: Path) -> None:
    """An air-gapped machine: no default route, no interface but `lo`."""
    data_dir = tmp_path / "offline"
    script = (
        "ip link set lo up && "
        f"{sys.executable} -m localkube up --data-dir {data_dir} && "
        f"{binaries.require_binary('kubectl')} --kubeconfig {data_dir}/kubeconfig "
        "get --raw /readyz; "
        f"status=$?; {sys.executable} -m localkube down --data-dir {data_dir}; exit $status"
    )
    ran = subprocess.run(
        ["unshare", "--net", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=binaries.REPO_ROOT,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert ran.stdout.strip().endswith("ok")
    routes = subprocess.run(
        ["unshare", "--net", "ip", "route"], capture_output=True, text=True, timeout=10
    )
    assert routes.stdout.strip() == ""  # the namespace had no route at all


def test_a_failed_start_says_which_component_failed_and_leaves_nothing_running(
    tmp_path: Path,
) -> None:
    """etcd cannot start on a data dir that is a file: `up` must name etcd and stop it all."""
    data_dir = tmp_path / "broken"
    data_dir.mkdir()
    (data_dir / "etcd").write_text("not a directory")
    up = subprocess.run(
        [sys.executable, "-m", "localkube", "up", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert up.returncode != 0
    assert "etcd exited during start-up" in up.stderr
    assert "Traceback" not in up.stderr
    assert LocalCluster(data_dir, die_with_parent=False).state_from_disk() is None
    leftovers = subprocess.run(
        ["pgrep", "-f", f"--data-dir={data_dir}/etcd"], capture_output=True, text=True
    )
    assert leftovers.stdout.strip() == "", "an etcd of the failed start is still running"


def test_start_up_checks_hold_under_cpu_load(tmp_path: Path) -> None:
    """The start-up wait judges our own children by their handle: a busy machine (both cores
    spinning) never makes it call a live etcd or API server dead."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(4)]
    try:
        with LocalCluster(tmp_path / "busy", die_with_parent=True) as busy:
            state = busy.state_from_disk()
            assert state is not None and state.running()
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
