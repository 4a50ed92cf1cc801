"""Who changed what: identity from admission, not from anything a user can write."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubernetes import client

from localkube import product
from localkube.cluster import LocalCluster, free_port
from tests import kube
from tests.integration.operator.harness import Bots, Kubelet, OperatorProcess
from tests.integration.operator.test_restarts import base_spec
from tradingbot_operator.identity import (
    ANNOTATION_CHANGE_SIGNATURE,
    ANNOTATION_CHANGE_SOURCE,
    ANNOTATION_CHANGED_BY,
)
from tradingbot_operator.webhook import webhook_configurations

EDITOR_RULES = [
    client.V1PolicyRule(
        api_groups=["trading.r7.dev"],
        resources=["tradingbots"],
        verbs=["get", "list", "watch", "patch", "update"],
    )
]


@pytest.fixture
def webhook_operator(
    cluster: LocalCluster,
    api_client: client.ApiClient,
    kubeconfig: Path,
    namespace: str,
    tmp_path: Path,
    apply_crds: list[str],
) -> Iterator[OperatorProcess]:
    port = free_port()
    cert, key, ca_bundle = product.webhook_tls(cluster, tmp_path / "tls")
    proc = OperatorProcess(kubeconfig, namespace, tmp_path / "operator.log")
    proc.start(
        TRADINGBOT_OPERATOR_WEBHOOK_LISTEN=f"127.0.0.1:{port}",
        TRADINGBOT_OPERATOR_WEBHOOK_CERT_FILE=str(cert),
        TRADINGBOT_OPERATOR_WEBHOOK_KEY_FILE=str(key),
        TRADINGBOT_OPERATOR_IDENTITY_KEY_FILE=str(product.identity_key(tmp_path / "id.key")),
    )
    kube.wait_for(lambda: _listening(port), timeout=30, message="webhook server")
    name = f"tradingbot-test-{namespace}"
    configs = webhook_configurations(
        {"url": f"https://127.0.0.1:{port}", "caBundle": ca_bundle},
        namespace_selector={"matchLabels": {"kubernetes.io/metadata.name": namespace}},
        name=name,
    )
    kube.apply(api_client, configs)
    reg = client.AdmissionregistrationV1Api(api_client)
    yield proc
    proc.stop()
    reg.delete_mutating_webhook_configuration(name)
    reg.delete_validating_webhook_configuration(name)


def editor(rbac: client.RbacAuthorizationV1Api, namespace: str, name: str) -> None:
    rbac.create_namespaced_role(
        namespace,
        client.V1Role(metadata=client.V1ObjectMeta(name="bot-editor"), rules=EDITOR_RULES),
    )
    rbac.create_namespaced_role_binding(
        namespace,
        client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name=f"bot-editor-{name}"),
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="Role", name="bot-editor"
            ),
            subjects=[client.RbacV1Subject(kind="ServiceAccount", name=name, namespace=namespace)],
        ),
    )


def patch_as(api: client.ApiClient, namespace: str, body: dict, manager: str) -> dict:
    return dict(
        client.CustomObjectsApi(api).patch_namespaced_custom_object(
            "trading.r7.dev",
            "v1alpha1",
            namespace,
            "tradingbots",
            "bot-a",
            body,
            field_manager=manager,
        )
    )


def test_each_editor_is_named_and_an_annotation_cannot_claim_another_user(
    webhook_operator: OperatorProcess,
    bots: Bots,
    kubelet: Kubelet,
    rbac_api: client.RbacAuthorizationV1Api,
    sa_client: Callable[[str, str], client.ApiClient],
) -> None:
    ns = bots.namespace
    rbac_api.create_namespaced_role(
        ns, client.V1Role(metadata=client.V1ObjectMeta(name="bot-editor"), rules=EDITOR_RULES)
    )
    for who in ("alice", "bob"):
        rbac_api.create_namespaced_role_binding(
            ns,
            client.V1RoleBinding(
                metadata=client.V1ObjectMeta(name=f"bot-editor-{who}"),
                role_ref=client.V1RoleRef(
                    api_group="rbac.authorization.k8s.io", kind="Role", name="bot-editor"
                ),
                subjects=[client.RbacV1Subject(kind="ServiceAccount", name=who, namespace=ns)],
            ),
        )
    alice, bob = sa_client(ns, "alice"), sa_client(ns, "bob")
    alice_user = f"system:serviceaccount:{ns}:alice"
    bob_user = f"system:serviceaccount:{ns}:bob"
    bots.create("bot-a", base_spec(coalesceSeconds=1))
    bots.wait_running_with("bot-a")

    def allowed(call: Callable[[], dict]) -> dict:
        return kube.wait_for(lambda: _try(call), message="RBAC for the editor")

    stamped = allowed(
        lambda: patch_as(alice, ns, {"spec": {"risk": {"maxOpenPositions": 3}}}, "kubectl-edit")
    )
    annotations = stamped["metadata"]["annotations"]
    assert annotations[ANNOTATION_CHANGED_BY] == alice_user
    assert annotations[ANNOTATION_CHANGE_SOURCE] == "kubectl"
    kube.wait_for(
        lambda: bots.status("bot-a").get("restarts", {}).get("total") == 1,
        timeout=30,
        message="alice's restart",
    )
    bots.wait_running_with("bot-a")

    # bob writes a stamp naming alice without changing anything: the stamp is put back.
    forged = {ANNOTATION_CHANGED_BY: alice_user, ANNOTATION_CHANGE_SOURCE: "gitops"}
    after = allowed(
        lambda: patch_as(bob, ns, {"metadata": {"annotations": forged}}, "kubectl-annotate")
    )
    stamp = (ANNOTATION_CHANGED_BY, ANNOTATION_CHANGE_SOURCE, ANNOTATION_CHANGE_SIGNATURE)
    assert {k: after["metadata"]["annotations"][k] for k in stamp} == {
        k: annotations[k] for k in stamp
    }
    # bob changes the spec and claims to be alice: he is recorded as himself.
    after = patch_as(
        bob,
        ns,
        {"metadata": {"annotations": forged}, "spec": {"risk": {"maxOpenPositions": 4}}},
        "kubectl-tradingbot",
    )
    assert after["metadata"]["annotations"][ANNOTATION_CHANGED_BY] == bob_user
    assert after["metadata"]["annotations"][ANNOTATION_CHANGE_SOURCE] == "plugin"
    kube.wait_for(
        lambda: bots.status("bot-a").get("restarts", {}).get("total") == 2,
        timeout=30,
        message="bob's restart",
    )
    bots.wait_reason("bot-a", "RestartCompleted")

    changed = [e for e in bots.events("bot-a") if e.reason == "ConfigChanged"]
    by = sorted({e.message.rsplit("(by ", 1)[-1] for e in changed})
    assert by == [f"{alice_user} via kubectl)", f"{bob_user} via plugin)"]


def test_a_hand_written_stamp_is_reported_as_unverified(
    webhook_operator: OperatorProcess,
    bots: Bots,
    kubelet: Kubelet,
) -> None:
    bots.create("bot-a", base_spec(coalesceSeconds=0))
    bots.wait_running_with("bot-a")
    # Signed for another config: moving a stamp onto a new change does not verify.
    current = bots.get("bot-a")["metadata"]["annotations"]
    reg = client.AdmissionregistrationV1Api(bots.custom.api_client)
    # With the webhook out of the way (as if the operator were down) a forged stamp sticks...
    name = f"tradingbot-test-{bots.namespace}"
    saved = reg.read_mutating_webhook_configuration(name)
    reg.delete_mutating_webhook_configuration(name)
    try:
        bots.patch(
            "bot-a",
            {
                "metadata": {
                    "annotations": {
                        ANNOTATION_CHANGED_BY: "system:serviceaccount:kube-system:admin",
                        ANNOTATION_CHANGE_SOURCE: "gitops",
                        ANNOTATION_CHANGE_SIGNATURE: current[ANNOTATION_CHANGE_SIGNATURE],
                    }
                },
                "spec": {"risk": {"maxOpenPositions": 5}},
            },
        )
        bots.wait_reason("bot-a", "ConfigChanged")
    finally:
        saved.metadata.resource_version = None
        reg.create_mutating_webhook_configuration(saved)
    # ...but the operator does not believe it.
    changed = [e for e in bots.events("bot-a") if e.reason == "ConfigChanged"]
    assert changed and all("admin" not in e.message for e in changed)
    assert all("(by" not in e.message for e in changed)


def test_strategy_params_are_checked_per_profile_by_the_webhook(
    webhook_operator: OperatorProcess,
    bots: Bots,
) -> None:
    spec = base_spec()
    spec["strategy"] = {"params": {"no_such_param": 3}}
    rejected = kube.wait_for(
        lambda: _rejection(bots, spec), timeout=20, message="the webhook to reject the spec"
    )
    assert rejected.status == 422
    message = json.loads(rejected.body)["message"]
    assert "spec.strategy.params.no_such_param" in message


def _rejection(bots: Bots, spec: dict) -> client.ApiException | None:
    try:
        bots.create("bot-bad", spec)
    except client.ApiException as err:
        return err
    bots.delete("bot-bad")  # the webhook was not serving yet; try again
    return None


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _try(call: Callable[[], dict]) -> dict | None:
    try:
        return call()
    except client.ApiException as err:
        if err.status == 403:
            return None
        raise
