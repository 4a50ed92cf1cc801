"""`kubectl tradingbot audit`: the HTTP client against a loopback audit API, and --log-dir.

The HTTP side is checked against the contract of the audit sidecar's read API: GET
/v1/events, /v1/summary and /v1/verify with the filters as query parameters and the
kubeconfig user's bearer token. The --log-dir side reads a real log written with the audit
library's writer. `verify --head-configmap` reads the chain head from a fake API server.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.unit.plugin.fakes import AUDIT_EVENTS, TOKEN, FakeAuditApi, FakeKubeApi
from tradingbot_audit import open_writer
from tradingbot_plugin.audit import AUDIT_FORBIDDEN_MESSAGE, AuditQuery, HttpAuditSource
from tradingbot_plugin.cli import main as plugin_main
from tradingbot_plugin.core import ExitCode, user_agent

NOW = datetime(2025, 1, 1, 12, 30, tzinfo=UTC)

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run(kubeconfig_for: Callable[..., Path], monkeypatch: pytest.MonkeyPatch) -> Run:
    monkeypatch.delenv("TRADINGBOT_AUDIT_URL", raising=False)

    def _run(*argv: str, **kubeconfig: Any) -> tuple[int, str, str]:
        # The API server is never contacted by audit commands; the kubeconfig only
        # supplies the user's token.
        path = kubeconfig_for("http://127.0.0.1:9", **kubeconfig)
        out, err = io.StringIO(), io.StringIO()
        code = plugin_main(
            ["--kubeconfig", str(path), *argv], stdout=out, stderr=err, clock=lambda: NOW
        )
        return code, out.getvalue(), err.getvalue()

    return _run


# -- HTTP -----------------------------------------------------------------------------------


def test_query_sends_filters_token_and_user_agent_and_prints_a_table(
    run: Run, fake_audit: FakeAuditApi
) -> None:
    code, out, err = run(
        "audit",
        "--audit-url",
        fake_audit.url,
        "--type",
        "halt",
        "--severity",
        "critical",
        "--source",
        "plugin",
        "--bot",
        "meme",
        "--user",
        "alice",
        "-n",
        "trading",
        "--since",
        "1h",
        "--until",
        "2025-01-01T12:10:00",
        "--limit",
        "5",
    )
    assert (code, err) == (ExitCode.OK, "")
    (request,) = fake_audit.requests
    assert request.path == "/v1/events"
    assert request.query == {
        "type": ["halt"],
        "severity": ["critical"],
        "source": ["plugin"],
        "bot": ["meme"],
        "user": ["alice"],
        "namespace": ["trading"],
        "since": ["2025-01-01T11:30:00.000000Z"],
        "until": ["2025-01-01T12:10:00.000000Z"],
        "limit": ["5"],
    }
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["User-Agent"] == user_agent()
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["SEQ", "TIMESTAMP", "SEVERITY", "TYPE"]
    assert lines[1].split()[:4] == ["3", "2025-01-01T12:00:03.000000Z", "critical", "halt"]
    assert TOKEN not in out + err


def test_without_n_the_query_spans_every_namespace(run: Run, fake_audit: FakeAuditApi) -> None:
    assert run("audit", "--audit-url", fake_audit.url, "-o", "json")[0] == ExitCode.OK
    assert fake_audit.requests[0].query == {"limit": ["100"]}


def test_the_url_may_come_from_the_environment(
    run: Run, fake_audit: FakeAuditApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRADINGBOT_AUDIT_URL", fake_audit.url + "/")
    code, out, _err = run("audit", "-o", "json")
    assert code == ExitCode.OK
    assert json.loads(out) == AUDIT_EVENTS


def test_summary_and_verify_follow_the_contract(run: Run, fake_audit: FakeAuditApi) -> None:
    code, out, _err = run(
        "audit", "summary", "--audit-url", fake_audit.url, "--bot", "stable", "-o", "json"
    )
    assert code == ExitCode.OK
    assert json.loads(out)["by_type"] == {"halt": 1, "restart": 1, "config_change": 1}
    assert fake_audit.requests[-1].path == "/v1/summary"
    assert fake_audit.requests[-1].query == {"bot": ["stable"]}
    code, out, _err = run("audit", "summary", "--audit-url", fake_audit.url)
    assert out.startswith("3 events\n") and "SEVERITY" in out
    assert run("audit", "verify", "--audit-url", fake_audit.url)[:2] == (
        ExitCode.OK,
        "ok: 3 events in 1 files, last seq 3\n",
    )
    fake_audit.verify_ok = False
    code, out, _err = run("audit", "verify", "--audit-url", fake_audit.url, "-o", "json")
    assert code == ExitCode.FAILED
    assert json.loads(out)["error"]["reason"] == "hash mismatch"


def test_export_writes_every_event_as_a_json_array_in_chain_order(
    run: Run, fake_audit: FakeAuditApi, tmp_path: Path
) -> None:
    target = tmp_path / "audit.json"
    code, _out, err = run("audit", "export", str(target), "--audit-url", fake_audit.url)
    assert code == ExitCode.OK
    assert err == f"exported 3 events to {target}\n"
    assert [e["seq"] for e in json.loads(target.read_text())] == [1, 2, 3]
    assert fake_audit.requests[-1].query == {"limit": ["0"]}
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_read_exits_3_with_the_rbac_hint(
    run: Run, fake_audit: FakeAuditApi, status: int
) -> None:
    fake_audit.status_override = status
    code, out, err = run("audit", "--audit-url", fake_audit.url)
    assert (code, out, err) == (ExitCode.FORBIDDEN, "", f"error: {AUDIT_FORBIDDEN_MESSAGE}\n")


def test_a_client_certificate_user_sends_no_token(run: Run, fake_audit: FakeAuditApi) -> None:
    code, _out, err = run("audit", "--audit-url", fake_audit.url, token=None, cert_user=True)
    assert "Authorization" not in fake_audit.requests[0].headers
    # This server insists on a token, so the read is refused.
    assert (code, err) == (ExitCode.FORBIDDEN, f"error: {AUDIT_FORBIDDEN_MESSAGE}\n")


def test_a_failed_export_leaves_no_file(run: Run, fake_audit: FakeAuditApi, tmp_path: Path) -> None:
    fake_audit.status_override = 500
    target = tmp_path / "audit.json"
    code, _out, err = run("audit", "export", str(target), "--audit-url", fake_audit.url)
    assert code == ExitCode.FAILED
    assert "HTTP 500" in err and "nope" in err
    assert list(tmp_path.iterdir()) == [tmp_path / "kubeconfig"]


def test_an_unreachable_audit_api_is_one_line(run: Run) -> None:
    code, _out, err = run("audit", "--audit-url", "http://127.0.0.1:9")
    assert code == ExitCode.FAILED
    assert err.startswith("error: cannot reach the audit API at http://127.0.0.1:9")


def test_a_server_that_is_not_the_audit_api_is_named(fake_audit: FakeAuditApi) -> None:
    source = HttpAuditSource(fake_audit.url, TOKEN)
    with pytest.raises(Exception, match="HTTP 404"):
        source._get("/v2/nothing")


def test_query_parameters_name_only_the_filters_set() -> None:
    assert AuditQuery(event_type="halt", bot="meme").params() == {"type": "halt", "bot": "meme"}


# -- --log-dir ------------------------------------------------------------------------------


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "audit"
    base = {"severity": "info", "details": {}, "namespace": "trading"}
    with open_writer(directory, fsync=False) as writer:
        writer.append_many(
            [
                {
                    **base,
                    "event_type": "config_change",
                    "source": "kubectl",
                    "target": "stable",
                    "action": "spec_changed",
                    "user_id": "bob",
                    "timestamp": "2025-01-01T10:00:00Z",
                },
                {
                    **base,
                    "event_type": "restart",
                    "source": "operator",
                    "target": "stable",
                    "action": "restart_completed",
                    "timestamp": "2025-01-01T11:00:00Z",
                },
                {
                    **base,
                    "event_type": "halt",
                    "severity": "critical",
                    "source": "plugin",
                    "target": "meme",
                    "action": "halt_requested",
                    "user_id": "alice",
                    "namespace": "other",
                    "timestamp": "2025-01-01T12:00:00Z",
                },
            ]
        )
    return directory


def test_log_dir_query_is_newest_first_and_filters(run: Run, log_dir: Path) -> None:
    code, out, _err = run("audit", "--log-dir", str(log_dir), "-o", "json")
    assert code == ExitCode.OK
    assert [e["event_type"] for e in json.loads(out)] == ["halt", "restart", "config_change"]
    out = run(
        "audit", "--log-dir", str(log_dir), "--bot", "stable", "--since", "45m", "-o", "json"
    )[1]
    assert json.loads(out) == []  # stable's events are older than 45 minutes
    out = run("audit", "--log-dir", str(log_dir), "--bot", "stable", "--since", "2h", "-o", "json")[
        1
    ]
    assert [e["event_type"] for e in json.loads(out)] == ["restart"]
    out = run("audit", "--log-dir", str(log_dir), "-n", "other", "--limit", "1")[1]
    assert out.splitlines()[1].split()[3] == "halt"


def test_log_dir_summary_has_the_api_shape(run: Run, log_dir: Path) -> None:
    code, out, _err = run("audit", "summary", "--log-dir", str(log_dir), "-o", "json")
    assert code == ExitCode.OK
    assert json.loads(out) == {
        "total": 3,
        "by_type": {"config_change": 1, "halt": 1, "restart": 1},
        "by_severity": {"info": 2, "critical": 1},
        "by_source": {"kubectl": 1, "operator": 1, "plugin": 1},
        "by_target": {"stable": 2, "meme": 1},
    }
    out = run("audit", "summary", "--log-dir", str(log_dir), "--source", "plugin", "-o", "json")[1]
    assert json.loads(out)["total"] == 1


def test_log_dir_export_and_verify(run: Run, log_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "export.json"
    assert run("audit", "export", str(target), "--log-dir", str(log_dir))[0] == ExitCode.OK
    exported = json.loads(target.read_text())
    assert [e["seq"] for e in exported] == [1, 2, 3]
    code, out, _err = run("audit", "export", "-", "--log-dir", str(log_dir), "--type", "halt")
    assert code == ExitCode.OK
    assert [e["seq"] for e in json.loads(out)] == [3]
    assert run("audit", "verify", "--log-dir", str(log_dir)) == (
        ExitCode.OK,
        "ok: 3 events in 1 files, last seq 3\n",
        "",
    )


def test_log_dir_verify_fails_on_an_edited_line(run: Run, log_dir: Path) -> None:
    (log_file,) = [p for p in log_dir.iterdir() if p.suffix == ".jsonl"]
    log_file.write_text(log_file.read_text().replace('"bob"', '"eve"'))
    code, out, _err = run("audit", "verify", "--log-dir", str(log_dir), "-o", "json")
    assert code == ExitCode.FAILED
    result = json.loads(out)
    assert result["ok"] is False
    assert result["error"]["line"] == 1
    assert "hash mismatch" in result["error"]["reason"]


def test_log_dir_must_exist(run: Run, tmp_path: Path) -> None:
    code, _out, err = run("audit", "--log-dir", str(tmp_path / "missing"))
    assert code == ExitCode.FAILED
    assert "is not a directory" in err


# -- verify --head-configmap -----------------------------------------------------------------

HEAD_NAMESPACE = "trading-system"
HEAD_NAME = "tb-tradingbot-operator-audit-head"
HEAD_REF = f"{HEAD_NAMESPACE}/{HEAD_NAME}"


@pytest.fixture
def run_kube(
    kubeconfig_for: Callable[..., Path], fake_kube: FakeKubeApi, monkeypatch: pytest.MonkeyPatch
) -> Run:
    """Like `run`, with a kubeconfig for the fake API server (the head is read from it)."""
    monkeypatch.delenv("TRADINGBOT_AUDIT_URL", raising=False)
    path = kubeconfig_for(fake_kube.url)

    def _run(*argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = plugin_main(
            ["--kubeconfig", str(path), *argv], stdout=out, stderr=err, clock=lambda: NOW
        )
        return code, out.getvalue(), err.getvalue()

    return _run


def record_head(fake_kube: FakeKubeApi, data: dict[str, str]) -> None:
    fake_kube.configmaps[(HEAD_NAMESPACE, HEAD_NAME)] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": HEAD_NAME, "namespace": HEAD_NAMESPACE},
        "data": data,
    }


def last_record(log_dir: Path) -> dict[str, Any]:
    (log_file,) = [p for p in log_dir.iterdir() if p.suffix == ".jsonl"]
    return dict(json.loads(log_file.read_text().splitlines()[-1]))


def test_log_dir_verify_against_the_head_configmap_catches_a_truncated_tail(
    run_kube: Run, fake_kube: FakeKubeApi, log_dir: Path
) -> None:
    last = last_record(log_dir)
    record_head(fake_kube, {"seq": str(last["seq"]), "hash": last["hash"]})
    code, out, _err = run_kube(
        "audit", "verify", "--log-dir", str(log_dir), "--head-configmap", HEAD_REF
    )
    assert code == ExitCode.OK, out
    assert "(seq 3) matches" in out
    assert (
        fake_kube.requests[-1].path == f"/api/v1/namespaces/{HEAD_NAMESPACE}/configmaps/{HEAD_NAME}"
    )

    (log_file,) = [p for p in log_dir.iterdir() if p.suffix == ".jsonl"]
    log_file.write_text("".join(log_file.read_text().splitlines(keepends=True)[:-1]))
    assert run_kube("audit", "verify", "--log-dir", str(log_dir))[0] == ExitCode.OK
    code, out, _err = run_kube(
        "audit", "verify", "--log-dir", str(log_dir), "--head-configmap", HEAD_REF, "-o", "json"
    )
    assert code == ExitCode.FAILED
    result = json.loads(out)
    assert result["ok"] is False
    assert result["error"]["reason"].startswith(
        "the log ends at seq 2 but the chain head recorded outside the log volume is at seq 3: "
        "the tail was truncated"
    )


def test_http_verify_sends_the_head_to_the_sidecar(
    run_kube: Run, fake_kube: FakeKubeApi, fake_audit: FakeAuditApi
) -> None:
    digest = "c" * 64
    record_head(fake_kube, {"seq": "3", "hash": digest, "updatedAt": "2025-01-01T12:00:00Z"})
    code, out, _err = run_kube(
        "audit", "verify", "--audit-url", fake_audit.url, "--head-configmap", HEAD_REF
    )
    assert code == ExitCode.OK, out
    (request,) = fake_audit.requests
    assert (request.path, request.query) == ("/v1/verify", {"head": [f"3:{digest}"]})
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"


@pytest.mark.parametrize(
    ("setup", "ref", "code", "message"),
    [
        ("missing", HEAD_REF, ExitCode.NOT_FOUND, f"configmap {HEAD_NAME} not found"),
        ("forbidden", HEAD_REF, ExitCode.FORBIDDEN, "not allowed to get configmap"),
        ("empty", HEAD_REF, ExitCode.FAILED, "holds no chain head"),
        ("garbage", HEAD_REF, ExitCode.FAILED, "holds no valid chain head"),
        (
            "missing",
            "no-slash",
            ExitCode.USAGE,
            "--head-configmap: 'no-slash' is not NAMESPACE/NAME",
        ),
    ],
)
def test_head_configmap_problems_are_one_line(
    run_kube: Run,
    fake_kube: FakeKubeApi,
    log_dir: Path,
    setup: str,
    ref: str,
    code: int,
    message: str,
) -> None:
    if setup == "forbidden":
        fake_kube.forbidden.add("get-configmap")
    if setup == "empty":
        record_head(fake_kube, {})
    if setup == "garbage":
        record_head(fake_kube, {"seq": "three", "hash": "x"})
    got, out, err = run_kube("audit", "verify", "--log-dir", str(log_dir), "--head-configmap", ref)
    assert (got, out) == (code, "")
    assert err.startswith("error: ") and message in err, err
