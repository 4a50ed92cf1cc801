"""GitOps without fights: a self-healing Argo CD Application syncs the samples from Git with
server-side apply, while people stop, resume and halt bots imperatively. Argo CD's comparison
is replayed here: the sample as Git holds it is applied again (as a self-heal sync would) with
Argo CD's field manager, and the live object must be in sync for Argo CD (every field Git
states has Git's value; the annotations the Application ignores are left alone) while the
imperative stop or halt stays in force."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.dynamic import DynamicClient

from localkube import binaries
from tests.integration.operator.harness import Bots, Kubelet, OperatorProcess
from tradingbot_api.constants import ANNOTATION_HALT, ANNOTATION_SUSPEND
from tradingbot_plugin.patches import halt_patch, suspend_patch, unhalt_patch

ARGOCD_MANAGER = "argocd-controller"
SAMPLE = binaries.REPO_ROOT / "config" / "samples" / "bot-medio.yaml"
APPLICATION = binaries.REPO_ROOT / "config" / "argocd" / "application.yaml"


def sync(api: client.ApiClient, namespace: str, desired: dict[str, Any]) -> dict[str, Any]:
    """What a self-heal sync with ServerSideApply=true sends: Git's manifest, forced."""
    resource = DynamicClient(api).resources.get(
        api_version=desired["apiVersion"], kind="TradingBot"
    )
    return resource.server_side_apply(
        body=desired, namespace=namespace, field_manager=ARGOCD_MANAGER, force_conflicts=True
    ).to_dict()


def ignored_pointers() -> list[str]:
    app = yaml.safe_load(APPLICATION.read_text())
    (rule,) = app["spec"]["ignoreDifferences"]
    return list(rule["jsonPointers"])


def out_of_sync(desired: Any, live: Any, path: str = "") -> list[str]:
    """Fields Git states whose live value differs (Argo CD's diff after normalisation)."""
    ignored = {p.replace("~1", "/") for p in ignored_pointers()}
    if path.replace("~1", "/") in ignored:
        return []
    if isinstance(desired, dict):
        if not isinstance(live, dict):
            return [path or "/"]
        return [d for k, v in desired.items() for d in out_of_sync(v, live.get(k), f"{path}/{k}")]
    return [] if desired == live else [path]


def plugin(bots: Bots, body: dict[str, Any]) -> None:
    bots.custom.patch_namespaced_custom_object(
        "trading.r7.dev",
        "v1alpha1",
        bots.namespace,
        "tradingbots",
        "bot-medio",
        body,
        field_manager="kubectl-tradingbot",
    )


def test_a_self_healing_sync_never_undoes_a_stop_or_a_halt(
    operator: OperatorProcess, bots: Bots, kubelet: Kubelet, api_client: client.ApiClient
) -> None:
    desired = yaml.safe_load(Path(SAMPLE).read_text())
    desired["metadata"].pop("namespace", None)
    sync(api_client, bots.namespace, desired)
    bots.wait_running_with("bot-medio")

    plugin(bots, suspend_patch(True, "maintenance"))
    bots.wait_phase("bot-medio", "Stopped")
    live = sync(api_client, bots.namespace, desired)  # self-heal
    assert out_of_sync(desired, live) == []
    assert live["metadata"]["annotations"][ANNOTATION_SUSPEND] == "true"
    assert bots.wait_phase("bot-medio", "Stopped")

    plugin(bots, suspend_patch(False, "maintenance over"))
    bots.wait_running_with("bot-medio")
    plugin(bots, halt_patch("runaway"))
    bots.wait_phase("bot-medio", "Halted")
    live = sync(api_client, bots.namespace, desired)
    assert out_of_sync(desired, live) == []
    assert live["metadata"]["annotations"][ANNOTATION_HALT] == "true"
    assert bots.status("bot-medio")["phase"] == "Halted"

    plugin(bots, unhalt_patch("explained"))
    bots.wait_running_with("bot-medio")
    # The declarative stop is Git's: a commit with suspend: true stops it, and the sync keeps it.
    desired["spec"]["suspend"] = True
    live = sync(api_client, bots.namespace, desired)
    assert out_of_sync(desired, live) == []
    bots.wait_phase("bot-medio", "Stopped")


def test_the_replayed_comparison_does_see_a_real_difference() -> None:
    desired = {"spec": {"suspend": False, "risk": {"maxOpenPositions": 3}}}
    live = {"spec": {"suspend": True, "risk": {"maxOpenPositions": 3}}, "metadata": {}}
    assert out_of_sync(desired, live) == ["/spec/suspend"]
