"""Golden files for everything the operator creates for a bot.

Regenerate after an intended change with `UPDATE_GOLDEN=1 make test-unit` and review the diff.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import yaml

from tests.integration.invalid_specs import VALID_BASE_SPEC
from tradingbot_operator.render import (
    BotRef,
    render_bot_objects,
    render_bot_pod,
)
from tradingbot_operator.settings import OperatorSettings

GOLDEN = Path(__file__).parent / "golden"
BOT = BotRef(namespace="trading", name="bot-medio", uid="0a1b2c3d-0000-4000-8000-000000000001")
SETTINGS = OperatorSettings(bot_image="ghcr.io/r7/tradingbot:test")


def pvc_spec() -> dict:
    spec = copy.deepcopy(VALID_BASE_SPEC)
    spec["state"] = {"backend": "pvc", "pvc": {"size": "2Gi", "storageClassName": "fast"}}
    spec["exchange"] = {
        "id": "kraken",
        "mode": "live",
        "credentialsSecretRef": {"name": "kraken-keys"},
    }
    spec["nodeSelector"] = {"pool": "trading"}
    return spec


CASES = {
    "pod-configmap-state": lambda: render_bot_pod(
        BOT, VALID_BASE_SPEC, "0123456789abcdef", SETTINGS
    ),
    "pod-pvc-state-live": lambda: render_bot_pod(BOT, pvc_spec(), "fedcba9876543210", SETTINGS),
    "objects-configmap-state": lambda: render_bot_objects(BOT, VALID_BASE_SPEC),
    "objects-pvc-state-live": lambda: render_bot_objects(BOT, pvc_spec()),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_rendered_objects_match_their_golden_file(case: str) -> None:
    rendered = yaml.safe_dump(CASES[case](), sort_keys=True)
    path = GOLDEN / f"{case}.yaml"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(rendered)
    assert path.exists(), f"missing golden file {path}; run with UPDATE_GOLDEN=1"
    assert rendered == path.read_text()


def test_pod_meets_the_restricted_pod_security_profile() -> None:
    pod = render_bot_pod(BOT, VALID_BASE_SPEC, "0123456789abcdef", SETTINGS)
    spec = pod["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in spec["containers"]:
        ctx = container["securityContext"]
        assert ctx["allowPrivilegeEscalation"] is False
        assert ctx["readOnlyRootFilesystem"] is True
        assert ctx["capabilities"] == {"drop": ["ALL"]}


def test_the_operator_default_image_is_not_part_of_the_pod_identity() -> None:
    """Upgrading the operator (new default image) must not rename or re-hash running pods."""
    a = render_bot_pod(BOT, VALID_BASE_SPEC, "0123456789abcdef", SETTINGS)
    b = render_bot_pod(
        BOT,
        VALID_BASE_SPEC,
        "0123456789abcdef",
        OperatorSettings(bot_image="ghcr.io/r7/tradingbot:99"),
    )
    assert a["metadata"] == b["metadata"]


def test_the_bot_role_names_every_object_it_may_touch() -> None:
    role = next(o for o in render_bot_objects(BOT, pvc_spec()) if o["kind"] == "Role")
    for rule in role["rules"]:
        if rule["resources"] != ["events"]:
            assert rule.get("resourceNames"), rule
        assert "delete" not in rule["verbs"] and "*" not in rule["verbs"]
    secrets = [r for r in role["rules"] if r["resources"] == ["secrets"]]
    assert secrets == [
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": ["kraken-keys"],
            "verbs": ["get"],
        }
    ]


def test_state_objects_are_not_owned_by_the_bot_so_deletion_keeps_them() -> None:
    for obj in render_bot_objects(BOT, pvc_spec()):
        owned = "ownerReferences" in obj["metadata"]
        assert owned == (obj["kind"] in ("ServiceAccount", "Role", "RoleBinding")), obj["kind"]
