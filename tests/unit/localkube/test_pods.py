"""The pod status the process node reports: Ready only with a live process whose probe
passes, and the truth about how a process ended."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from localkube.pods import Container, PodRun, pod_status, stopped_status, terminated_state
from localkube.probes import Readiness
from localkube.procfs import ProcessIdentity
from localkube.records import ContainerRecord, ExitRecord, Slot

PROCESS = ProcessIdentity(pid=4242, start_time=1, boot_id="b")
RECORD = ContainerRecord(
    pod_uid="uid-1",
    namespace="ns",
    pod="p",
    container="main",
    pod_ip="127.0.0.2",
    grace_seconds=3,
    started_at="2026-12-01T20:00:00Z",
    process=PROCESS,
    shim=ProcessIdentity(pid=4241, start_time=1, boot_id="b"),
)


class FakeProcess:
    """A container process that runs, or ended with `code`."""

    def __init__(self, code: int | None = None, *, lost: bool = False) -> None:
        self.code, self.lost, self.pid, self.record = code, lost, PROCESS.pid, RECORD
        self.exit = (
            None
            if code is None or lost
            else ExitRecord(PROCESS, code, "2026-12-01T20:05:00Z", RECORD.started_at)
        )
        self.slot = Slot(Path("/nonexistent"), "uid-1", "main")

    def poll(self) -> int | None:
        return self.code


def container(proc: FakeProcess | None = None, *, ready: bool = False, **fields: Any) -> Container:
    c = Container(name="main", spec={"image": "python"}, **fields)
    c.proc = proc  # type: ignore[assignment]
    c.readiness = Readiness(ready=ready)
    return c


def run(*containers: Container) -> PodRun:
    return PodRun(
        namespace="ns",
        name="p",
        uid="uid-1",
        ip="127.0.0.2",
        root=Path("/nonexistent"),
        spec={},
        containers=list(containers),
    )


def ready_of(status: dict[str, Any]) -> str:
    return next(c["status"] for c in status["conditions"] if c["type"] == "Ready")


@pytest.mark.parametrize(
    ("c", "ready", "container_ready", "phase", "state"),
    [
        (container(FakeProcess(), ready=True), "True", True, "Running", "running"),
        (container(FakeProcess(), ready=False), "False", False, "Running", "running"),
        # The process died since the last sync: not ready at once, even if the probe said so.
        (container(FakeProcess(137), ready=True), "False", False, "Pending", "waiting"),
        (container(None, ready=True), "False", False, "Pending", "waiting"),
        (
            container(
                None,
                finished=True,
                last_exit={"terminated": {"exitCode": 0, "reason": "Completed"}},
            ),
            "False",
            False,
            "Succeeded",
            "terminated",
        ),
        (
            container(None, finished=True, last_exit={"terminated": {"exitCode": 1}}),
            "False",
            False,
            "Failed",
            "terminated",
        ),
    ],
)
def test_pod_status(
    c: Container, ready: str, container_ready: bool, phase: str, state: str
) -> None:
    status = pod_status(run(c))
    assert ready_of(status) == ready
    (entry,) = status["containerStatuses"]
    assert entry["ready"] is container_ready and status["phase"] == phase
    assert list(entry["state"]) == [state]
    assert entry["containerID"] == ("process://4242" if state == "running" else "")


def test_a_pod_is_ready_only_when_every_container_is() -> None:
    both = run(container(FakeProcess(), ready=True), container(FakeProcess(), ready=False))
    assert ready_of(pod_status(both)) == "False"
    assert ready_of(pod_status(run())) == "False"  # no container, nothing ready


def test_a_restarting_container_waits_in_back_off_with_its_last_exit() -> None:
    last = {"terminated": {"exitCode": 137, "reason": "Error"}}
    (entry,) = pod_status(run(container(None, restart_count=2, last_exit=last)))[
        "containerStatuses"
    ]
    assert entry["state"] == {"waiting": {"reason": "CrashLoopBackOff"}}
    assert entry["lastState"] == last and entry["restartCount"] == 2


def test_a_stopping_node_reports_nothing_ready() -> None:
    status = stopped_status(
        run(container(FakeProcess(), ready=True), container(FakeProcess(0), ready=True)), "now"
    )
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "ContainersReady": "False",
        "Ready": "False",
    }
    running, ended = status["containerStatuses"]
    assert not running["ready"] and "running" in running["state"]
    assert not ended["ready"] and ended["state"]["terminated"]["exitCode"] == 0


@pytest.mark.parametrize(
    ("proc", "seen", "code", "reason"),
    [
        (FakeProcess(0), None, 0, "Completed"),
        (FakeProcess(-15), None, 143, "Error"),
        (FakeProcess(-9, lost=True), None, 137, "ContainerStatusUnknown"),
        (None, ExitRecord(PROCESS, 2, "2026-12-01T20:05:00Z"), 2, "Error"),
        (None, None, 137, "ContainerStatusUnknown"),
    ],
)
def test_terminated_state(
    proc: FakeProcess | None, seen: ExitRecord | None, code: int, reason: str
) -> None:
    state = terminated_state(proc, seen)["terminated"]  # type: ignore[arg-type]
    assert (state["exitCode"], state["reason"]) == (code, reason)
