"""A hostile editor against the chart's admission policies and the operator's own checks.

Every subject here is a ServiceAccount with one of the chart's user roles (viewer, trader,
admin) bound in the test namespace, so RBAC and the policies' authorizer checks are real.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from localkube import binaries, product
from localkube.cluster import LocalCluster
from tests import kube
from tests.integration.invalid_specs import VALID_BASE_SPEC, spec_with
from tests.integration.operator.harness import Bots, Kubelet, OperatorProcess, create_as, patch_as
from tradingbot_api.constants import (
    ANNOTATION_CHANGE_SOURCE,
    ANNOTATION_CHANGE_STAMP,
    ANNOTATION_CHANGED_BY,
    ANNOTATION_CREDENTIALS_APPROVED,
    ANNOTATION_HALT,
    ANNOTATION_RESTART_REASON,
    API_GROUP,
    CONTROL_ANNOTATIONS,
    MAX_CONTROL_ANNOTATION_LENGTH,
    MUTATING_POLICIES,
    PLURAL,
    STAMP_ANNOTATIONS,
    VALIDATING_POLICIES,
)
from tradingbot_api.params import PROFILES, param_names

CHART = binaries.REPO_ROOT / "helm" / "tradingbot-operator"
ROLES = ("viewer", "trader", "admin")


# -- the chart's policies say what the code says ------------------------------------------------


def policies() -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in product.admission_policies()}


def test_the_policies_the_operator_trusts_are_the_ones_the_chart_installs() -> None:
    docs = product.admission_policies()
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    expected = {(k, n) for n in MUTATING_POLICIES for k in ("MutatingAdmissionPolicy",)}
    expected |= {(k + "Binding", n) for k, n in expected}
    expected |= {
        (k, n)
        for n in VALIDATING_POLICIES
        for k in ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")
    }
    assert names == expected
    assert all(d["spec"].get("failurePolicy", "Fail") == "Fail" for d in docs if "spec" in d)


def test_the_policies_name_the_keys_and_parameters_of_the_api_package() -> None:
    admission = policies()[("ValidatingAdmissionPolicy", VALIDATING_POLICIES[0])]["spec"]
    variables = {v["name"]: v["expression"] for v in admission["variables"]}
    stamp_keys = re.findall(r"'([^']+)'", variables["changeStampKeys"])
    stamp_keys += re.findall(r"'([^']+)'", variables["credentialsStampKeys"])
    assert stamp_keys == list(STAMP_ANNOTATIONS)
    controlled = re.search(r"\[([^\]]+)\]\.exists", variables["controlled"])
    assert controlled is not None
    assert re.findall(r"'([^']+)'", controlled.group(1)) == list(CONTROL_ANNOTATIONS)
    table = yaml.safe_load((CHART / "files" / "strategy-params.yaml").read_text())
    assert table == {p: list(param_names(p)) for p in PROFILES}
    assert str(MAX_CONTROL_ANNOTATION_LENGTH) in json.dumps(admission["validations"])


# -- subjects ----------------------------------------------------------------------------------


def refusal(call: Callable[[], Any]) -> client.ApiException:
    with pytest.raises(client.ApiException) as refused:
        call()
    return refused.value


def secret(core: client.CoreV1Api, namespace: str, name: str = "exchange-keys") -> str:
    core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name=name),
            string_data={"apiKey": "AKIA-not-yours", "secret": "s3cr3t-not-yours"},
        ),
    )
    return name


def live_spec(secret_name: str) -> dict:
    return spec_with(
        {"exchange.mode": "sandbox", "exchange.credentialsSecretRef": {"name": secret_name}}
    )


# -- admission ----------------------------------------------------------------------------------


def test_the_secret_theft_reproduction_fails_at_admission(
    subject: Callable[[str], tuple[client.ApiClient, str]],
    namespace: str,
    core_api: client.CoreV1Api,
    bots: Bots,
) -> None:
    trader, user = subject("trader")
    keys = secret(core_api, namespace)
    refused = refusal(lambda: create_as(trader, namespace, "thief", live_spec(keys)))
    assert refused.status == 403
    assert f"{user} may not get secret {keys}" in json.loads(refused.body)["message"]
    # Nor by moving an existing bot onto the Secret, nor by choosing the image it runs.
    create_as(trader, namespace, "bot-a", VALID_BASE_SPEC)
    moved = {"spec": {"exchange": {"credentialsSecretRef": {"name": keys}}}}
    assert refusal(lambda: patch_as(trader, namespace, "bot-a", moved)).status == 403
    image = {"spec": {"image": "attacker.example/miner:1"}}
    message = json.loads(refusal(lambda: patch_as(trader, namespace, "bot-a", image)).body)
    assert "spec.image" in message["message"]
    # Someone who may read the Secret may reference it (the admin here is system:masters).
    bots.create("allowed", live_spec(keys))


def test_only_subjects_with_update_on_tradingbots_halt_touch_the_kill_switch(
    subject: Callable[[str], tuple[client.ApiClient, str]], namespace: str
) -> None:
    viewer, _ = subject("viewer")
    trader, _ = subject("trader")
    admin, admin_user = subject("admin")
    create_as(trader, namespace, "bot-a", VALID_BASE_SPEC)
    halt = {"metadata": {"annotations": {ANNOTATION_HALT: "true"}}}
    unhalt = {"metadata": {"annotations": {ANNOTATION_HALT: None}}}
    assert refusal(lambda: patch_as(viewer, namespace, "bot-a", halt)).status == 403
    refused = refusal(lambda: patch_as(trader, namespace, "bot-a", halt))
    assert refused.status == 403 and "tradingbots/halt" in json.loads(refused.body)["message"]
    # A trader may still edit, restart, stop and resume.
    patch_as(trader, namespace, "bot-a", {"spec": {"risk": {"maxOpenPositions": 3}}})
    patch_as(trader, namespace, "bot-a", {"spec": {"suspend": True}})
    halted = patch_as(admin, namespace, "bot-a", halt, manager="kubectl-tradingbot")
    assert halted["metadata"]["annotations"][ANNOTATION_CHANGED_BY] == admin_user
    assert refusal(lambda: patch_as(trader, namespace, "bot-a", unhalt)).status == 403
    patch_as(admin, namespace, "bot-a", unhalt)
    bad = {"metadata": {"annotations": {ANNOTATION_HALT: "maybe"}}}
    assert refusal(lambda: patch_as(admin, namespace, "bot-a", bad)).status == 422
    long_reason = {"metadata": {"annotations": {ANNOTATION_RESTART_REASON: "x" * 2000}}}
    assert refusal(lambda: patch_as(trader, namespace, "bot-a", long_reason)).status == 422


def test_stamps_are_written_by_the_api_server_and_cannot_be_forged(
    subject: Callable[[str], tuple[client.ApiClient, str]], namespace: str, bots: Bots
) -> None:
    trader, user = subject("trader")
    created = create_as(trader, namespace, "bot-a", VALID_BASE_SPEC)
    annotations = created["metadata"]["annotations"]
    assert annotations[ANNOTATION_CHANGED_BY] == user
    assert annotations[ANNOTATION_CHANGE_STAMP].startswith("uid=;rv=;generation=1;time=")
    forged = {ANNOTATION_CHANGED_BY: "localkube-admin", ANNOTATION_CHANGE_SOURCE: "gitops"}
    refused = refusal(
        lambda: patch_as(trader, namespace, "bot-a", {"metadata": {"annotations": forged}})
    )
    assert refused.status == 403 and "change stamps" in json.loads(refused.body)["message"]
    # Claiming another name along with a real change: recorded as who they are.
    edit = {"metadata": {"annotations": forged}, "spec": {"risk": {"maxOpenPositions": 4}}}
    after = patch_as(trader, namespace, "bot-a", edit, manager="kubectl-tradingbot")
    meta = after["metadata"]
    assert meta["annotations"][ANNOTATION_CHANGED_BY] == user
    assert meta["annotations"][ANNOTATION_CHANGE_SOURCE] == "plugin"
    fields = dict(f.split("=", 1) for f in meta["annotations"][ANNOTATION_CHANGE_STAMP].split(";"))
    assert fields["uid"] == meta["uid"] and fields["generation"] == str(meta["generation"])
    assert int(fields["rv"]) < int(meta["resourceVersion"])  # written over the version before


# -- the operator's own checks, with the policies gone ----------------------------------------


@pytest.fixture
def chart_operator(
    cluster: LocalCluster, api_client: client.ApiClient, namespace: str, tmp_path: Path
) -> Iterator[OperatorProcess]:
    """The operator with exactly the chart's permissions (it can read no Secret)."""
    identity = [
        d
        for d in product.render_chart(namespace, watchNamespace=namespace)
        if d["kind"] in ("ServiceAccount", "Role", "RoleBinding")
        or d["metadata"]["name"].endswith("-admission")
    ]
    kube.apply(api_client, identity)
    sa = product.chart_account(namespace)
    kubeconfig = kube.service_account_kubeconfig(cluster, api_client, namespace, sa, tmp_path)
    proc = OperatorProcess(kubeconfig, namespace, tmp_path / "operator.log").start()
    yield proc
    proc.stop()


def degraded(bots: Bots, name: str, reason: str) -> dict | None:
    for cond in bots.status(name).get("conditions") or []:
        if cond["type"] == "Degraded" and cond["status"] == "True" and cond["reason"] == reason:
            return dict(cond)
    return None


def test_without_the_policies_the_operator_refuses_to_mount_a_secret_for_an_editor(
    without_admission_policies: None,
    chart_operator: OperatorProcess,
    subject: Callable[[str], tuple[client.ApiClient, str]],
    namespace: str,
    core_api: client.CoreV1Api,
    rbac_api: client.RbacAuthorizationV1Api,
    api_client: client.ApiClient,
    bots: Bots,
    kubelet: Kubelet,
) -> None:
    trader, _ = subject("trader")
    keys = secret(core_api, namespace)
    create_as(trader, namespace, "thief", live_spec(keys))  # nothing in the API server stops it
    cond = kube.wait_for(
        lambda: degraded(bots, "thief", "SecretNotAllowed"), message="SecretNotAllowed"
    )
    assert keys in cond["message"]
    assert bots.status("thief")["phase"] == "Failed"
    assert bots.pods("thief") == []
    for role in rbac_api.list_namespaced_role(namespace).items:
        for rule in role.rules or []:
            assert "secrets" not in (rule.resources or []), role.metadata.name
    accounts = core_api.list_namespaced_service_account(namespace).items
    assert all(
        ANNOTATION_CREDENTIALS_APPROVED not in (a.metadata.annotations or {}) for a in accounts
    )
    assert "SecretNotAllowed" in bots.reasons("thief")
    # The policies come back; a change by someone who may read the Secret approves it.
    product.install_admission_policies(api_client)
    bots.patch("thief", {"spec": {"exchange": {"credentialsSecretRef": {"name": "other"}}}})
    bots.patch("thief", {"spec": {"exchange": {"credentialsSecretRef": {"name": keys}}}})
    bots.wait_running_with("thief", timeout=60)  # the operator re-reads the policies every 10 s
    (pod,) = bots.pods("thief")
    mounted = [v.secret.secret_name for v in pod.spec.volumes if v.secret]
    assert mounted == [keys]
    account = core_api.read_namespaced_service_account("tradingbot-thief", namespace)
    assert account.metadata.annotations[ANNOTATION_CREDENTIALS_APPROVED] == keys
    assert chart_operator.metric("tradingbot_operator_reconcile_errors_total") == 0


def test_an_unknown_parameter_without_the_policies_never_stops_the_running_bot(
    operator: OperatorProcess, bots: Bots, kubelet: Kubelet, api_client: client.ApiClient
) -> None:
    bots.create("bot-a", spec_with({"restartPolicy.coalesceSeconds": 0}))
    bots.wait_running_with("bot-a")
    (before,) = bots.pods("bot-a")
    kube.remove_admission_policies(api_client)
    try:
        bots.patch("bot-a", {"spec": {"strategy": {"params": {"fast": 9}}}})
        cond = kube.wait_for(lambda: degraded(bots, "bot-a", "SpecInvalid"), message="SpecInvalid")
        assert "spec.strategy.params.fast" in cond["message"]
        assert "SpecInvalid" in bots.reasons("bot-a")
        status = bots.status("bot-a")
        assert status["phase"] == "Running" and status.get("restarts", {}).get("total", 0) == 0
        assert [p.metadata.uid for p in bots.pods("bot-a")] == [before.metadata.uid]
        # A fixed edit restarts it once.
        bots.patch("bot-a", {"spec": {"strategy": {"params": {"fast": None, "window": 30}}}})
        kube.wait_for(
            lambda: bots.status("bot-a").get("restarts", {}).get("total") == 1,
            message="one restart",
        )
        bots.wait_running_with("bot-a")
        assert degraded(bots, "bot-a", "SpecInvalid") is None
    finally:
        product.install_admission_policies(api_client)


def test_a_copied_stamp_reads_as_unverified(
    operator: OperatorProcess,
    subject: Callable[[str], tuple[client.ApiClient, str]],
    namespace: str,
    bots: Bots,
    kubelet: Kubelet,
    api_client: client.ApiClient,
) -> None:
    trader, _ = subject("trader")
    admin, admin_user = subject("admin")
    create_as(trader, namespace, "bot-a", VALID_BASE_SPEC)
    bots.wait_running_with("bot-a")
    halt = {"metadata": {"annotations": {ANNOTATION_HALT: "true"}}}
    halted = patch_as(admin, namespace, "bot-a", halt)
    bots.wait_phase("bot-a", "Halted")
    admin_stamp = {
        k: v
        for k, v in halted["metadata"]["annotations"].items()
        if k.endswith(("changed-by", "changed-by-groups", "change-source", "change-stamp"))
    }
    patch_as(admin, namespace, "bot-a", {"metadata": {"annotations": {ANNOTATION_HALT: None}}})
    bots.wait_running_with("bot-a")
    kube.remove_admission_policies(api_client)
    try:
        # The editor replays the admin's halt stamp on a halt of their own.
        patch_as(
            trader,
            namespace,
            "bot-a",
            {"metadata": {"annotations": {**admin_stamp, ANNOTATION_HALT: "true"}}},
        )
        bots.wait_phase("bot-a", "Halted")  # the kill switch works whoever pulls it
    finally:
        product.install_admission_policies(api_client)
    halts = [e for e in bots.events("bot-a") if e.reason == "Halted"]
    kube.wait_for(
        lambda: len([e for e in bots.events("bot-a") if e.reason == "Halted"]) == 2,
        message="two halts",
    )
    halts = sorted(
        (e for e in bots.events("bot-a") if e.reason == "Halted"),
        key=lambda e: int(e.metadata.resource_version),
    )
    assert f"by {admin_user}" in halts[0].message
    assert admin_user not in halts[1].message, "a replayed stamp was believed"


def pod_refused(api: client.ApiClient, namespace: str, node_selector: dict[str, str]) -> bool:
    """Whether the API server refuses (dry run) a minimal pod with this node selector."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "probe-"},
        "spec": {
            "nodeSelector": node_selector,
            "containers": [{"name": "c", "image": "probe"}],
        },
    }
    try:
        client.CoreV1Api(api).create_namespaced_pod(namespace, pod, dry_run="All")
    except client.ApiException as err:
        return err.status in (400, 403, 422)
    return False


def test_a_new_pod_the_cluster_refuses_never_replaces_the_running_one(
    operator: OperatorProcess, bots: Bots, kubelet: Kubelet, api_client: client.ApiClient
) -> None:
    """A cluster's own pod policy (here a ValidatingAdmissionPolicy on pods, as Kyverno or
    Gatekeeper would be) refuses the pod a valid spec needs: the operator finds out with a
    dry run before it stops anything."""
    name = f"no-forbidden-pool-{bots.namespace}"
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["pods"],
                    }
                ]
            },
            "validations": [
                {
                    "expression": "!has(object.spec.nodeSelector) || !('pool' in object.spec."
                    "nodeSelector) || object.spec.nodeSelector['pool'] != 'forbidden'",
                    "message": "pool forbidden is closed",
                }
            ],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {
            "policyName": name,
            "validationActions": ["Deny"],
            "matchResources": {
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": bots.namespace}
                }
            },
        },
    }
    kube.apply(api_client, [policy, binding])
    reg = client.AdmissionregistrationV1Api(api_client)
    try:
        # A new policy takes a moment to be enforced; a change made before then is one the
        # cluster did not refuse yet.
        kube.wait_for(
            lambda: (
                pod_refused(api_client, bots.namespace, {"pool": "forbidden"})
                and not pod_refused(api_client, bots.namespace, {"pool": "open"})
            ),
            message="the pod policy enforced",
        )
        bots.create("bot-a", spec_with({"restartPolicy.coalesceSeconds": 0}))
        bots.wait_running_with("bot-a")
        (before,) = bots.pods("bot-a")
        bots.patch("bot-a", {"spec": {"nodeSelector": {"pool": "forbidden"}}})
        cond = kube.wait_for(lambda: degraded(bots, "bot-a", "SpecInvalid"), message="refused")
        assert "pool forbidden is closed" in cond["message"]
        assert [p.metadata.uid for p in bots.pods("bot-a")] == [before.metadata.uid]
        assert bots.status("bot-a").get("restarts", {}).get("total", 0) == 0
        bots.patch("bot-a", {"spec": {"nodeSelector": {"pool": "open"}}})
        kube.wait_for(
            lambda: bots.status("bot-a").get("restarts", {}).get("total") == 1, message="restart"
        )
        bots.wait_running_with("bot-a")
        assert degraded(bots, "bot-a", "SpecInvalid") is None
    finally:
        reg.delete_validating_admission_policy_binding(name)
        reg.delete_validating_admission_policy(name)


def test_only_the_admin_role_reads_the_audit_log_and_pulls_the_kill_switch(
    subject: Callable[[str], tuple[client.ApiClient, str]],
    namespace: str,
    api_client: client.ApiClient,
) -> None:
    """What the audit sidecar and the admission policy ask RBAC, asked for each role."""
    authz = client.AuthorizationV1Api(api_client)
    expected = {
        ("viewer", "get", "audit"): False,
        ("trader", "get", "audit"): False,
        ("admin", "get", "audit"): True,
        ("viewer", "update", "halt"): False,
        ("trader", "update", "halt"): False,
        ("admin", "update", "halt"): True,
        ("trader", "get", ""): True,
        ("trader", "patch", ""): True,
        ("viewer", "patch", ""): False,
    }
    for (role, verb, sub), allowed in expected.items():
        _, user = subject(role)
        review = client.V1SubjectAccessReview(
            spec=client.V1SubjectAccessReviewSpec(
                user=user,
                groups=["system:serviceaccounts", f"system:serviceaccounts:{namespace}"],
                resource_attributes=client.V1ResourceAttributes(
                    namespace=namespace,
                    verb=verb,
                    group=API_GROUP,
                    resource=PLURAL,
                    subresource=sub or None,
                ),
            )
        )
        answer = authz.create_subject_access_review(review).status.allowed
        assert bool(answer) is allowed, (role, verb, sub)
