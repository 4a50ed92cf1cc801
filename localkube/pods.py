"""What the process node knows about each pod it runs, and the status it reports for it.

The status is computed from the processes as they are at the moment of reporting: a
container reads running only while its recorded process runs, and ready only while it runs
*and* its readiness probe passes, so no status ever shows Ready without a live, answering
process behind it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localkube.containers import ContainerProcess
from localkube.probes import InFlight, ProbeSpec, Readiness
from localkube.records import ExitRecord, exit_code

BACKOFF_START = 1.0
HOST_IP = "127.0.0.1"


def now_stamp() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Container:
    name: str
    spec: dict[str, Any]
    proc: ContainerProcess | None = None
    restart_count: int = 0
    started_at: str | None = None
    last_exit: dict[str, Any] | None = None
    next_start: float = 0.0
    backoff: float = BACKOFF_START
    readiness: Readiness = field(default_factory=Readiness)
    probe: ProbeSpec | None = None
    next_probe: float = 0.0
    in_flight: InFlight | None = None
    finished: bool = False
    term_sent: bool = False

    @property
    def ready(self) -> bool:
        return self.readiness.ready

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class PodRun:
    """A pod this node runs: its processes, IP and directories."""

    namespace: str
    name: str
    uid: str
    ip: str
    root: Path
    spec: dict[str, Any]
    containers: list[Container] = field(default_factory=list)
    env_cache: dict[str, list[str]] = field(default_factory=dict)
    reported: dict[str, Any] = field(default_factory=dict)
    deleting_since: float | None = None
    grace: float = 30.0
    start_time: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    # No container starts before the Secret volumes are written, as on a kubelet: a bot must
    # never run without the credentials its pod mounts.
    mounted: bool = False
    mount_error: str = ""
    next_mount: float = 0.0

    def live_processes(self) -> int:
        return sum(1 for c in self.containers if c.running())

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass
class Orphan:
    """A container process whose pod is gone: SIGTERM, its grace period, SIGKILL."""

    proc: ContainerProcess
    deadline: float | None = None

    @property
    def pod_key(self) -> str:
        return self.proc.record.pod_key


def terminated_state(
    proc: ContainerProcess | None, seen: ExitRecord | None = None
) -> dict[str, Any]:
    """A terminated container state from how its process ended (its own exit record, or the
    one a previous agent saw); unknown when nothing recorded the end."""
    ended = proc.exit if proc is not None else seen
    if ended is None or (proc is not None and proc.lost):
        return {
            "terminated": {
                "exitCode": 137,
                "reason": "ContainerStatusUnknown",
                "message": "the container's process and its shim ended unseen",
                "startedAt": proc.record.started_at if proc is not None else None,
                "finishedAt": now_stamp(),
            }
        }
    code = exit_code(ended.returncode)
    state: dict[str, Any] = {
        "exitCode": code,
        "reason": "Completed" if code == 0 else "Error",
        "startedAt": ended.started_at or None,
        "finishedAt": ended.finished_at,
    }
    if ended.message:
        state["message"] = ended.message
    return {"terminated": state}


def _container_entry(c: Container, running: bool, state: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": c.name,
        "ready": running and c.ready,
        "started": running,
        "restartCount": c.restart_count,
        "image": c.spec.get("image", ""),
        "imageID": "",
        "containerID": f"process://{c.proc.pid}" if running and c.proc else "",
        "state": state,
    }


def pod_status(run: PodRun) -> dict[str, Any]:
    """The pod's status now, without timestamps (so an unchanged one is not sent again)."""
    statuses = []
    for c in run.containers:
        running = c.running()
        if running:
            state: dict[str, Any] = {"running": {"startedAt": c.started_at}}
        elif c.finished and c.last_exit:
            state = c.last_exit
        else:
            waiting = {"reason": "CrashLoopBackOff" if c.restart_count else "ContainerCreating"}
            if run.mount_error:
                waiting["message"] = run.mount_error
            state = {"waiting": waiting}
        entry = _container_entry(c, running, state)
        if c.last_exit and not c.finished:
            entry["lastState"] = c.last_exit
        statuses.append(entry)
    all_ready = bool(statuses) and all(s["ready"] for s in statuses)
    finished = [c for c in run.containers if c.finished]
    if finished and len(finished) == len(run.containers):
        codes = [(c.last_exit or {}).get("terminated", {}).get("exitCode", 1) for c in finished]
        phase = "Succeeded" if all(code == 0 for code in codes) else "Failed"
    else:
        phase = "Running" if any(s["started"] for s in statuses) else "Pending"
    ready = "True" if all_ready else "False"
    return {
        "phase": phase,
        "podIP": run.ip,
        "podIPs": [{"ip": run.ip}],
        "hostIP": HOST_IP,
        "hostIPs": [{"ip": HOST_IP}],
        "conditions": [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Initialized", "status": "True"},
            {"type": "ContainersReady", "status": ready},
            {"type": "Ready", "status": ready},
        ],
        "containerStatuses": statuses,
    }


def stamped(status: dict[str, Any], start_time: str, now: str) -> dict[str, Any]:
    """The status as sent: the pod's start time, and every condition stamped now."""
    conditions = [{**c, "lastTransitionTime": now} for c in status["conditions"]]
    return {**status, "startTime": start_time, "conditions": conditions}


def stopped_status(run: PodRun, now: str) -> dict[str, Any]:
    """The node is going away: every container reads not ready and, its process ended,
    terminated; the phase is left for the next agent to establish."""
    statuses = []
    for c in run.containers:
        running = c.running()
        if running:
            state: dict[str, Any] = {"running": {"startedAt": c.started_at}}
        elif c.proc is not None:
            state = terminated_state(c.proc)
        else:
            state = c.last_exit or {"waiting": {"reason": "NodeShutdown"}}
        statuses.append({**_container_entry(c, running, state), "ready": False})
    conditions = [
        {"type": t, "status": "False", "reason": "NodeShutdown", "lastTransitionTime": now}
        for t in ("ContainersReady", "Ready")
    ]
    return {"conditions": conditions, "containerStatuses": statuses}
