"""Each bot runs as its own ServiceAccount that can touch only its own objects."""

from __future__ import annotations

from collections.abc import Callable

from kubernetes import client

from tests.integration.operator.harness import Bots, Kubelet, OperatorProcess
from tests.integration.operator.test_restarts import base_spec


def denied(call: Callable[[], object]) -> bool:
    try:
        call()
    except client.ApiException as err:
        return err.status == 403
    return False


def test_bot_identity_is_least_privilege_and_pods_pass_restricted_pod_security(
    bots: Bots,
    operator: OperatorProcess,
    kubelet: Kubelet,
    sa_client: Callable[[str, str], client.ApiClient],
    core_api: client.CoreV1Api,
) -> None:
    ns = bots.namespace
    core_api.patch_namespace(
        ns, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}
    )
    for name in ("bot-a", "bot-b"):
        bots.create(name, base_spec())
    for name in ("bot-a", "bot-b"):
        bots.wait_running_with(name)  # the pods were admitted under `restricted`

    api = sa_client(ns, "tradingbot-bot-a")
    custom, core = client.CustomObjectsApi(api), client.CoreV1Api(api)
    coord = client.CoordinationV1Api(api)

    assert custom.get_namespaced_custom_object(
        "trading.r7.dev", "v1alpha1", ns, "tradingbots", "bot-a"
    )
    assert denied(
        lambda: custom.get_namespaced_custom_object(
            "trading.r7.dev", "v1alpha1", ns, "tradingbots", "bot-b"
        )
    )
    cm = core.read_namespaced_config_map("bot-a-state", ns)
    cm.data = {"state.json": "{}"}
    core.replace_namespaced_config_map("bot-a-state", ns, cm)
    assert denied(lambda: core.read_namespaced_config_map("bot-b-state", ns))
    assert denied(lambda: core.delete_namespaced_config_map("bot-a-state", ns))
    assert coord.read_namespaced_lease("bot-a-trader", ns)
    assert denied(lambda: coord.read_namespaced_lease("bot-b-trader", ns))
    assert denied(lambda: core.list_namespaced_secret(ns))
    assert denied(lambda: core.list_namespaced_pod(ns))
    core.create_namespaced_event(
        ns,
        client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name="bot-a."),
            involved_object=client.V1ObjectReference(kind="TradingBot", name="bot-a", namespace=ns),
            reason="Probe",
            message="bots may post events",
            type="Normal",
        ),
    )


def test_bot_may_patch_only_its_own_status(
    bots: Bots,
    operator: OperatorProcess,
    kubelet: Kubelet,
    sa_client: Callable[[str, str], client.ApiClient],
) -> None:
    for name in ("bot-a", "bot-b"):
        bots.create(name, base_spec())
        bots.wait_running_with(name)
    custom = client.CustomObjectsApi(sa_client(bots.namespace, "tradingbot-bot-a"))
    patch = {"status": {"positions": {"open": 1, "symbols": ["BTC/USDT"], "notional": 10.0}}}
    custom.patch_namespaced_custom_object_status(
        "trading.r7.dev", "v1alpha1", bots.namespace, "tradingbots", "bot-a", patch
    )
    assert bots.status("bot-a")["positions"]["open"] == 1
    assert denied(
        lambda: custom.patch_namespaced_custom_object_status(
            "trading.r7.dev", "v1alpha1", bots.namespace, "tradingbots", "bot-b", patch
        )
    )
    assert denied(
        lambda: custom.patch_namespaced_custom_object(
            "trading.r7.dev",
            "v1alpha1",
            bots.namespace,
            "tradingbots",
            "bot-a",
            {"spec": {"suspend": True}},
        )
    )
