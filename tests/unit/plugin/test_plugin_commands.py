"""Arguments, patch bodies and what goes over the wire, against a loopback fake API server.

The fake checks the request shape (path, fieldManager, User-Agent, merge patch) that the
admission webhook relies on; tests/integration/plugin runs the same commands against the
real API server.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.unit.plugin.fakes import TOKEN, FakeKubeApi
from tradingbot_api.constants import HaltMode
from tradingbot_plugin.cli import build_parser, main
from tradingbot_plugin.core import ExitCode, PluginError, user_agent
from tradingbot_plugin.kube import FIELD_MANAGER
from tradingbot_plugin.patches import (
    fleet_switch_patch,
    halt_patch,
    restart_patch,
    restart_stamp,
    suspend_patch,
    unhalt_patch,
    validate_reason,
)

NOW = datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run(fake_kube: FakeKubeApi, kubeconfig_for: Callable[..., Path]) -> Run:
    def _run(*argv: str, **kubeconfig: Any) -> tuple[int, str, str]:
        path = kubeconfig_for(fake_kube.url, **kubeconfig)
        out, err = io.StringIO(), io.StringIO()
        code = main(["--kubeconfig", str(path), *argv], stdout=out, stderr=err, clock=lambda: NOW)
        return code, out.getvalue(), err.getvalue()

    return _run


# -- arguments ------------------------------------------------------------------------------


def test_global_options_work_before_and_after_the_command() -> None:
    parser = build_parser()
    before = parser.parse_args(["-n", "a", "--context", "c", "status"])
    after = parser.parse_args(["status", "-n", "a", "--context", "c"])
    for args in (before, after):
        assert (args.namespace, args.context, args.command) == ("a", "c", "status")


def test_an_option_not_given_is_absent_so_the_context_namespace_applies() -> None:
    args = build_parser().parse_args(["status"])
    assert not hasattr(args, "namespace")
    assert not hasattr(args, "kubeconfig")


def test_audit_filters_are_accepted_before_or_after_the_subcommand() -> None:
    parser = build_parser()
    before = parser.parse_args(["audit", "--type", "halt", "summary"])
    after = parser.parse_args(["audit", "summary", "--type", "halt", "-o", "json"])
    assert (before.event_type, before.audit_command, before.output) == ("halt", "summary", "table")
    assert (after.event_type, after.audit_command, after.output) == ("halt", "summary", "json")


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["restart", "stable"], id="restart without a reason"),
        pytest.param(["status", "-o", "xml"], id="an unknown output format"),
        pytest.param(["stop"], id="stop without a bot"),
        pytest.param(["frobnicate"], id="an unknown command"),
        pytest.param(["audit", "--limit", "many"], id="a limit that is not a number"),
    ],
)
def test_bad_usage_exits_2_without_touching_the_cluster(argv: list[str]) -> None:
    err = io.StringIO()
    with pytest.raises(SystemExit) as exited, contextlib.redirect_stderr(err):
        build_parser().parse_args(argv)
    assert exited.value.code == ExitCode.USAGE
    assert main(argv, stdout=io.StringIO(), stderr=io.StringIO()) == ExitCode.USAGE


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(
            ["restart", "stable", "--reason", "  "],
            "--reason must not be empty",
            id="a blank reason is refused",
        ),
        pytest.param(
            ["restart", "--reason", "r"],
            "name one BOT, or use --all or -l SELECTOR",
            id="restart needs a target",
        ),
        pytest.param(
            ["restart", "stable", "--all", "--reason", "r"],
            "name one BOT, or use --all or -l SELECTOR",
            id="a bot and --all conflict",
        ),
        pytest.param(
            ["restart", "stable", "-A", "--reason", "r"],
            "-A goes with --all or -l",
            id="-A needs --all or -l",
        ),
        pytest.param(
            ["halt", "--all", "-l", "app=x"],
            "name one BOT, or use --all or -l",
            id="--all and -l conflict",
        ),
        pytest.param(
            ["restart", "stable", "--reason", "x" * 600],
            "at most 512",
            id="an overlong reason is refused",
        ),
        pytest.param(
            ["status", "stable", "-A"],
            "a BOT name goes without -A and -l",
            id="status of one bot has no -A",
        ),
        pytest.param(["audit"], "give --audit-url URL", id="audit needs a source"),
        pytest.param(
            ["audit", "--audit-url", "ftp://x"],
            "is not an http(s) URL",
            id="audit needs an http url",
        ),
        pytest.param(
            ["audit", "--log-dir", "/", "--since", "yesterday"],
            "neither an ISO 8601 time nor a duration",
            id="a bad time filter",
        ),
    ],
)
def test_invalid_requests_are_refused_with_exit_2(
    run: Run,
    fake_kube: FakeKubeApi,
    argv: list[str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TRADINGBOT_AUDIT_URL", raising=False)
    fake_kube.add_bot("trading", "stable")
    code, _out, err = run(*argv)
    assert (code, message in err) == (ExitCode.USAGE, True), err
    assert fake_kube.writes() == []


def test_reason_is_stripped_and_optional_where_allowed() -> None:
    assert validate_reason("  deploy v2 \n", required=True) == "deploy v2"
    assert validate_reason(None, required=False) is None
    with pytest.raises(PluginError):
        validate_reason("", required=True)


# -- patch bodies ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(
            restart_patch("2025-01-02T03:04:05Z", "deploy"),
            {
                "metadata": {
                    "annotations": {
                        "trading.r7.dev/restartedAt": "2025-01-02T03:04:05Z",
                        "trading.r7.dev/restart-reason": "deploy",
                    }
                }
            },
            id="restart sets the timestamp and the reason",
        ),
        pytest.param(
            suspend_patch(True),
            {"metadata": {"annotations": {"trading.r7.dev/suspend": "true"}}},
            id="stop sets the suspend annotation, not the spec GitOps owns",
        ),
        pytest.param(
            suspend_patch(False, "market open"),
            {
                "metadata": {
                    "annotations": {
                        "trading.r7.dev/suspend": None,
                        "trading.r7.dev/restart-reason": "market open",
                    }
                },
            },
            id="resume with a reason removes the annotation and records the reason",
        ),
        pytest.param(
            halt_patch(mode=HaltMode.DRAIN),
            {"metadata": {"annotations": {"trading.r7.dev/halt": "drain"}}},
            id="halt --mode drain",
        ),
        pytest.param(
            halt_patch(),
            {"metadata": {"annotations": {"trading.r7.dev/halt": "true"}}},
            id="halt sets the kill switch",
        ),
        pytest.param(
            halt_patch("exchange outage"),
            {
                "metadata": {
                    "annotations": {
                        "trading.r7.dev/halt": "true",
                        "trading.r7.dev/restart-reason": "exchange outage",
                    }
                }
            },
            id="halt with a reason records it",
        ),
        pytest.param(
            unhalt_patch(),
            {"metadata": {"annotations": {"trading.r7.dev/halt": None}}},
            id="unhalt deletes the annotation",
        ),
    ],
)
def test_patch_bodies(body: dict[str, Any], expected: dict[str, Any]) -> None:
    assert body == expected


def test_restart_stamp_is_rfc3339_in_seconds_unless_that_repeats_the_last_request() -> None:
    assert restart_stamp(NOW, None) == "2025-01-02T03:04:05Z"
    assert restart_stamp(NOW, "2025-01-01T00:00:00Z") == "2025-01-02T03:04:05Z"
    assert restart_stamp(NOW, "2025-01-02T03:04:05Z") == "2025-01-02T03:04:05.678000Z"


# -- the wire -------------------------------------------------------------------------------


def test_restart_sends_a_merge_patch_with_the_field_manager_and_user_agent(
    run: Run, fake_kube: FakeKubeApi
) -> None:
    fake_kube.add_bot("trading", "stable")
    code, out, err = run("restart", "stable", "--reason", "deploy v2")
    assert (code, err) == (ExitCode.OK, "")
    assert out == "tradingbot.trading.r7.dev/stable restart requested\n"
    (patch,) = fake_kube.writes()
    assert patch.method == "PATCH"
    assert patch.path == "/apis/trading.r7.dev/v1alpha1/namespaces/trading/tradingbots/stable"
    assert patch.query == {"fieldManager": [FIELD_MANAGER]}
    assert patch.headers["Content-Type"] == "application/merge-patch+json"
    assert patch.headers["User-Agent"].startswith("kubectl-tradingbot/")
    assert patch.headers["User-Agent"] == user_agent()
    assert patch.headers["Authorization"] == f"Bearer {TOKEN}"
    assert patch.body == restart_patch("2025-01-02T03:04:05Z", "deploy v2")
    # Reads carry the same User-Agent, so the server can attribute every call.
    assert all(r.headers["User-Agent"] == user_agent() for r in fake_kube.requests)


def test_the_namespace_comes_from_n_then_the_context_then_default(
    run: Run, fake_kube: FakeKubeApi
) -> None:
    for namespace in ("trading", "other", "default"):
        fake_kube.add_bot(namespace, "stable")
    assert run("stop", "stable")[0] == ExitCode.OK
    assert run("stop", "stable", "-n", "other")[0] == ExitCode.OK
    assert run("--context", "other", "stop", "stable")[0] == ExitCode.OK
    assert [w.path.split("/")[5] for w in fake_kube.writes()] == ["trading", "other", "default"]


def test_stop_resume_halt_unhalt_flip_the_right_fields(run: Run, fake_kube: FakeKubeApi) -> None:
    fake_kube.add_bot("trading", "stable")
    assert run("stop", "stable", "--reason", "maintenance")[:2] == (
        ExitCode.OK,
        "tradingbot.trading.r7.dev/stable stop requested (trading.r7.dev/suspend)\n",
    )
    bot = fake_kube.bots[("trading", "stable")]
    assert bot["metadata"]["annotations"]["trading.r7.dev/suspend"] == "true"
    assert bot["spec"]["suspend"] is False  # the declarative field is left to its owner
    assert run("resume", "stable")[0] == ExitCode.OK
    bot = fake_kube.bots[("trading", "stable")]
    assert "trading.r7.dev/suspend" not in bot["metadata"]["annotations"]
    assert run("halt", "stable", "--reason", "exchange outage")[0] == ExitCode.OK
    annotations = fake_kube.bots[("trading", "stable")]["metadata"]["annotations"]
    assert annotations["trading.r7.dev/halt"] == "true"
    assert annotations["trading.r7.dev/restart-reason"] == "exchange outage"
    assert run("unhalt", "stable")[0] == ExitCode.OK
    assert (
        "trading.r7.dev/halt"
        not in fake_kube.bots[("trading", "stable")]["metadata"]["annotations"]
    )
    assert [w.body for w in fake_kube.writes()] == [
        suspend_patch(True, "maintenance"),
        suspend_patch(False),
        halt_patch("exchange outage"),
        unhalt_patch(),
    ]


def test_requests_that_change_nothing_are_not_sent(run: Run, fake_kube: FakeKubeApi) -> None:
    fake_kube.add_bot(
        "trading",
        "stable",
        metadata={"annotations": {"trading.r7.dev/halt": "true", "trading.r7.dev/suspend": "true"}},
    )
    assert run("stop", "stable")[1].endswith("already stopped\n")
    assert run("halt", "stable")[1].endswith("already halted\n")
    fake_kube.add_bot("trading", "calm")
    assert run("resume", "calm")[1].endswith(
        "not stopped by kubectl tradingbot; nothing to resume\n"
    )
    fake_kube.add_bot("trading", "gitops", spec={"suspend": True})
    assert "spec.suspend is true" in run("resume", "gitops")[1]
    assert run("unhalt", "calm")[1].endswith("not halted; nothing to do\n")
    assert fake_kube.writes() == []


def test_resuming_a_halted_bot_says_the_kill_switch_is_still_set(
    run: Run, fake_kube: FakeKubeApi
) -> None:
    fake_kube.add_bot(
        "trading",
        "stable",
        spec={"suspend": True},
        metadata={"annotations": {"trading.r7.dev/halt": "true"}},
    )
    code, out, _err = run("resume", "stable")
    assert code == ExitCode.OK
    assert "kubectl tradingbot unhalt stable" in out


def test_restart_by_selector_touches_only_matching_bots_one_line_each(
    run: Run, fake_kube: FakeKubeApi
) -> None:
    fake_kube.add_bot("trading", "a", metadata={"labels": {"app": "x"}})
    fake_kube.add_bot("trading", "b", metadata={"labels": {"app": "y"}})
    fake_kube.add_bot("trading", "c", metadata={"labels": {"app": "x"}})
    code, out, _err = run("restart", "-l", "app=x", "--reason", "r")
    assert code == ExitCode.OK
    assert out.splitlines() == [
        "tradingbot.trading.r7.dev/a restart requested",
        "tradingbot.trading.r7.dev/c restart requested",
    ]
    assert sorted(w.path.rsplit("/", 1)[1] for w in fake_kube.writes()) == ["a", "c"]
    assert fake_kube.requests[0].query["labelSelector"] == ["app=x"]


def test_halt_all_namespaces_names_the_namespace_of_each_bot(
    run: Run, fake_kube: FakeKubeApi
) -> None:
    fake_kube.add_bot("a", "one")
    fake_kube.add_bot("b", "two")
    code, out, _err = run("halt", "--all", "-A", "--yes")
    assert code == ExitCode.OK
    assert out.splitlines() == [
        "tradingbot.trading.r7.dev/one (namespace a) halt requested (kill switch set)",
        "tradingbot.trading.r7.dev/two (namespace b) halt requested (kill switch set)",
    ]
    assert fake_kube.requests[0].path == "/apis/trading.r7.dev/v1alpha1/tradingbots"


def test_no_matching_bots_is_a_failure(run: Run, fake_kube: FakeKubeApi) -> None:
    code, _out, err = run("restart", "--all", "--reason", "r")
    assert (code, err) == (ExitCode.FAILED, "error: no tradingbots found in namespace trading\n")


def test_a_missing_bot_is_named_with_its_namespace(run: Run, fake_kube: FakeKubeApi) -> None:
    code, out, err = run("restart", "ghost", "--reason", "r")
    assert (code, out) == (ExitCode.NOT_FOUND, "")
    assert err == "error: tradingbot ghost not found in namespace trading\n"


def test_a_forbidden_patch_names_verb_and_resource_and_exits_3(
    run: Run, fake_kube: FakeKubeApi
) -> None:
    fake_kube.add_bot("trading", "stable")
    fake_kube.forbidden.add("patch")
    code, _out, err = run("halt", "stable")
    assert code == ExitCode.FORBIDDEN
    assert err.startswith(
        "error: not allowed to patch tradingbots.trading.r7.dev stable in namespace trading: "
    )
    assert TOKEN not in err


def test_one_forbidden_bot_does_not_stop_the_others_but_sets_the_exit_code(
    run: Run, fake_kube: FakeKubeApi
) -> None:
    fake_kube.add_bot("trading", "a")
    fake_kube.add_bot("trading", "b")
    original = fake_kube.handle

    def forbid_a(method: str, path: str, query: Any, body: Any, *rest: Any) -> tuple[int, Any]:
        if method == "PATCH" and path.endswith("/a"):
            return 403, {"kind": "Status", "message": "forbidden", "code": 403}
        return original(method, path, query, body, *rest)

    fake_kube.handle = forbid_a  # type: ignore[method-assign]
    code, out, err = run("restart", "--all", "--reason", "r")
    assert code == ExitCode.FORBIDDEN
    assert out == "tradingbot.trading.r7.dev/b restart requested\n"
    assert "not allowed to patch tradingbots.trading.r7.dev a" in err


def test_a_missing_api_says_the_crds_are_not_installed(run: Run, fake_kube: FakeKubeApi) -> None:
    original = fake_kube.handle
    fake_kube.handle = lambda *a: (404, "404 page not found")  # type: ignore[method-assign]
    code, _out, err = run("status")
    fake_kube.handle = original  # type: ignore[method-assign]
    assert code == ExitCode.FAILED
    assert "are the TradingBot CRDs installed?" in err


def test_an_unreachable_api_server_is_one_line_not_a_traceback(
    kubeconfig_for: Callable[..., Path],
) -> None:
    path = kubeconfig_for("http://127.0.0.1:9")  # discard port: nothing listens
    err = io.StringIO()
    code = main(["--kubeconfig", str(path), "status"], stdout=io.StringIO(), stderr=err)
    assert code == ExitCode.FAILED
    assert err.getvalue().startswith("error: cannot reach the API server")
    assert len(err.getvalue().splitlines()) == 1


def test_a_missing_kubeconfig_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    err = io.StringIO()
    code = main(
        ["--kubeconfig", str(tmp_path / "nope"), "status"], stdout=io.StringIO(), stderr=err
    )
    assert code == ExitCode.FAILED
    assert err.getvalue().startswith(f"error: cannot load the kubeconfig {tmp_path / 'nope'}")


def test_status_outputs_table_json_and_yaml(run: Run, fake_kube: FakeKubeApi) -> None:
    fake_kube.add_bot("trading", "stable", status={"phase": "Running"})
    fake_kube.add_bot("trading", "meme", spec={"profile": "meme"})
    code, table, _err = run("status")
    assert code == ExitCode.OK
    assert table.splitlines()[0].split() == [
        "NAME",
        "PROFILE",
        "EXCHANGE",
        "PHASE",
        "READY",
        "CRASHES",
        "POSITIONS",
        "PNL",
        "TRADES",
        "RESTARTS",
        "PENDING",
        "CHECKPOINT",
        "AGE",
    ]
    assert [line.split()[0] for line in table.splitlines()[1:]] == ["meme", "stable"]
    listed = json.loads(run("status", "-o", "json")[1])
    assert [i["metadata"]["name"] for i in listed["items"]] == ["meme", "stable"]
    one = json.loads(run("status", "stable", "-o", "json")[1])
    assert one["status"]["phase"] == "Running"
    assert "kind: TradingBot" in run("status", "stable", "-o", "yaml")[1]


def test_status_of_an_empty_namespace_says_so_on_stderr(run: Run) -> None:
    assert run("status") == (ExitCode.OK, "", "No tradingbots found in namespace trading.\n")


def test_positions_reads_the_state_configmap(run: Run, fake_kube: FakeKubeApi) -> None:
    fake_kube.add_bot("trading", "stable", status={"phase": "Running", "positions": {"open": 1}})
    state = {
        "checkpointSeq": 7,
        "positions": [{"symbol": "BTC/USDT", "amount": 0.5, "entryPrice": 100, "markPrice": 110}],
        "balances": {"USDT": 50},
    }
    fake_kube.configmaps[("trading", "stable-state")] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "stable-state", "namespace": "trading"},
        "data": {"state.json": json.dumps(state)},
    }
    code, out, _err = run("positions", "stable")
    assert code == ExitCode.OK
    assert "BTC/USDT" in out and "+5.00" in out and "USDT" in out
    document = json.loads(run("positions", "stable", "-o", "json")[1])
    assert document["positions"][0]["symbol"] == "BTC/USDT"
    assert document["balances"] == {"USDT": 50}
    assert document["note"] is None


@pytest.mark.parametrize(
    ("setup", "note"),
    [
        pytest.param(
            "missing", "no state ConfigMap stable-state yet", id="a bot without saved state"
        ),
        pytest.param(
            "forbidden",
            "not allowed to read configmap stable-state in namespace trading",
            id="a user without configmap access",
        ),
        pytest.param(
            "garbage",
            "state.json in configmap stable-state is not valid JSON",
            id="an unreadable state document",
        ),
        pytest.param(
            "pvc",
            "the state is on the PersistentVolumeClaim stable-state",
            id="a bot with pvc state",
        ),
    ],
)
def test_positions_without_readable_state_still_shows_the_status(
    run: Run, fake_kube: FakeKubeApi, setup: str, note: str
) -> None:
    fake_kube.add_bot(
        "trading",
        "stable",
        status={"positions": {"open": 1, "symbols": ["ETH/USDT"]}},
        spec={"state": {"backend": "pvc"}} if setup == "pvc" else {},
    )
    if setup == "forbidden":
        fake_kube.forbidden.add("get-configmap")
    if setup == "garbage":
        fake_kube.configmaps[("trading", "stable-state")] = {"data": {"state.json": "{oops"}}
    code, out, _err = run("positions", "stable")
    assert code == ExitCode.OK
    assert "ETH/USDT" in out
    assert f"note: {note}" in out


def test_halting_many_bots_asks_first_unless_yes(run: Run, fake_kube: FakeKubeApi) -> None:
    fake_kube.add_bot("trading", "a")
    fake_kube.add_bot("trading", "b")
    code, _out, err = run("halt", "--all")  # no terminal here to ask
    assert code == ExitCode.USAGE and "--yes" in err
    assert fake_kube.writes() == []
    assert run("halt", "--all", "--mode", "flatten", "--yes")[0] == ExitCode.OK
    assert {
        w.body["metadata"]["annotations"]["trading.r7.dev/halt"] for w in fake_kube.writes()
    } == {"flatten"}


def test_the_fleet_switch_is_a_config_map_every_bot_watches() -> None:
    assert fleet_switch_patch(HaltMode.DRAIN) == {"data": {"halt": "drain"}}
    assert fleet_switch_patch(None) == {"data": {"halt": None}}
