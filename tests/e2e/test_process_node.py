"""The process node behaves like a kubelet for the pods it runs."""

from __future__ import annotations

import json
import os
import signal
import stat
import textwrap
import time
import urllib.request

import pytest
from kubernetes import client

from localkube.node import ProcessNode
from tests import kube

# A tiny container: serves /readyz and /env on POD_IP, records SIGTERM, exits 0 on it.
SERVER = textwrap.dedent("""
    import http.server, json, os, signal, sys, threading
    ip, port = os.environ["POD_IP"], int(os.environ.get("PORT", "8080"))
    def on_term(*_):
        open(os.path.join(os.environ["DATA"], "sigterm"), "w").write("got it")
        os._exit(0)
    signal.signal(signal.SIGTERM, on_term)
    if os.environ.get("IGNORE_TERM"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    def files():
        root = os.environ["CREDENTIALS_DIR"]
        return {
            n: {"content": open(os.path.join(root, n)).read(),
                "mode": os.stat(os.path.join(root, n)).st_mode & 0o777}
            for n in sorted(os.listdir(root))
        }
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps(dict(os.environ)).encode() if self.path == "/env" else b"ok"
            if self.path == "/files":
                body = json.dumps(files()).encode()
            self.send_response(200); self.end_headers(); self.wfile.write(body)
        def log_message(self, *a): pass
    http.server.HTTPServer((ip, port), H).serve_forever()
""")


def pod(name: str, **env: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "serviceAccountName": "default",
            "terminationGracePeriodSeconds": 3,
            "containers": [
                {
                    "name": "main",
                    "image": "python",
                    "command": ["python", "-c", SERVER],
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "readinessProbe": {
                        "httpGet": {"path": "/readyz", "port": "http"},
                        "periodSeconds": 1,
                    },
                    "env": [
                        {
                            "name": "POD_IP",
                            "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}},
                        },
                        {
                            "name": "MY_NAMESPACE",
                            "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
                        },
                        {
                            "name": "API_KEY",
                            "valueFrom": {"secretKeyRef": {"name": "keys", "key": "apiKey"}},
                        },
                        {"name": "DATA", "value": "/data"},
                        *({"name": k, "value": v} for k, v in env.items()),
                    ],
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                }
            ],
            "volumes": [{"name": "data", "emptyDir": {}}],
        },
    }


def ready_pod(core: client.CoreV1Api, namespace: str, name: str) -> client.V1Pod:
    def ready() -> client.V1Pod | None:
        p = core.read_namespaced_pod(name, namespace)
        conds = {c.type: c.status for c in (p.status.conditions or [])}
        return p if conds.get("Ready") == "True" else None

    return kube.wait_for(ready, timeout=30, message=f"pod {name} ready")


def get_env(p: client.V1Pod) -> dict:
    with urllib.request.urlopen(f"http://{p.status.pod_ip}:8080/env", timeout=5) as r:
        return dict(json.loads(r.read()))


@pytest.fixture
def keys(core_api: client.CoreV1Api, node_namespace: str) -> None:
    core_api.create_namespaced_secret(
        node_namespace,
        client.V1Secret(metadata=client.V1ObjectMeta(name="keys"), string_data={"apiKey": "k-123"}),
    )


def test_pods_run_as_processes_with_their_own_ip_env_and_readiness(
    core_api: client.CoreV1Api,
    node_namespace: str,
    keys: None,
    process_node: ProcessNode,
) -> None:
    for name in ("one", "two"):
        core_api.create_namespaced_pod(node_namespace, pod(name))
    one, two = (ready_pod(core_api, node_namespace, n) for n in ("one", "two"))
    assert one.spec.node_name == process_node.name
    assert one.status.pod_ip != two.status.pod_ip
    assert one.status.pod_ip.startswith("127.") and not one.status.pod_ip.startswith("127.0.")
    env = get_env(one)
    assert env["MY_NAMESPACE"] == node_namespace
    assert env["API_KEY"] == "k-123"
    assert env["DATA"].endswith("/volumes/data")  # the mount maps to a per-pod directory
    assert "KUBECONFIG" in env


def test_the_pod_token_carries_exactly_its_service_account_rbac(
    core_api: client.CoreV1Api,
    node_namespace: str,
    keys: None,
    api_client: client.ApiClient,
) -> None:
    core_api.create_namespaced_pod(node_namespace, pod("whoami"))
    p = ready_pod(core_api, node_namespace, "whoami")
    kubeconfig = get_env(p)["KUBECONFIG"]
    from kubernetes import config

    as_pod = client.CoreV1Api(config.new_client_from_config(config_file=kubeconfig))
    with pytest.raises(client.ApiException) as denied:
        as_pod.list_namespaced_pod(node_namespace)
    assert denied.value.status == 403
    assert f"system:serviceaccount:{node_namespace}:default" in denied.value.body


def test_deletion_sends_sigterm_then_removes_the_pod(
    core_api: client.CoreV1Api,
    node_namespace: str,
    keys: None,
) -> None:
    core_api.create_namespaced_pod(node_namespace, pod("graceful"))
    p = ready_pod(core_api, node_namespace, "graceful")
    data_dir = get_env(p)["DATA"]
    core_api.delete_namespaced_pod("graceful", node_namespace)
    kube.wait_for(
        lambda: (
            not [
                x
                for x in core_api.list_namespaced_pod(node_namespace).items
                if x.metadata.name == "graceful"
            ]
        ),
        timeout=15,
        message="pod removed by the node",
    )
    with open(f"{data_dir}/sigterm") as marker:
        assert marker.read() == "got it"


def test_a_process_ignoring_sigterm_is_killed_after_the_grace_period(
    core_api: client.CoreV1Api,
    node_namespace: str,
    keys: None,
) -> None:
    core_api.create_namespaced_pod(node_namespace, pod("stubborn", IGNORE_TERM="1"))
    ready_pod(core_api, node_namespace, "stubborn")
    started = time.monotonic()
    core_api.delete_namespaced_pod("stubborn", node_namespace)
    kube.wait_for(
        lambda: (
            not [
                x
                for x in core_api.list_namespaced_pod(node_namespace).items
                if x.metadata.name == "stubborn"
            ]
        ),
        timeout=20,
        message="pod removed after SIGKILL",
    )
    assert time.monotonic() - started >= 3  # waited the grace period first


def test_a_crashed_container_is_restarted_and_counted(
    core_api: client.CoreV1Api,
    node_namespace: str,
    keys: None,
    process_node: ProcessNode,
) -> None:
    core_api.create_namespaced_pod(node_namespace, pod("crashy"))
    ready_pod(core_api, node_namespace, "crashy")
    run = process_node.pods[f"{node_namespace}/crashy"]
    run.containers[0].proc.kill()  # type: ignore[union-attr]

    def restarted() -> bool:
        p = core_api.read_namespaced_pod("crashy", node_namespace)
        status = p.status.container_statuses[0]
        return status.restart_count == 1 and status.ready

    kube.wait_for(restarted, timeout=30, message="container restarted and ready")


CREDENTIALS_DIR = "/var/run/secrets/trading.r7.dev/credentials"


def credentials_pod(name: str, *, optional: bool = False) -> dict:
    """A pod with the bot pod's credentials volume and CREDENTIALS_DIR, as the operator
    renders them."""
    body = pod(name)
    secret: dict = {
        "secretName": "exchange-keys",
        "defaultMode": 0o440,
        "items": [{"key": "apiKey", "path": "apiKey"}, {"key": "secret", "path": "secret"}],
    }
    if optional:
        secret["optional"] = True
    body["spec"]["volumes"].append({"name": "credentials", "secret": secret})
    (container,) = body["spec"]["containers"]
    container["volumeMounts"].append(
        {"name": "credentials", "mountPath": CREDENTIALS_DIR, "readOnly": True}
    )
    container["env"].append({"name": "CREDENTIALS_DIR", "value": CREDENTIALS_DIR})
    return body


def create_exchange_keys(core: client.CoreV1Api, namespace: str) -> None:
    core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="exchange-keys"),
            string_data={"apiKey": "key-123456\n", "secret": "secret-123456", "other": "x"},
        ),
    )


def get_files(p: client.V1Pod) -> dict:
    with urllib.request.urlopen(f"http://{p.status.pod_ip}:8080/files", timeout=5) as r:
        return dict(json.loads(r.read()))


def gone(core: client.CoreV1Api, namespace: str, name: str) -> bool:
    return not [x for x in core.list_namespaced_pod(namespace).items if x.metadata.name == name]


def test_a_secret_volume_holds_its_items_with_their_mode_until_the_pod_goes(
    core_api: client.CoreV1Api,
    node_namespace: str,
) -> None:
    create_exchange_keys(core_api, node_namespace)
    core_api.create_namespaced_pod(node_namespace, credentials_pod("mounted"))
    p = ready_pod(core_api, node_namespace, "mounted")
    assert get_files(p) == {
        "apiKey": {"content": "key-123456\n", "mode": 0o440},
        "secret": {"content": "secret-123456", "mode": 0o440},
    }
    host_dir = get_env(p)["CREDENTIALS_DIR"]
    assert host_dir.endswith("/volumes/credentials")  # the mount maps to the pod's directory
    assert not stat.S_IMODE(os.stat(host_dir).st_mode) & 0o007  # not world-readable
    core_api.delete_namespaced_pod("mounted", node_namespace, grace_period_seconds=1)
    kube.wait_for(
        lambda: gone(core_api, node_namespace, "mounted"), timeout=15, message="pod removed"
    )
    assert not os.path.exists(host_dir)  # the credentials do not outlive the pod


def test_a_container_waits_for_its_missing_secret(
    core_api: client.CoreV1Api,
    node_namespace: str,
    process_node: ProcessNode,
) -> None:
    core_api.create_namespaced_pod(node_namespace, credentials_pod("waiting"))

    def waiting_for_the_mount() -> client.V1ContainerStatus | None:
        statuses = core_api.read_namespaced_pod("waiting", node_namespace).status
        status = (statuses.container_statuses or [None])[0]
        waiting = status and status.state.waiting
        return status if waiting and "not found" in (waiting.message or "") else None

    status = kube.wait_for(waiting_for_the_mount, timeout=15, message="mount failure reported")
    assert status.state.waiting.reason == "ContainerCreating"
    assert 'secret "exchange-keys" not found' in status.state.waiting.message
    time.sleep(2)  # several sync rounds: still no process
    p = core_api.read_namespaced_pod("waiting", node_namespace)
    conditions = {c.type: c.status for c in p.status.conditions}
    assert conditions["Ready"] == "False" and p.status.phase == "Pending"
    run = process_node.pods[f"{node_namespace}/waiting"]
    assert run.containers[0].proc is None and run.containers[0].restart_count == 0

    create_exchange_keys(core_api, node_namespace)
    p = ready_pod(core_api, node_namespace, "waiting")
    assert get_files(p)["secret"] == {"content": "secret-123456", "mode": 0o440}
    status = p.status.container_statuses[0]
    assert status.restart_count == 0 and status.state.running


def test_an_optional_secret_volume_does_not_hold_the_pod_back(
    core_api: client.CoreV1Api,
    node_namespace: str,
) -> None:
    core_api.create_namespaced_pod(node_namespace, credentials_pod("optional", optional=True))
    p = ready_pod(core_api, node_namespace, "optional")
    assert get_files(p) == {}


def test_a_frozen_process_is_not_ready_within_its_probes_failure_window(
    core_api: client.CoreV1Api,
    node_namespace: str,
    keys: None,
    process_node: ProcessNode,
) -> None:
    body = pod("frozen")
    probe = body["spec"]["containers"][0]["readinessProbe"]
    probe.update({"periodSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 2})
    core_api.create_namespaced_pod(node_namespace, body)
    ready_pod(core_api, node_namespace, "frozen")
    proc = process_node.pods[f"{node_namespace}/frozen"].containers[0].proc
    assert proc is not None
    os.killpg(proc.pid, signal.SIGSTOP)  # a frozen node, in effect: nothing answers
    try:
        started = time.monotonic()
        kube.wait_for(
            lambda: not_ready(core_api, node_namespace, "frozen"), timeout=10, message="not ready"
        )
        # Two probes in a row fail, each after its 1 s timeout, one period apart.
        window = probe["periodSeconds"] * probe["failureThreshold"] + probe["timeoutSeconds"]
        assert time.monotonic() - started <= window + 1.5
        status = core_api.read_namespaced_pod("frozen", node_namespace).status
        assert status.container_statuses[0].state.running  # frozen is not dead
        assert not status.container_statuses[0].ready
    finally:
        os.killpg(proc.pid, signal.SIGCONT)
    ready_pod(core_api, node_namespace, "frozen")  # answering again, ready again


def test_a_dead_process_is_reported_not_ready_at_once(
    core_api: client.CoreV1Api,
    node_namespace: str,
    keys: None,
    process_node: ProcessNode,
) -> None:
    body = pod("mortal")
    body["spec"]["restartPolicy"] = "Never"
    core_api.create_namespaced_pod(node_namespace, body)
    ready_pod(core_api, node_namespace, "mortal")
    proc = process_node.pods[f"{node_namespace}/mortal"].containers[0].proc
    assert proc is not None
    proc.kill()
    started = time.monotonic()
    pod_now = kube.wait_for(
        lambda: not_ready(core_api, node_namespace, "mortal"), timeout=5, message="not ready"
    )
    assert time.monotonic() - started < 1.0
    status = pod_now.status.container_statuses[0]
    assert not status.ready and status.state.terminated.exit_code == 137


def not_ready(core: client.CoreV1Api, namespace: str, name: str) -> client.V1Pod | None:
    p = core.read_namespaced_pod(name, namespace)
    conditions = {c.type: c.status for c in (p.status.conditions or [])}
    return p if conditions.get("Ready") == "False" else None
