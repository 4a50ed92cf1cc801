"""The per-container shim on its own (no cluster): records, exit status, and lifetime."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from localkube import containers, procfs
from localkube.containers import ContainerProcess, ContainerStartError
from localkube.procfs import ProcessIdentity
from localkube.records import RecordStore, ShimRequest

UID = "3f2a9c1e-0000-4000-8000-000000000001"


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def anchor() -> Iterator[subprocess.Popen[bytes]]:
    """A stand-in for the cluster's API server: the container must not outlive it."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait()


def identity(proc: subprocess.Popen[bytes]) -> ProcessIdentity:
    found = procfs.identify(proc.pid)
    assert found is not None
    return found


def request(
    tmp_path: Path, script: str, *, anchors: list[ProcessIdentity], grace: float = 1.0
) -> ShimRequest:
    return ShimRequest(
        argv=[sys.executable, "-c", textwrap.dedent(script)],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OUT": str(tmp_path / "out")},
        cwd=str(tmp_path),
        log_path=str(tmp_path / "container.log"),
        records_dir=str(tmp_path / "containers"),
        pod_uid=UID,
        namespace="ns",
        pod="pod",
        container="main",
        pod_ip="127.0.0.9",
        grace_seconds=grace,
        anchors=anchors,
    )


def start(req: ShimRequest, tmp_path: Path) -> ContainerProcess:
    return containers.spawn(req, tmp_path / "shim.log")


def handling_sigterm(tmp_path: Path) -> None:
    wait_until(lambda: (tmp_path / "out.ready").exists(), 10, "the container's SIGTERM handler")


RECORD_CHECK = """
    import json, os
    record = json.load(open(os.environ["RECORD"]))
    open(os.environ["OUT"], "w").write(json.dumps({"pid": os.getpid(), "record": record}))
    raise SystemExit(3)
"""


def test_the_record_exists_before_the_command_runs_and_the_exit_is_recorded(
    tmp_path: Path, anchor: subprocess.Popen[bytes]
) -> None:
    req = request(tmp_path, RECORD_CHECK, anchors=[identity(anchor)])
    slot = RecordStore(Path(req.records_dir)).slot(UID, "main")
    req.env["RECORD"] = str(slot.record_path)
    proc = start(req, tmp_path)
    assert proc.wait(timeout=10) == 3
    seen = json.loads((tmp_path / "out").read_text())
    assert seen["pid"] == proc.pid == seen["record"]["process"]["pid"]
    record = slot.read_record()
    assert record is not None and record.process == proc.record.process
    assert record.pod_ip == "127.0.0.9" and record.grace_seconds == 1.0
    assert record.shim.pid == proc.shim.pid  # type: ignore[union-attr]
    ended = slot.read_exit()
    assert ended is not None and ended.returncode == 3 and ended.process == record.process
    assert not proc.lost and not proc.running()


def test_a_command_that_cannot_run_exits_127_with_the_reason(
    tmp_path: Path, anchor: subprocess.Popen[bytes]
) -> None:
    req = request(tmp_path, "pass", anchors=[identity(anchor)])
    req = ShimRequest(**{**req.__dict__, "argv": ["/no/such/binary"]})
    proc = start(req, tmp_path)
    assert proc.wait(timeout=10) == 127
    assert proc.exit is not None and "FileNotFoundError" in proc.exit.message


SERVE = """
    import os, signal, subprocess, sys, time
    def on_term(*_):
        open(os.environ["OUT"], "w").write("sigterm")
        if not os.environ.get("STUBBORN"):
            raise SystemExit(0)
    signal.signal(signal.SIGTERM, on_term)
    open(os.environ["OUT"] + ".ready", "w").close()
    if os.environ.get("HELPER"):
        helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        open(os.environ["HELPER"], "w").write(str(helper.pid))
    while True:
        time.sleep(0.05)
"""


def test_the_container_ends_when_its_anchor_dies(
    tmp_path: Path, anchor: subprocess.Popen[bytes]
) -> None:
    proc = start(request(tmp_path, SERVE, anchors=[identity(anchor)], grace=5), tmp_path)
    assert proc.running()
    handling_sigterm(tmp_path)
    anchor.kill()
    anchor.wait()
    started = time.monotonic()
    assert proc.wait(timeout=10) == 0
    assert time.monotonic() - started < 3  # a pidfd wakes the shim at once
    assert (tmp_path / "out").read_text() == "sigterm"


def test_a_container_ignoring_sigterm_is_killed_after_the_grace_period(
    tmp_path: Path, anchor: subprocess.Popen[bytes]
) -> None:
    req = request(tmp_path, SERVE, anchors=[identity(anchor)], grace=1.5)
    req.env["STUBBORN"] = "1"
    proc = start(req, tmp_path)
    handling_sigterm(tmp_path)
    anchor.kill()
    anchor.wait()
    started = time.monotonic()
    assert proc.wait(timeout=10) == -signal.SIGKILL
    assert 1.4 <= time.monotonic() - started < 4
    assert (tmp_path / "out").read_text() == "sigterm"


def test_the_container_does_not_survive_its_shim(
    tmp_path: Path, anchor: subprocess.Popen[bytes]
) -> None:
    proc = start(request(tmp_path, SERVE, anchors=[identity(anchor)]), tmp_path)
    assert proc.shim is not None
    proc.shim.kill()
    assert proc.wait(timeout=5) == -signal.SIGKILL
    assert proc.lost  # nobody was left to see how it ended


def test_what_the_container_left_in_its_process_group_is_killed_with_it(
    tmp_path: Path, anchor: subprocess.Popen[bytes]
) -> None:
    req = request(tmp_path, SERVE, anchors=[identity(anchor)])
    req.env["HELPER"] = str(tmp_path / "helper")
    proc = start(req, tmp_path)
    wait_until(lambda: (tmp_path / "helper").exists(), 10, "the helper to start")
    helper = procfs.identify(int((tmp_path / "helper").read_text()))
    assert helper is not None and procfs.is_running(helper)
    proc.kill()
    assert proc.wait(timeout=5) == -signal.SIGKILL
    wait_until(lambda: not procfs.is_running(helper), 5, "the helper to be killed")


# A node agent in miniature: starts a container through a shim, reports, then waits to die.
AGENT = """
    import json, sys, time
    from pathlib import Path
    from localkube import containers
    from localkube.records import ShimRequest
    proc = containers.spawn(ShimRequest.parse(sys.stdin.read()), Path(sys.argv[1]))
    print(json.dumps(proc.record.process.to_json()), flush=True)
    time.sleep(120)
"""


def test_the_container_outlives_the_agent_that_started_it_and_is_adopted(
    tmp_path: Path, anchor: subprocess.Popen[bytes]
) -> None:
    req = request(tmp_path, SERVE, anchors=[identity(anchor)], grace=3)
    agent = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(AGENT), str(tmp_path / "shim.log")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert agent.stdin is not None and agent.stdout is not None
    agent.stdin.write(req.encode())
    agent.stdin.close()
    started = ProcessIdentity.from_json(json.loads(agent.stdout.readline()))
    handling_sigterm(tmp_path)
    agent.kill()  # as a node agent SIGKILLed
    agent.wait()
    time.sleep(0.5)
    assert procfs.is_running(started)
    slot = RecordStore(Path(req.records_dir)).slot(UID, "main")
    record = slot.read_record()
    assert record is not None and record.process == started
    adopted = containers.adopt(record, slot)
    assert adopted.poll() is None and adopted.pid == started.pid
    adopted.signal_group(signal.SIGTERM)
    assert adopted.wait(timeout=5) == 0  # the exit status still reaches whoever adopted it
    assert (tmp_path / "out").read_text() == "sigterm"


def test_no_container_starts_for_a_cluster_that_is_gone(
    tmp_path: Path, anchor: subprocess.Popen[bytes]
) -> None:
    gone = identity(anchor)
    anchor.kill()
    anchor.wait()
    with pytest.raises(ContainerStartError, match="gone"):
        start(request(tmp_path, SERVE, anchors=[gone]), tmp_path)
    assert RecordStore(tmp_path / "containers").load() == ([], [])
