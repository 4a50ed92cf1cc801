"""The Argo CD health check and actions, run by a real Lua interpreter (lupa).

`UPDATE_GOLDEN=1` rewrites config/argocd/argocd-cm.yaml from the .lua files.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

import lupa
import pytest
import yaml

ARGOCD = Path(__file__).resolve().parents[3] / "config" / "argocd"
ACTIONS = ("restart", "suspend", "resume", "halt", "drain", "flatten", "unhalt")
KEY = "trading.r7.dev_TradingBot"


def run_lua(script: str, obj: dict[str, Any]) -> Any:
    lua = lupa.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = to_lua(lua, obj)
    return from_lua(lua.execute(script))


def to_lua(lua: Any, value: Any) -> Any:
    if isinstance(value, dict):
        return lua.table_from({k: to_lua(lua, v) for k, v in value.items()})
    if isinstance(value, list):
        return lua.table_from([to_lua(lua, v) for v in value])
    return value


def from_lua(value: Any) -> Any:
    if lupa.lua_type(value) == "table":
        keys = list(value.keys())
        if keys and all(isinstance(k, int) for k in keys):
            return [from_lua(value[k]) for k in sorted(keys)]
        return {k: from_lua(v) for k, v in value.items()}
    return value


def bot(
    phase: str | None = None,
    generation: int = 1,
    observed: int | None = 1,
    ready: str | None = None,
    pending: dict | None = None,
    **spec: Any,
) -> dict:
    status: dict[str, Any] = {}
    if phase:
        status["phase"] = phase
    if observed is not None:
        status["observedGeneration"] = observed
    if ready:
        status["conditions"] = [{"type": "Ready", "status": ready, "message": "m"}]
    if pending:
        status["pendingAction"] = pending
    return {
        "apiVersion": "trading.r7.dev/v1alpha1",
        "kind": "TradingBot",
        "metadata": {"name": "b", "generation": generation, "annotations": {}},
        "spec": {"profile": "stable", "suspend": False, **spec},
        "status": status,
    }


def _refused(reason: str) -> dict:
    obj = bot("Running", ready="True")
    obj["status"]["conditions"].append(
        {"type": "Degraded", "status": "True", "reason": reason, "message": "spec.x: bad"}
    )
    return obj


def _draining() -> dict:
    obj = bot("Stopping")
    obj["status"]["conditions"] = [
        {"type": "Progressing", "status": "True", "reason": "Draining", "message": "no new entries"}
    ]
    return obj


HEALTH_CASES = [
    ("a new bot is progressing until observed", bot(observed=None), "Progressing"),
    (
        "an unobserved edit is progressing",
        bot("Running", generation=2, ready="True"),
        "Progressing",
    ),
    ("a ready running bot is healthy", bot("Running", ready="True"), "Healthy"),
    ("a restart under way is progressing", bot("Restarting"), "Progressing"),
    (
        "a pending change is progressing",
        bot("Running", ready="True", pending={"action": "restart", "reason": "config change"}),
        "Progressing",
    ),
    ("a stopped bot is suspended", bot("Stopped"), "Suspended"),
    ("a halted bot is suspended", bot("Halted"), "Suspended"),
    ("a draining bot is suspended, not progressing", _draining(), "Suspended"),
    ("a failed bot is degraded", bot("Failed"), "Degraded"),
    ("a running bot that is not ready is degraded", bot("Running", ready="False"), "Degraded"),
    *(
        (f"a running bot whose new config was refused ({reason}) is degraded", refused, "Degraded")
        for reason in ("SpecInvalid", "ImageNotAllowed", "SecretNotAllowed")
        for refused in [_refused(reason)]
    ),
]


@pytest.mark.parametrize(("name", "obj", "status"), HEALTH_CASES, ids=[c[0] for c in HEALTH_CASES])
def test_health(name: str, obj: dict, status: str) -> None:
    hs = run_lua((ARGOCD / "health.lua").read_text(), obj)
    assert hs["status"] == status
    assert hs["message"]
    degraded = [c for c in obj["status"].get("conditions", []) if c["type"] == "Degraded"]
    if degraded:
        assert degraded[0]["reason"] in hs["message"]


def action(name: str, obj: dict) -> dict:
    return dict(run_lua((ARGOCD / "actions" / f"{name}.lua").read_text(), copy.deepcopy(obj)))


def test_restart_sets_the_restart_annotations() -> None:
    out = action("restart", bot("Running"))
    annotations = out["metadata"]["annotations"]
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", annotations["trading.r7.dev/restartedAt"]
    )
    assert annotations["trading.r7.dev/restart-reason"] == "Argo CD restart action"


def test_stop_and_resume_are_an_annotation_that_a_sync_of_the_spec_keeps() -> None:
    stopped = action("suspend", bot("Running"))
    assert stopped["metadata"]["annotations"]["trading.r7.dev/suspend"] == "true"
    assert stopped["spec"]["suspend"] is False  # the declarative field is Git's
    resumed = action("resume", stopped)
    assert "trading.r7.dev/suspend" not in resumed["metadata"]["annotations"]


@pytest.mark.parametrize(
    ("name", "mode"), [("halt", "true"), ("drain", "drain"), ("flatten", "flatten")]
)
def test_the_kill_switch_actions_set_their_mode_and_unhalt_removes_it(name: str, mode: str) -> None:
    halted = action(name, bot("Running"))
    annotations = halted["metadata"]["annotations"]
    assert annotations["trading.r7.dev/halt"] == mode
    assert annotations["trading.r7.dev/restart-reason"] == f"Argo CD {name} action"
    assert "trading.r7.dev/halt" not in action("unhalt", halted)["metadata"].get("annotations", {})


def test_discovery_offers_only_what_makes_sense() -> None:
    discovery = (ARGOCD / "actions" / "discovery.lua").read_text()

    def enabled(obj: dict) -> set[str]:
        return {k for k, v in run_lua(discovery, obj).items() if not v["disabled"]}

    assert enabled(bot("Running")) == {"restart", "suspend", "halt", "drain", "flatten"}
    stopped = bot("Stopped")
    stopped["metadata"]["annotations"]["trading.r7.dev/suspend"] = "true"
    assert enabled(stopped) == {"resume", "halt", "drain", "flatten"}
    draining = bot("Stopping")
    draining["metadata"]["annotations"]["trading.r7.dev/halt"] = "drain"
    assert enabled(draining) == {"suspend", "halt", "flatten", "unhalt"}


class _LiteralDumper(yaml.SafeDumper):
    """Multi-line strings as `|` blocks, so the ConfigMap reads like the Lua files."""


_LiteralDumper.add_representer(
    str,
    lambda dumper, text: dumper.represent_scalar(
        "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None
    ),
)


def render_argocd_cm() -> str:
    actions = {
        "discovery.lua": (ARGOCD / "actions" / "discovery.lua").read_text(),
        "definitions": [
            {"name": n, "action.lua": (ARGOCD / "actions" / f"{n}.lua").read_text()}
            for n in ACTIONS
        ],
    }
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "argocd-cm",
            "namespace": "argocd",
            "labels": {"app.kubernetes.io/part-of": "argocd"},
        },
        "data": {
            f"resource.customizations.health.{KEY}": (ARGOCD / "health.lua").read_text(),
            f"resource.customizations.actions.{KEY}": yaml.dump(
                actions, Dumper=_LiteralDumper, sort_keys=False
            ),
        },
    }
    header = (
        "# Merge into Argo CD's argocd-cm: TradingBot health and actions. Generated from\n"
        "# the .lua files beside it (UPDATE_GOLDEN=1 pytest tests/unit/argocd).\n"
    )
    return header + yaml.dump(cm, Dumper=_LiteralDumper, sort_keys=False, width=1000)


def test_argocd_cm_embeds_exactly_the_lua_files() -> None:
    path = ARGOCD / "argocd-cm.yaml"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(render_argocd_cm())
    assert path.read_text() == render_argocd_cm()


def test_the_application_ignores_every_annotation_the_api_server_or_operators_write() -> None:
    from tradingbot_api.constants import (
        ANNOTATION_HALT,
        ANNOTATION_RESTART_REASON,
        ANNOTATION_RESTARTED_AT,
        ANNOTATION_SUSPEND,
        STAMP_ANNOTATIONS,
    )

    app = yaml.safe_load((ARGOCD / "application.yaml").read_text())
    (ignored,) = app["spec"]["ignoreDifferences"]
    pointers = {
        p.removeprefix("/metadata/annotations/").replace("~1", "/") for p in ignored["jsonPointers"]
    }
    assert pointers == {
        *STAMP_ANNOTATIONS,
        ANNOTATION_RESTARTED_AT,
        ANNOTATION_RESTART_REASON,
        ANNOTATION_HALT,
        ANNOTATION_SUSPEND,
    }
