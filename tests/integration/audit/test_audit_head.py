"""The chain head outside the log volume, against the real API server.

The sidecar runs as a real process with the chart's identity for it: auth-delegator plus the
chart's `<fullname>-audit-head` Role (rendered from the chart), and nothing else, so these
tests also prove that the Role is all recording the head needs. Lines cut off the end of the
log are then caught by `verify --head-configmap` and by the sidecar itself on restart.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from localkube import product
from tests import kube
from tests.integration.conftest import SIDECAR_ACCOUNT, SidecarProcess, wait_allowed
from tradingbot_audit import AuditFilter, query
from tradingbot_audit.cli import main as audit_main
from tradingbot_audit.files import list_log_files
from tradingbot_plugin.plugin import main as plugin_main

TRUNCATED = "the chain head recorded outside the log volume is at seq"


class HeadSidecar(SidecarProcess):
    """The sidecar with `--head-configmap`; may be started on a log it refuses to continue."""

    def __init__(self, log_dir: Path, kubeconfig: Path, output: Path, args: list[str]) -> None:
        super().__init__(log_dir, kubeconfig, output)
        self.args = args

    def start(self, *, refusing: bool = False) -> HeadSidecar:
        with open(self.output, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tradingbot_audit",
                    "--log-dir",
                    str(self.log_dir),
                    "serve",
                    "--kubeconfig",
                    str(self.kubeconfig),
                    "--listen",
                    f"127.0.0.1:{self.api_port}",
                    "--ingest-listen",
                    f"127.0.0.1:{self.ingest_port}",
                    *self.args,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        if refusing:
            kube.wait_for(self._refusing, timeout=30, message="audit sidecar refusing")
        else:
            kube.wait_for(self._serving, timeout=30, message="audit sidecar /healthz")
        return self

    def _refusing(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"sidecar exited with {self.proc.returncode}:\n{self.logs()}")
        try:
            status, body = self.request("GET", "/healthz")
        except OSError:
            return False
        return status == 503 and body.get("status") == "refusing"

    def metrics(self) -> str:
        with urllib.request.urlopen(f"{self.api_url}/metrics", timeout=5) as response:
            return str(response.read().decode())


@pytest.fixture
def head_ref(namespace: str) -> str:
    return product.audit_head_configmap(namespace)


@pytest.fixture
def head_kubeconfig(api_client: client.ApiClient, namespace: str, sidecar_kubeconfig: Path) -> Path:
    """The sidecar's kubeconfig, with the chart's Role for the head bound to it."""
    kube.apply(api_client, product.audit_head_rbac(namespace, SIDECAR_ACCOUNT), namespace)
    wait_allowed(
        api_client,
        f"system:serviceaccount:{namespace}:{SIDECAR_ACCOUNT}",
        namespace,
        "",
        "configmaps",
        verb="create",
    )
    return sidecar_kubeconfig


StartHead = Callable[..., HeadSidecar]


@pytest.fixture
def start_head_sidecar(tmp_path: Path, head_kubeconfig: Path, head_ref: str) -> Iterator[StartHead]:
    started: list[HeadSidecar] = []

    def start(*extra: str, refusing: bool = False) -> HeadSidecar:
        process = HeadSidecar(
            tmp_path / "audit",
            head_kubeconfig,
            tmp_path / f"sidecar-{len(started)}.log",
            ["--head-configmap", head_ref, "--head-interval", "0.05", *extra],
        )
        started.append(process)
        return process.start(refusing=refusing)

    yield start
    for process in started:
        process.kill()


def event(key: str, namespace: str) -> dict[str, Any]:
    return {
        "event_type": "config_change",
        "severity": "info",
        "source": "kubectl",
        "target": "bot-a",
        "namespace": namespace,
        "action": "spec_changed",
        "details": {"key": key},
        "user_id": "alice",
        "dedup_key": key,
    }


def append(
    sidecar: HeadSidecar, namespace: str, count: int, per_request: int = 4, prefix: str = "e"
) -> int:
    """`count` events in requests of `per_request`; the last acknowledged seq."""
    last = 0
    for start in range(0, count, per_request):
        keys = [f"{prefix}{i}" for i in range(start, min(count, start + per_request))]
        batch = [event(key, namespace) for key in keys]
        status, body = sidecar.request("POST", "/v1/events", body={"events": batch}, ingest=True)
        assert status == 200, body
        last = body["stored"][-1]["seq"]
    return int(last)


def recorded(core_api: client.CoreV1Api, ref: str) -> dict[str, str]:
    namespace, name = ref.split("/")
    try:
        return dict(core_api.read_namespaced_config_map(name, namespace).data or {})
    except client.ApiException as err:
        if err.status == 404:
            return {}
        raise


def wait_recorded(core_api: client.CoreV1Api, ref: str, seq: int) -> dict[str, str]:
    return dict(
        kube.wait_for(
            lambda: (data := recorded(core_api, ref)).get("seq") == str(seq) and data,
            timeout=15,
            message=f"the chain head at seq {seq} in {ref}",
        )
    )


def cut_last_lines(log_dir: Path, count: int) -> None:
    path = list_log_files(log_dir)[-1].path
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-count]))


def verify(*argv: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    code = audit_main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue() + err.getvalue()


def test_verify_against_the_head_configmap_catches_a_truncated_tail(
    namespace: str,
    start_head_sidecar: StartHead,
    core_api: client.CoreV1Api,
    kubeconfig: Path,
    head_ref: str,
) -> None:
    sidecar = start_head_sidecar()
    assert append(sidecar, namespace, 12) == 12
    data = wait_recorded(core_api, head_ref, 12)
    records = query(sidecar.log_dir, AuditFilter(), limit=1)
    assert data["hash"] == records[0]["hash"]
    assert data["file"] == list_log_files(sidecar.log_dir)[-1].path.name
    assert data["updatedAt"]
    assert sidecar.stop() == 0, sidecar.logs()

    log_dir = str(sidecar.log_dir)
    head_args = ["--head-configmap", head_ref, "--kubeconfig", str(kubeconfig)]
    code, out = verify("--log-dir", log_dir, "verify", *head_args)
    assert code == 0, out
    assert "(seq 12) matches" in out

    cut_last_lines(sidecar.log_dir, 3)
    code, out = verify("--log-dir", log_dir, "verify")
    assert code == 0, out  # the chain alone cannot tell
    code, out = verify("--log-dir", log_dir, "verify", *head_args)
    assert code == 1
    assert f"the log ends at seq 9 but {TRUNCATED} 12: the tail was truncated" in out

    # The same check through the kubectl plugin, with the reader's own kubeconfig.
    plugin_out, plugin_err = io.StringIO(), io.StringIO()
    code = plugin_main(
        [
            "--kubeconfig",
            str(kubeconfig),
            "audit",
            "verify",
            "--log-dir",
            log_dir,
            "--head-configmap",
            head_ref,
            "-o",
            "json",
        ],
        stdout=plugin_out,
        stderr=plugin_err,
    )
    assert code == 1, plugin_err.getvalue()
    result = json.loads(plugin_out.getvalue())
    assert result["error"]["seq"] == 9
    assert result["error"]["reason"].startswith(f"the log ends at seq 9 but {TRUNCATED} 12")


def test_a_sidecar_restarted_on_a_truncated_log_refuses_to_append(
    namespace: str,
    start_head_sidecar: StartHead,
    core_api: client.CoreV1Api,
    kubeconfig: Path,
    head_ref: str,
) -> None:
    first = start_head_sidecar()
    assert append(first, namespace, 10, per_request=1) == 10
    before = wait_recorded(core_api, head_ref, 10)
    assert first.stop() == 0, first.logs()
    cut_last_lines(first.log_dir, 3)

    second = start_head_sidecar(refusing=True)
    status, body = second.request("GET", "/healthz")
    assert status == 503
    assert f"the log ends at seq 7 but {TRUNCATED} 10" in body["reason"]
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{second.ingest_url}/healthz", timeout=2)
    assert "tradingbot_audit_head_mismatch 1.0" in second.metrics()
    assert "the tail was truncated" in second.logs()
    assert recorded(core_api, head_ref) == before  # the evidence is left alone
    assert second.stop() == 0, second.logs()
    assert query(second.log_dir, AuditFilter(), limit=1)[0]["seq"] == 7  # nothing appended

    # Continuing anyway is possible, and says so in the log itself.
    third = start_head_sidecar("--accept-head-mismatch")
    accepted = query(third.log_dir, AuditFilter(), limit=1)[0]
    assert (accepted["seq"], accepted["severity"], accepted["action"]) == (
        8,
        "critical",
        "chain_head_mismatch_accepted",
    )
    assert accepted["details"]["recorded_seq"] == 10
    assert append(third, namespace, 2, per_request=1, prefix="after") == 10
    wait_recorded(core_api, head_ref, 10)
    assert third.stop() == 0, third.logs()
    data = recorded(core_api, head_ref)
    assert data["hash"] != before["hash"]
    code, out = verify(
        "--log-dir",
        str(third.log_dir),
        "verify",
        "--head-configmap",
        head_ref,
        "--kubeconfig",
        str(kubeconfig),
    )
    assert code == 0, out
