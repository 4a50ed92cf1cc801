"""What the audit log says is what happened: every control action with its reason and who
gave it, and an operator upgrade that reads the pods its predecessor stamped without
restarting them."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from kubernetes import client

from tests import kube
from tests.integration.conftest import SidecarProcess
from tests.integration.invalid_specs import spec_with
from tests.integration.operator.harness import Bots, Kubelet, OperatorProcess
from tradingbot_api.constants import ANNOTATION_APPLIED_SPEC
from tradingbot_audit import AuditFilter, query
from tradingbot_operator.hashing import canonical_json
from tradingbot_plugin.patches import (
    halt_patch,
    restart_patch,
    suspend_patch,
    unhalt_patch,
)

PLUGIN = "kubectl-tradingbot"


def plugin_patch(bots: Bots, name: str, body: dict) -> None:
    bots.custom.patch_namespaced_custom_object(
        "trading.r7.dev",
        "v1alpha1",
        bots.namespace,
        "tradingbots",
        name,
        body,
        field_manager=PLUGIN,
    )


def test_the_reasons_of_all_five_control_actions_are_in_the_audit_log(
    start_sidecar: Callable[..., SidecarProcess],
    start_operator: Callable[..., OperatorProcess],
    bots: Bots,
    kubelet: Kubelet,
    tmp_path: Path,
) -> None:
    log_dir = tmp_path / "audit"
    sidecar = start_sidecar(log_dir)
    start_operator(TRADINGBOT_OPERATOR_AUDIT_URL=sidecar.ingest_url)
    bots.create("bot-a", spec_with({"restartPolicy.coalesceSeconds": 0}))
    bots.wait_running_with("bot-a")
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    steps = [
        ("restart", restart_patch(stamp, "reason: rotate keys"), "Running"),
        ("stop", suspend_patch(True, "reason: exchange maintenance"), "Stopped"),
        ("resume", suspend_patch(False, "reason: maintenance over"), "Running"),
        ("halt", halt_patch("reason: runaway losses"), "Halted"),
        ("unhalt", unhalt_patch("reason: losses explained"), "Running"),
    ]
    for action, body, phase in steps:
        plugin_patch(bots, "bot-a", body)
        if action == "restart":
            kube.wait_for(
                lambda: bots.status("bot-a").get("restarts", {}).get("total") == 1,
                message="the restart",
            )
        bots.wait_phase("bot-a", phase)
        if phase == "Running":
            bots.wait_running_with("bot-a")
    expected = {action: body["metadata"]["annotations"] for action, body, _ in steps}

    def recorded() -> dict[str, set[str]]:
        events = query(log_dir, AuditFilter(target=("bot-a",)), limit=None)
        reasons: dict[str, set[str]] = {}
        for event in events:
            reason = (event.get("details") or {}).get("reason")
            if reason:
                reasons.setdefault(event["event_type"], set()).add(reason)
        return reasons

    def all_there() -> dict[str, set[str]] | None:
        reasons = recorded()
        wanted = {
            "restart": "reason: rotate keys",
            "stop": "reason: exchange maintenance",
            "resume": "reason: maintenance over",
            "halt": "reason: runaway losses",
        }
        if all(text in reasons.get(kind, set()) for kind, text in wanted.items()) and (
            "reason: losses explained" in reasons.get("resume", set())
        ):
            return reasons
        return None

    reasons = kube.wait_for(all_there, timeout=30, message="every reason in the audit log")
    assert expected  # the plugin's own patches carried the reasons
    by_user = [
        e for e in query(log_dir, AuditFilter(target=("bot-a",)), limit=None) if e.get("user_id")
    ]
    assert {e["source"] for e in by_user} == {"plugin"}, reasons
    assert all(e["user_id"] == "localkube-admin" for e in by_user)


def test_an_operator_upgrade_reads_pods_stamped_by_the_previous_version_without_restarting(
    start_operator: Callable[..., OperatorProcess],
    bots: Bots,
    kubelet: Kubelet,
    core_api: client.CoreV1Api,
) -> None:
    spec = spec_with({"restartPolicy.coalesceSeconds": 0, "nodeSelector": {"pool": "bots"}})
    operator = start_operator()
    bots.create("bot-a", spec)
    bots.wait_running_with("bot-a")
    (pod,) = bots.pods("bot-a")
    operator.stop()
    # The previous version kept the whole applied spec on the pod, as stored (defaults in).
    stored = bots.get("bot-a")["spec"]
    core_api.patch_namespaced_pod(
        pod.metadata.name,
        bots.namespace,
        {"metadata": {"annotations": {ANNOTATION_APPLIED_SPEC: canonical_json(stored)}}},
    )
    upgraded = start_operator()
    time.sleep(3)  # several passes of the new operator
    status = bots.status("bot-a")
    assert status.get("restarts", {}).get("total", 0) == 0
    assert [p.metadata.uid for p in bots.pods("bot-a")] == [pod.metadata.uid]
    assert status["phase"] == "Running" and not status.get("pendingAction")
    # A change is still described against what the old pod was started with.
    bots.patch("bot-a", {"spec": {"risk": {"maxOpenPositions": 4}}})
    kube.wait_for(
        lambda: bots.status("bot-a").get("restarts", {}).get("total") == 1, message="restart"
    )
    changed = [e for e in bots.events("bot-a") if e.reason == "ConfigChanged"]
    assert changed and "spec.risk.maxOpenPositions: 2 -> 4" in changed[0].message
    assert "nodeSelector" not in changed[0].message  # unchanged, whichever format it was in
    applied = json.loads(bots.pods("bot-a")[0].metadata.annotations[ANNOTATION_APPLIED_SPEC])
    assert applied["nodeSelector"].startswith("sha256:")
    assert upgraded.metric("tradingbot_operator_reconcile_errors_total") == 0
