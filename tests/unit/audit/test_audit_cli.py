"""The command line: python -m tradingbot_audit --log-dir DIR COMMAND."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tradingbot_audit import AuditWriter
from tradingbot_audit.cli import LOG_DIR_ENV, main
from tradingbot_audit.files import list_log_files

WriterFactory = Callable[..., AuditWriter]
EventFactory = Callable[..., dict[str, Any]]


def run(*argv: str, stdin: str = "") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdin=io.StringIO(stdin), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def small_log(log_dir: Path, writer_factory: WriterFactory, event: EventFactory) -> Path:
    writer = writer_factory(max_file_bytes=2048)
    writer.append_many(
        [
            event(event_type="config_change", source="kubectl", user_id="alice", target="meme"),
            event(event_type="restart", source="operator", target="meme"),
            event(event_type="halt", severity="critical", source="plugin", user_id="bob"),
            event(event_type="trade", source="bot", target="stable", user_id=None),
            event(event_type="restart", source="operator", target="stable"),
        ]
    )
    writer.close()
    return log_dir


def test_verify_prints_a_one_line_summary_and_exits_zero(small_log: Path) -> None:
    files = len(list_log_files(small_log))
    assert run("--log-dir", str(small_log), "verify") == (
        0,
        f"ok: 5 events in {files} files, last seq 5\n",
        "",
    )


@pytest.mark.parametrize("jobs", ["1", "0"], ids=["in one process", "in one per CPU"])
def test_verify_prints_the_first_bad_line_and_exits_one(small_log: Path, jobs: str) -> None:
    first = list_log_files(small_log)[0].path
    first.write_bytes(first.read_bytes().replace(b"alice", b"mallory"))
    code, out, _err = run("--log-dir", str(small_log), "verify", "--jobs", jobs)
    assert code == 1
    assert out.startswith(f"FAILED: {first.name}:1 (seq 1): hash mismatch")


def test_verify_of_a_directory_that_does_not_exist_fails(tmp_path: Path) -> None:
    code, _out, err = run("--log-dir", str(tmp_path / "missing"), "verify")
    assert code == 1
    assert "is not a directory" in err


def test_query_as_json_applies_the_filters(small_log: Path) -> None:
    code, out, _err = run(
        "--log-dir", str(small_log), "query", "--type", "restart", "--bot", "meme", "-o", "json"
    )
    assert code == 0
    assert [(r["seq"], r["event_type"], r["target"]) for r in json.loads(out)] == [
        (2, "restart", "meme")
    ]


def test_query_as_a_table_shows_the_most_recent_first(small_log: Path) -> None:
    code, out, _err = run("--log-dir", str(small_log), "query", "--limit", "2")
    lines = out.splitlines()
    assert code == 0
    assert lines[0].split() == [
        "SEQ",
        "TIMESTAMP",
        "SEVERITY",
        "TYPE",
        "SOURCE",
        "TARGET",
        "USER",
        "ACTION",
    ]
    assert [line.split()[0] for line in lines[1:]] == ["5", "4"]


@pytest.mark.parametrize(
    ("args", "seqs"),
    [
        pytest.param(["--severity", "critical"], [3], id="by severity"),
        pytest.param(
            ["--source", "kubectl", "--source", "plugin"], [3, 1], id="by any of two sources"
        ),
        pytest.param(["--user", "alice"], [1], id="by user"),
        pytest.param(
            ["--namespace", "trading", "--limit", "0"],
            [5, 4, 3, 2, 1],
            id="by namespace with no limit",
        ),
        pytest.param(
            ["--since", "2025-01-01T12:00:00Z", "--until", "2025-01-01T12:00:01Z"],
            [5, 4, 3, 2, 1],
            id="by time range",
        ),
        pytest.param(["--until", "2025-01-01"], [], id="before any event"),
        pytest.param(["--oldest-first", "--limit", "2"], [1, 2], id="oldest first"),
    ],
)
def test_query_filters_from_the_command_line(
    small_log: Path, args: list[str], seqs: list[int]
) -> None:
    code, out, _err = run("--log-dir", str(small_log), "query", *args, "-o", "json")
    assert code == 0
    assert [r["seq"] for r in json.loads(out)] == seqs


def test_query_without_matches_says_so(small_log: Path) -> None:
    assert run("--log-dir", str(small_log), "query", "--type", "resume")[1] == (
        "no matching events\n"
    )


def test_a_bad_time_bound_is_an_error_with_a_hint(small_log: Path) -> None:
    code, _out, err = run("--log-dir", str(small_log), "query", "--since", "soon")
    assert code == 1
    assert "30m, 24h or 7d" in err


def test_summary_as_json_and_as_a_table(small_log: Path) -> None:
    code, out, _err = run("--log-dir", str(small_log), "summary", "-o", "json")
    assert code == 0
    result = json.loads(out)
    assert result["total"] == 5
    assert result["by_event_type"] == {"restart": 2, "config_change": 1, "halt": 1, "trade": 1}
    code, out, _err = run("--log-dir", str(small_log), "summary", "--type", "restart")
    assert code == 0
    assert out.startswith("2 events, seq 2..5")
    assert "TARGET" in out and "meme" in out


def test_export_writes_a_json_array_file(small_log: Path, tmp_path: Path) -> None:
    target = tmp_path / "export.json"
    code, _out, err = run("--log-dir", str(small_log), "export", str(target), "--bot", "stable")
    assert code == 0
    assert "exported 3 events" in err
    assert [r["seq"] for r in json.loads(target.read_text())] == [3, 4, 5]


def test_export_to_stdout(small_log: Path) -> None:
    code, out, _err = run("--log-dir", str(small_log), "export", "-")
    assert code == 0
    assert len(json.loads(out)) == 5


def test_append_reads_json_lines_and_reports_seq_hash_and_duplicates(log_dir: Path) -> None:
    lines = "\n".join(
        json.dumps({"event_type": "stop", "source": "kubectl", "action": "stop", "dedup_key": k})
        for k in ("a", "b", "a")
    )
    code, out, _err = run("--log-dir", str(log_dir), "append", stdin=lines + "\n\n")
    assert code == 0
    results = [json.loads(line) for line in out.splitlines()]
    assert [(r["seq"], r["duplicate"]) for r in results] == [(1, False), (2, False), (1, True)]
    assert run("--log-dir", str(log_dir), "verify")[0] == 0


def test_append_rejects_bad_input_naming_the_line_and_writes_nothing(log_dir: Path) -> None:
    good = json.dumps({"event_type": "stop", "source": "kubectl", "action": "stop"})
    code, _out, err = run("--log-dir", str(log_dir), "append", stdin=f"{good}\nnot json\n")
    assert code == 1
    assert "stdin line 2 is not JSON" in err
    code, _out, err = run(
        "--log-dir",
        str(log_dir),
        "append",
        stdin=json.dumps({"event_type": "stop", "source": "x", "action": "s", "severity": "meh"}),
    )
    assert code == 1
    assert "severity 'meh'" in err
    assert list_log_files(log_dir) == []


def test_append_while_another_writer_runs_is_refused(
    log_dir: Path, writer_factory: WriterFactory
) -> None:
    writer_factory()
    code, _out, err = run(
        "--log-dir",
        str(log_dir),
        "append",
        stdin=json.dumps({"event_type": "stop", "source": "x", "action": "s"}),
    )
    assert code == 1
    assert "another audit writer" in err


def test_the_log_dir_can_come_from_the_environment(
    small_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(LOG_DIR_ENV, str(small_log))
    assert run("verify")[0] == 0


def test_a_missing_log_dir_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(LOG_DIR_ENV, raising=False)
    with pytest.raises(SystemExit) as exited:
        run("verify")
    assert exited.value.code == 2


def test_the_module_runs_with_python_dash_m(small_log: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "tradingbot_audit", "--log-dir", str(small_log), "verify"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("ok: 5 events")
