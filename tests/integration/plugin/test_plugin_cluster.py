"""The plugin against the real API server: writes land with the plugin's field manager,
selectors pick the right bots, output reflects the stored objects, RBAC refusals are clear.

No operator runs here: these tests check what the plugin asks of the API, not what the
operator does with it (tests/integration/operator covers that).
"""

from __future__ import annotations

import copy
import io
import json
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests import kube
from tests.integration.invalid_specs import VALID_BASE_SPEC
from tradingbot_plugin.cli import main
from tradingbot_plugin.core import ExitCode
from tradingbot_plugin.kube import (
    FIELD_MANAGER,
    Kube,
    KubeConfigChoice,
    load_configuration,
    new_api_client,
)
from tradingbot_plugin.watch import watch_status

GROUP, VERSION, PLURAL = "trading.r7.dev", "v1alpha1", "tradingbots"
RESTARTED_AT = "trading.r7.dev/restartedAt"
REASON = "trading.r7.dev/restart-reason"
HALT = "trading.r7.dev/halt"
SUSPEND = "trading.r7.dev/suspend"

Run = Callable[..., tuple[int, str, str]]
MakeBot = Callable[..., dict[str, Any]]


@pytest.fixture
def make_bot(custom_api: client.CustomObjectsApi, namespace: str, apply_crds: list[str]) -> MakeBot:
    def _make(name: str, labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "TradingBot",
            "metadata": {"name": name, "labels": labels or {}},
            "spec": {**copy.deepcopy(VALID_BASE_SPEC), **spec},
        }
        return dict(
            custom_api.create_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, body, field_manager="tradingbot-tests"
            )
        )

    return _make


@pytest.fixture
def get_bot(custom_api: client.CustomObjectsApi, namespace: str) -> Callable[[str], dict]:
    def _get(name: str) -> dict[str, Any]:
        return dict(
            custom_api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        )

    return _get


def runner(kubeconfig: Path, namespace: str) -> Run:
    def _run(*argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = main(
            ["--kubeconfig", str(kubeconfig), "-n", namespace, *argv], stdout=out, stderr=err
        )
        return code, out.getvalue(), err.getvalue()

    return _run


@pytest.fixture
def run(kubeconfig: Path, namespace: str) -> Run:
    return runner(kubeconfig, namespace)


def plugin_fields(bot: dict[str, Any]) -> dict[str, Any]:
    """The fields the plugin's field manager owns (merged over its managedFields entries)."""
    owned: dict[str, Any] = {}
    for entry in bot["metadata"].get("managedFields") or []:
        if entry.get("manager") == FIELD_MANAGER:
            assert entry["operation"] == "Update"
            owned.update(entry.get("fieldsV1") or {})
    return owned


def test_restart_sets_both_annotations_owned_by_the_plugin(
    run: Run, make_bot: MakeBot, get_bot: Callable[[str], dict]
) -> None:
    make_bot("stable")
    before = datetime.now(UTC).replace(microsecond=0)
    code, out, err = run("restart", "stable", "--reason", "deploy v2")
    assert (code, out, err) == (
        ExitCode.OK,
        "tradingbot.trading.r7.dev/stable restart requested\n",
        "",
    )
    bot = get_bot("stable")
    annotations = bot["metadata"]["annotations"]
    assert annotations[REASON] == "deploy v2"
    stamp = datetime.fromisoformat(annotations[RESTARTED_AT].replace("Z", "+00:00"))
    assert before <= stamp <= datetime.now(UTC)
    owned = plugin_fields(bot)["f:metadata"]["f:annotations"]
    assert f"f:{RESTARTED_AT}" in owned and f"f:{REASON}" in owned

    # A second restart in the same second still changes the value, so it is not lost.
    assert run("restart", "stable", "--reason", "again")[0] == ExitCode.OK
    assert get_bot("stable")["metadata"]["annotations"][RESTARTED_AT] != (annotations[RESTARTED_AT])


def test_stop_and_resume_set_and_remove_the_suspend_annotation_not_the_spec(
    run: Run, make_bot: MakeBot, get_bot: Callable[[str], dict]
) -> None:
    make_bot("stable")
    assert run("stop", "stable")[0] == ExitCode.OK
    bot = get_bot("stable")
    assert bot["metadata"]["annotations"][SUSPEND] == "true"
    assert bot["spec"]["suspend"] is False  # spec.suspend belongs to whoever owns the spec
    assert f"f:{SUSPEND}" in plugin_fields(bot)["f:metadata"]["f:annotations"]
    assert run("resume", "stable", "--reason", "maintenance over")[0] == ExitCode.OK
    bot = get_bot("stable")
    assert SUSPEND not in bot["metadata"]["annotations"]
    assert bot["metadata"]["annotations"][REASON] == "maintenance over"


def test_halt_sets_the_kill_switch_and_unhalt_removes_it(
    run: Run, make_bot: MakeBot, get_bot: Callable[[str], dict]
) -> None:
    make_bot("stable")
    make_bot("meme", profile="meme")
    code, out, _err = run("halt", "--all", "--reason", "exchange outage", "--yes")
    assert code == ExitCode.OK
    assert out.splitlines() == [
        "tradingbot.trading.r7.dev/meme halt requested (kill switch set)",
        "tradingbot.trading.r7.dev/stable halt requested (kill switch set)",
    ]
    for name in ("stable", "meme"):
        annotations = get_bot(name)["metadata"]["annotations"]
        assert (annotations[HALT], annotations[REASON]) == ("true", "exchange outage")
        assert f"f:{HALT}" in plugin_fields(get_bot(name))["f:metadata"]["f:annotations"]
    assert run("unhalt", "meme")[0] == ExitCode.OK
    assert HALT not in (get_bot("meme")["metadata"].get("annotations") or {})
    assert get_bot("stable")["metadata"]["annotations"][HALT] == "true"


def test_restart_by_selector_touches_only_matching_bots(
    run: Run, make_bot: MakeBot, get_bot: Callable[[str], dict]
) -> None:
    make_bot("a", labels={"app": "x"})
    make_bot("b", labels={"app": "y"})
    make_bot("c", labels={"app": "x"})
    code, out, _err = run("restart", "-l", "app=x", "--reason", "r")
    assert code == ExitCode.OK
    assert out.splitlines() == [
        "tradingbot.trading.r7.dev/a restart requested",
        "tradingbot.trading.r7.dev/c restart requested",
    ]
    touched = {
        n for n in "abc" if RESTARTED_AT in (get_bot(n)["metadata"].get("annotations") or {})
    }
    assert touched == {"a", "c"}


def test_status_lists_the_bots_as_json_and_as_a_table(
    run: Run, make_bot: MakeBot, custom_api: client.CustomObjectsApi, namespace: str
) -> None:
    make_bot("stable")
    make_bot("meme", profile="meme")
    # What the operator would write; the plugin only reads it.
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    custom_api.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        "stable",
        {
            "status": {
                "phase": "Running",
                "positions": {"open": 2},
                "pnl": {"realized": 5.5},
                "restarts": {"total": 3},
                "pendingAction": {
                    "action": "restart",
                    "lastRequestedAt": now,
                    "notBefore": "2999-01-01T00:00:00Z",
                },
            }
        },
    )
    code, out, _err = run("status", "-o", "json")
    assert code == ExitCode.OK
    listed = json.loads(out)
    assert [i["metadata"]["name"] for i in listed["items"]] == ["meme", "stable"]
    assert listed["items"][1]["status"]["phase"] == "Running"
    code, out, _err = run("status")
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert set(rows) == {"meme", "stable"}
    assert "Running" in rows["stable"] and "+5.50" in rows["stable"]
    assert "restart deferred until 2999-01-01T00:00:00Z" in rows["stable"]
    code, out, _err = run("status", "stable", "-o", "yaml")
    assert code == ExitCode.OK and "name: stable" in out


def test_status_of_a_missing_bot_exits_4(run: Run, apply_crds: list[str], namespace: str) -> None:
    assert run("status", "ghost") == (
        ExitCode.NOT_FOUND,
        "",
        f"error: tradingbot ghost not found in namespace {namespace}\n",
    )


def test_positions_reads_the_state_configmap(
    run: Run, make_bot: MakeBot, core_api: client.CoreV1Api, namespace: str
) -> None:
    make_bot("stable")
    state = {
        "schemaVersion": 1,
        "checkpointSeq": 4,
        "savedAt": "2025-01-01T00:00:00Z",
        "reason": "fill",
        "writerPod": "stable-x",
        "positions": [
            {
                "symbol": "BTC/USDT",
                "side": "long",
                "amount": 0.01,
                "entryPrice": 60000,
                "markPrice": 61000,
                "openedAt": "2025-01-01T00:00:00Z",
            }
        ],
        "balances": {"USDT": 9400.0, "BTC": 0.01},
        "stats": {"realizedPnl": 0, "totalTrades": 1, "wins": 0},
        "openOrders": [],
        "journal": [],
    }
    core_api.create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="stable-state"),
            data={"state.json": json.dumps(state)},
        ),
    )
    code, out, _err = run("positions", "stable")
    assert code == ExitCode.OK
    assert "BTC/USDT" in out and "+10.00" in out and "9400" in out
    assert "note:" not in out


def test_a_service_account_without_rbac_gets_a_clear_403(
    make_bot: MakeBot, namespace: str, sa_kubeconfig: Callable[[str, str], Path]
) -> None:
    make_bot("stable")
    nobody = runner(sa_kubeconfig(namespace, "nobody"), namespace)
    code, out, err = nobody("restart", "stable", "--reason", "r")
    assert (code, out) == (ExitCode.FORBIDDEN, "")
    assert err.startswith(
        f"error: not allowed to get tradingbots.trading.r7.dev stable in namespace {namespace}:"
    )
    assert f"system:serviceaccount:{namespace}:nobody" in err
    code, _out, err = nobody("status")
    assert code == ExitCode.FORBIDDEN
    assert err.startswith(
        f"error: not allowed to list tradingbots.trading.r7.dev in namespace {namespace}:"
    )


def test_a_reader_may_look_but_not_restart_and_positions_notes_the_hidden_state(
    make_bot: MakeBot,
    namespace: str,
    sa_kubeconfig: Callable[[str, str], Path],
    api_client: client.ApiClient,
    get_bot: Callable[[str], dict],
) -> None:
    make_bot("stable")
    kube.apply(
        api_client,
        [
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": "bot-reader", "namespace": namespace},
                "rules": [
                    {"apiGroups": [GROUP], "resources": [PLURAL], "verbs": ["get", "list", "watch"]}
                ],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": "bot-reader", "namespace": namespace},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": "bot-reader",
                },
                "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
            },
        ],
    )
    reader = runner(sa_kubeconfig(namespace, "reader"), namespace)
    kube.wait_for(lambda: reader("status")[0] == ExitCode.OK, message="the Role to take effect")
    code, _out, err = reader("halt", "stable")
    assert code == ExitCode.FORBIDDEN
    assert err.startswith(
        f"error: not allowed to patch tradingbots.trading.r7.dev stable in namespace {namespace}"
    )
    assert HALT not in (get_bot("stable")["metadata"].get("annotations") or {})
    code, out, _err = reader("positions", "stable")
    assert code == ExitCode.OK
    assert f"note: not allowed to read configmap stable-state in namespace {namespace}" in out


def test_watch_redraws_when_a_bot_changes(
    kubeconfig: Path, namespace: str, make_bot: MakeBot, run: Run
) -> None:
    configuration, _ = load_configuration(KubeConfigChoice(str(kubeconfig)))
    plugin_kube = Kube(new_api_client(configuration))
    out, err = io.StringIO(), io.StringIO()
    stop = threading.Event()
    result: list[int] = []
    thread = threading.Thread(
        target=lambda: result.append(
            watch_status(plugin_kube, namespace, None, None, out, err, stop, timeout_seconds=5)
        )
    )
    thread.start()
    try:
        kube.wait_for(
            lambda: "No tradingbots found" in out.getvalue(), message="the first (empty) table"
        )
        make_bot("stable")
        kube.wait_for(lambda: "stable" in out.getvalue(), message="the new bot in the table")
        assert run("halt", "stable")[0] == ExitCode.OK
        kube.wait_for(lambda: "halt requested" in out.getvalue(), message="the halt in the table")
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert result == [ExitCode.OK]
    assert err.getvalue() == ""


def test_the_console_script_runs_as_kubectl_would(
    kubeconfig: Path, namespace: str, make_bot: MakeBot
) -> None:
    make_bot("stable")
    script = Path(sys.executable).parent / "kubectl-tradingbot"
    done = subprocess.run(
        [str(script), "status", "--kubeconfig", str(kubeconfig), "-n", namespace, "-o", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == ExitCode.OK, done.stderr
    assert [i["metadata"]["name"] for i in json.loads(done.stdout)["items"]] == ["stable"]
    missing = subprocess.run(
        [str(script), "--kubeconfig", str(kubeconfig), "-n", namespace, "stop", "ghost"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (missing.returncode, missing.stderr) == (
        ExitCode.NOT_FOUND,
        f"error: tradingbot ghost not found in namespace {namespace}\n",
    )
