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
from tradingbot_api.models import TradingBotSpec
from tradingbot_operator import render
from tradingbot_operator.render import BotRef
from tradingbot_operator.settings import OperatorSettings

GOLDEN = Path(__file__).parent / "golden"
BOT = BotRef(namespace="trading", name="bot-medio", uid="0a1b2c3d-0000-4000-8000-000000000001")
SETTINGS = OperatorSettings(bot_image="ghcr.io/r7/tradingbot:test")


def render_bot_pod(bot: BotRef, spec: dict, config_hash: str, settings: OperatorSettings) -> dict:
    """The pod for a spec as stored (parsed here as the reconciler parses it)."""
    return render.render_bot_pod(bot, TradingBotSpec.from_dict(spec), spec, config_hash, settings)


def render_bot_objects(bot: BotRef, spec: dict) -> list[dict]:
    return render.render_bot_objects(bot, TradingBotSpec.from_dict(spec))


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
    # Credentials arrive as a Secret volume: the bot's ServiceAccount reads no Secret.
    assert not [r for r in role["rules"] if "secrets" in r["resources"]]


def test_a_live_bot_gets_exactly_its_two_credential_keys_as_a_read_only_volume() -> None:
    pod = render_bot_pod(BOT, pvc_spec(), "fedcba9876543210", SETTINGS)
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == "credentials"]
    assert volume["secret"] == {
        "secretName": "kraken-keys",
        "defaultMode": 0o440,
        "items": [{"key": "apiKey", "path": "apiKey"}, {"key": "secret", "path": "secret"}],
    }
    (container,) = pod["spec"]["containers"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "credentials"]
    assert mount == {
        "name": "credentials",
        "mountPath": "/var/run/secrets/trading.r7.dev/credentials",
        "readOnly": True,
    }
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["CREDENTIALS_DIR"] == mount["mountPath"]


def test_a_paper_bot_mounts_no_credentials() -> None:
    pod = render_bot_pod(BOT, VALID_BASE_SPEC, "0123456789abcdef", SETTINGS)
    assert all(v["name"] != "credentials" for v in pod["spec"]["volumes"])
    assert "CREDENTIALS_DIR" not in {e["name"] for e in pod["spec"]["containers"][0]["env"]}


def test_the_applied_spec_on_a_pod_stays_small_whatever_the_pod_overrides_hold() -> None:
    spec = copy.deepcopy(VALID_BASE_SPEC)
    longest_key = ".".join(c * 63 for c in "abc") + "/" + "k" * 63
    spec["tolerations"] = [{"key": longest_key, "operator": "Exists"}] * 32
    spec["nodeSelector"] = {f"label-{i}": "v" * 63 for i in range(32)}
    pod = render_bot_pod(BOT, spec, "0123456789abcdef", SETTINGS)
    applied = pod["metadata"]["annotations"]["trading.r7.dev/applied-spec"]
    assert len(applied) < 2048
    assert '"tolerations":"sha256:' in applied


def test_state_objects_are_not_owned_by_the_bot_so_deletion_keeps_them() -> None:
    for obj in render_bot_objects(BOT, pvc_spec()):
        owned = "ownerReferences" in obj["metadata"]
        assert owned == (obj["kind"] in ("ServiceAccount", "Role", "RoleBinding")), obj["kind"]
