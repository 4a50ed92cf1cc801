"""What a (re)starting process node does with each container record it finds: pure decisions.

A node agent may die at any moment (SIGKILL, OOM) while its containers keep running under
their shims (localkube/shim.py). The next agent on the same data dir must then, for every
container, do exactly one of: adopt the running process, restart a dead one per the pod's
restartPolicy, report it finished, start it for the first time, or terminate a process whose
pod is gone. Never two processes for one container, never a process nobody manages.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence, Set
from dataclasses import dataclass


class Action(enum.Enum):
    ADOPT = "adopt"  # the recorded process runs: monitor, probe, report it; start nothing
    RESTART = "restart"  # it is gone and the restartPolicy says run again: count a restart
    FINISHED = "finished"  # it is gone and the restartPolicy says stay down: report its exit
    START = "start"  # no record: the container never ran here
    TERMINATE = "terminate"  # it runs but its pod is gone (or another pod): SIGTERM, grace, KILL
    DISCARD = "discard"  # nothing runs and nothing is to run: drop the record


@dataclass(frozen=True)
class PodFacts:
    """The pod as the API server has it now, bound to this node and served by it."""

    uid: str
    restart_policy: str = "Always"
    deleting: bool = False


@dataclass(frozen=True)
class RecordFacts:
    """A container's files and what /proc says about its process."""

    pod_uid: str
    running: bool
    exit_code: int | None = None  # None: unknown (its shim was killed too)
    # Only the exit record is left: the previous agent saw the process end and counted it.
    seen_exit: bool = False


def restarts_after_exit(restart_policy: str, exit_code: int | None) -> bool:
    """The kubelet's rule: Always restarts, OnFailure restarts unless it exited 0, Never not.
    An unknown exit is a failure: the process did not finish by itself as far as we know."""
    if restart_policy == "Never":
        return False
    if restart_policy == "OnFailure":
        return exit_code != 0
    return True


def decide(pod: PodFacts | None, record: RecordFacts | None) -> Action:
    """One container's fate. `pod` is None when no pod with the record's uid is bound to
    this node any more (deleted, replaced by a namesake with another uid, moved)."""
    if record is None:
        if pod is None or pod.deleting:
            return Action.DISCARD
        return Action.START
    if pod is None or pod.uid != record.pod_uid:
        return Action.TERMINATE if record.running else Action.DISCARD
    if record.running:
        # Also when the pod is being deleted: adopted, it then gets its grace period.
        return Action.ADOPT
    if pod.deleting:
        return Action.DISCARD
    if not restarts_after_exit(pod.restart_policy, record.exit_code):
        return Action.FINISHED
    # A seen exit was counted by the previous agent, which was waiting out the back-off.
    return Action.START if record.seen_exit else Action.RESTART


def restart_count(action: Action, reported: int, reported_running: bool) -> int:
    """The container's restartCount after the decision, from what the pod status said.

    The API server's count is the truth carried over from the previous agent, which counted
    every exit it saw; a process found dead that nobody saw end adds one. Starting a
    container the status still calls running is a restart too: its process ended unseen or
    unreported (the agent died before reporting it, or its records were wiped).
    """
    if action is Action.RESTART:
        return reported + 1
    if action is Action.START and reported_running:
        return reported + 1
    return reported


def choose_pod_ip(
    *,
    adopted_ip: str | None,
    reported_ip: str | None,
    in_use: Set[str],
    candidates: Sequence[str],
) -> str | None:
    """The pod's loopback IP: the one an adopted process listens on, else the one the pod
    status already shows (its processes' environment names it) if still free, else the
    first free one; None when none is free."""
    if adopted_ip:
        return adopted_ip
    if reported_ip and reported_ip in candidates and reported_ip not in in_use:
        return reported_ip
    return next((ip for ip in candidates if ip not in in_use), None)
