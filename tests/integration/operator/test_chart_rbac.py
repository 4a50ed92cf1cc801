"""The operator works with exactly the permissions the Helm chart grants it, no more."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from localkube import binaries
from localkube.cluster import LocalCluster
from localkube.product import IDENTITY_KINDS, chart_account, render_chart
from tests import kube
from tests.integration.invalid_specs import VALID_BASE_SPEC
from tests.integration.operator.harness import Bots, Kubelet, OperatorProcess, PodCensus

CHART = binaries.REPO_ROOT / "helm" / "tradingbot-operator"


@pytest.fixture
def chart_operator(
    cluster: LocalCluster,
    api_client: client.ApiClient,
    namespace: str,
    tmp_path: Path,
    apply_crds: list[str],
) -> Callable[[], OperatorProcess]:
    identity = [
        d
        for d in render_chart(namespace, watchNamespace=namespace)
        if d["kind"] in ("ServiceAccount", "Role", "RoleBinding")
        or d["metadata"]["name"].endswith("-admission")  # access reviews, policy presence
    ]
    assert {d["kind"] for d in identity} == {
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ClusterRole",
        "ClusterRoleBinding",
    }
    kube.apply(api_client, identity)
    sa = chart_account(namespace)
    kubeconfig = kube.service_account_kubeconfig(cluster, api_client, namespace, sa, tmp_path)
    started: list[OperatorProcess] = []

    def _start() -> OperatorProcess:
        proc = OperatorProcess(kubeconfig, namespace, tmp_path / "operator.log")
        started.append(proc)
        return proc.start()

    yield _start  # type: ignore[misc]
    for proc in started:
        proc.stop()


def test_operator_with_the_chart_role_runs_restarts_and_deletes_a_live_bot(
    chart_operator: Callable[[], OperatorProcess],
    bots: Bots,
    kubelet: Kubelet,
    census: PodCensus,
    core_api: client.CoreV1Api,
) -> None:
    core_api.create_namespaced_secret(
        bots.namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="exchange-keys"),
            string_data={"apiKey": "k", "secret": "s"},
        ),
    )
    spec = copy.deepcopy(VALID_BASE_SPEC)
    spec["exchange"] = {
        "id": "binance",
        "mode": "sandbox",
        "credentialsSecretRef": {"name": "exchange-keys"},
    }
    op = chart_operator()
    bots.create("bot-a", spec)
    bots.wait_running_with("bot-a")
    bots.patch("bot-a", {"spec": {"risk": {"maxOpenPositions": 4}}})
    kube.wait_for(
        lambda: bots.status("bot-a").get("restarts", {}).get("total") == 1,
        timeout=30,
        message="restart with the chart's permissions",
    )
    bots.delete("bot-a")
    kube.wait_for(
        lambda: (
            not [
                b
                for b in bots.custom.list_namespaced_custom_object(
                    "trading.r7.dev", "v1alpha1", bots.namespace, "tradingbots"
                )["items"]
            ]
        ),
        timeout=30,
        message="finalizer released",
    )
    assert op.metric("tradingbot_operator_reconcile_errors_total") == 0, op.logs()


def test_chart_crd_is_the_crd_in_crds() -> None:
    assert (CHART / "crds" / "tradingbots.trading.r7.dev.yaml").read_text() == (
        binaries.REPO_ROOT / "crds" / "tradingbots.trading.r7.dev.yaml"
    ).read_text()


def test_chart_pods_run_under_restricted_security() -> None:
    docs = render_chart("tradingbot-system")
    workloads = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    assert len(workloads) == 2
    for workload in workloads:
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert container["resources"]["limits"]["memory"]
    operator_roles = [
        d
        for d in docs
        if d["kind"] == "ClusterRole" and d["metadata"]["name"].startswith("tb-tradingbot-operator")
    ]
    assert len(operator_roles) == 2  # its own, and access reviews + policy presence
    for role in operator_roles:
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"]
            assert "secrets" not in rule["resources"], "the operator reads no Secret"


def test_chart_webhooks_are_the_ones_the_operator_serves() -> None:
    from tradingbot_operator.webhook import webhook_configurations

    docs = render_chart("tradingbot-system")
    expected = webhook_configurations({"url": "https://example"})

    def without_client_config(doc: dict) -> list[dict]:
        return [{k: v for k, v in w.items() if k != "clientConfig"} for w in doc["webhooks"]]

    for want in expected:
        (got,) = [d for d in docs if d["kind"] == want["kind"]]
        assert got["metadata"]["name"] == want["metadata"]["name"]
        assert without_client_config(got) == without_client_config(want)
        for hook, wanted in zip(got["webhooks"], want["webhooks"], strict=True):
            assert hook["clientConfig"]["service"]["path"] == "/" + wanted["name"].split(".")[0]
            assert hook["clientConfig"]["caBundle"]


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def test_chart_runs_replicas_with_a_leader_and_the_audit_writer_on_its_own() -> None:
    docs = render_chart("tradingbot-system")
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    (statefulset,) = [d for d in docs if d["kind"] == "StatefulSet"]
    operator_pod, audit_pod = deployment["spec"]["template"], statefulset["spec"]["template"]

    # Two operator replicas, leader-elected; a rollout never stops one before the next runs.
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    (operator,) = operator_pod["spec"]["containers"]
    env = {e["name"]: e for e in operator["env"]}
    assert env["TRADINGBOT_OPERATOR_LEADER_ELECTION"]["value"] == "true"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    leader_ns = env["TRADINGBOT_OPERATOR_LEADER_NAMESPACE"]["valueFrom"]["fieldRef"]
    assert leader_ns["fieldPath"] == "metadata.namespace"
    (pdb,) = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    single = render_chart("tradingbot-system", **{"operator.replicas": "1"})
    assert "PodDisruptionBudget" not in {d["kind"] for d in single}
    # The leader Lease's requests have a priority of their own (off where policy forbids).
    (flow,) = [d for d in docs if d["kind"] == "FlowSchema"]
    assert flow["spec"]["priorityLevelConfiguration"]["name"] == "leader-election"
    unprioritised = render_chart("tradingbot-system", **{"operator.leaderFlowSchema": "false"})
    assert "FlowSchema" not in {d["kind"] for d in unprioritised}

    # One audit writer, a StatefulSet of one, on the claim kept across uninstalls.
    assert statefulset["spec"]["replicas"] == 1
    (audit,) = audit_pod["spec"]["containers"]
    (pvc,) = [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    claims = [
        v["persistentVolumeClaim"]["claimName"]
        for v in audit_pod["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    ]
    assert claims == [pvc["metadata"]["name"]]
    assert not any("persistentVolumeClaim" in v for v in operator_pod["spec"]["volumes"])

    # Separate identities; only the operator's may post operator events, with a token
    # whose audience is the sidecar (the projected volume), over the audit Service.
    operator_sa = operator_pod["spec"]["serviceAccountName"]
    audit_sa = audit_pod["spec"]["serviceAccountName"]
    assert operator_sa != audit_sa
    assert f"--operator-user=system:serviceaccount:tradingbot-system:{operator_sa}" in audit["args"]
    assert "--ingest-listen=" in audit["args"]
    (projected,) = [v for v in operator_pod["spec"]["volumes"] if "projected" in v]
    (source,) = projected["projected"]["sources"]
    assert source["serviceAccountToken"]["audience"] == "tradingbot-audit"
    (mount,) = [m for m in operator["volumeMounts"] if m["name"] == projected["name"]]
    token_file = env["TRADINGBOT_OPERATOR_AUDIT_TOKEN_FILE"]["value"]
    assert token_file == f"{mount['mountPath']}/{source['serviceAccountToken']['path']}"
    (service,) = [
        d for d in docs if d["kind"] == "Service" and d["spec"]["ports"][0]["name"] == "audit"
    ]
    url = f"http://{service['metadata']['name']}.tradingbot-system.svc:8901"
    assert env["TRADINGBOT_OPERATOR_AUDIT_URL"]["value"] == url
    assert env["TRADINGBOT_OPERATOR_BOT_ENV"]["value"] == f"AUDIT_URL={url}"

    # No selector reaches the other workload's pods.
    operator_labels = operator_pod["metadata"]["labels"]
    audit_labels = audit_pod["metadata"]["labels"]
    assert matches(service["spec"]["selector"], audit_labels)
    assert not matches(service["spec"]["selector"], operator_labels)
    assert not matches(deployment["spec"]["selector"]["matchLabels"], audit_labels)
    assert not matches(statefulset["spec"]["selector"]["matchLabels"], operator_labels)

    # Token and access reviews, and the chain head, are the audit identity's alone.
    for binding in (d for d in docs if d["kind"] in ("ClusterRoleBinding", "RoleBinding")):
        subjects = {s["name"] for s in binding["subjects"]}
        if binding["roleRef"]["name"] == "system:auth-delegator" or binding["metadata"][
            "name"
        ].endswith("-audit-head"):
            assert subjects == {audit_sa}, binding["metadata"]["name"]
        else:
            assert audit_sa not in subjects, binding["metadata"]["name"]


def test_every_alert_uses_metrics_the_code_exports() -> None:
    import re

    from tradingbot.metrics import BotMetrics
    from tradingbot_operator.metrics import OperatorMetrics

    exported: set[str] = set()
    for registry in (OperatorMetrics().registry, BotMetrics("b").registry):
        for family in registry.collect():
            exported.update(sample.name for sample in family.samples)
            exported.add(family.name)
            if family.type == "counter":  # labelled counters have no samples until used
                exported.add(family.name + "_total")
    docs = render_chart("tradingbot-system", **{"monitoring.enabled": "true"})
    (rules,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    exprs = [r["expr"] for g in rules["spec"]["groups"] for r in g["rules"]]
    assert len(exprs) >= 5
    used = {name for expr in exprs for name in re.findall(r"tradingbot_[a-z_]+", expr)}
    assert used and used <= exported, used - exported
    kinds = {d["kind"] for d in docs}
    assert {"ServiceMonitor", "PodMonitor", "PrometheusRule"} <= kinds
    assert "PrometheusRule" not in {d["kind"] for d in render_chart("tradingbot-system")}


def test_helm_template_works_with_no_flags_and_helm_knows_its_kubernetes() -> None:
    """The helm that `make tools` builds assumes the pinned Kubernetes, as a release build
    does, so the chart's kubeVersion constraint holds without --kube-version."""
    import subprocess

    helm = str(binaries.require_binary("helm"))
    rendered = subprocess.run(
        [helm, "template", str(CHART)], capture_output=True, text=True, timeout=60
    )
    assert rendered.returncode == 0, rendered.stderr
    assert "kind: Deployment" in rendered.stdout
    version = subprocess.run([helm, "version"], capture_output=True, text=True, timeout=30)
    assert f'Version:"v{binaries.read_versions()["HELM_VERSION"]}"' in version.stdout
    lint = subprocess.run(
        [helm, "lint", "--strict", str(CHART)], capture_output=True, text=True, timeout=60
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_the_leader_lease_goes_to_the_leader_election_priority_level(
    cluster: LocalCluster, api_client: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    """A fleet's cold start fills the operator's own flow (queued, then 429): its leader
    Lease must not wait in that queue, or the leader loses its Lease to its own fleet."""
    kube.apply(api_client, [d for d in render_chart(namespace) if d["kind"] in IDENTITY_KINDS])
    kubeconfig = kube.service_account_kubeconfig(
        cluster, api_client, namespace, chart_account(namespace), tmp_path
    )
    operator = config.new_client_from_config(config_file=str(kubeconfig))
    (schema,) = [d for d in render_chart(namespace) if d["kind"] == "FlowSchema"]
    uid = (
        client.FlowcontrolApiserverV1Api(api_client)
        .read_flow_schema(schema["metadata"]["name"])
        .metadata.uid
    )

    def flow_schema_of(call: Callable[[], Any]) -> str:
        try:
            headers = call()[2]
        except client.ApiException as err:  # a Lease not there yet answers 404, as classified
            headers = err.headers
        return str(headers.get("X-Kubernetes-PF-FlowSchema-UID"))

    leases = client.CoordinationV1Api(operator)
    kube.wait_for(  # the API server takes up a new FlowSchema within a second or so
        lambda: (
            flow_schema_of(
                lambda: leases.read_namespaced_lease_with_http_info(
                    "tradingbot-operator", namespace
                )
            )
            == uid
        ),
        timeout=20,
        message="the Lease read classified by the chart's FlowSchema",
    )
    pods = client.CoreV1Api(operator)
    assert flow_schema_of(lambda: pods.list_namespaced_pod_with_http_info(namespace)) != uid
