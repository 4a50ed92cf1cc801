"""A node agent taking over from one that died: applying localkube/adoption.py's decisions to
the container records in its data dir, and ending the orphans they reveal.

Per container of an admitted pod, `recover_container` adopts the live process or reports how
the dead one ended; after the first pod list, `find_orphans` returns the live processes of
pods that are gone (to terminate with their grace period, `step_orphan`) and the pods whose
leftovers can simply be removed (`clean_pod_dirs`).
"""

from __future__ import annotations

import logging
import shutil
import signal
from collections.abc import Set
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localkube import containers
from localkube.adoption import Action, PodFacts, RecordFacts, decide
from localkube.containers import ContainerProcess
from localkube.pods import Orphan, terminated_state
from localkube.records import ContainerRecord, RecordStore, exit_code

log = logging.getLogger("localkube.node")


@dataclass
class Recovered:
    action: Action
    proc: ContainerProcess | None = None  # set when adopted
    last_exit: dict[str, Any] | None = None  # how the previous process ended, if it did
    finished: bool = False


def recover_container(
    store: RecordStore,
    pod: PodFacts,
    pod_key: str,
    container: str,
    record: ContainerRecord | None,
) -> Recovered:
    """What becomes of one container of an admitted pod, given what the data dir holds."""
    slot = store.slot(pod.uid, container)
    proc = containers.adopt(record, slot) if record is not None else None
    seen = slot.read_exit() if proc is None else None
    facts: RecordFacts | None = None
    if proc is not None:
        running = proc.poll() is None
        known = not running and not proc.lost and proc.returncode is not None
        code = exit_code(proc.returncode) if known and proc.returncode is not None else None
        facts = RecordFacts(pod.uid, running, code)
    elif seen is not None:
        facts = RecordFacts(pod.uid, False, exit_code(seen.returncode), seen_exit=True)
    action = decide(pod, facts)
    if action is Action.ADOPT:
        assert proc is not None
        log.info("adopted container %s/%s pid %s", pod_key, container, proc.pid)
        return Recovered(action, proc=proc)
    if action in (Action.RESTART, Action.FINISHED) or (action is Action.START and seen):
        if proc is not None:
            slot.retire()  # counted now: a later agent must not count it again
            log.info("container %s/%s ended while no agent ran", pod_key, container)
        return Recovered(
            action, last_exit=terminated_state(proc, seen), finished=action is Action.FINISHED
        )
    return Recovered(action)


def find_orphans(
    store: RecordStore, admitted: Set[str]
) -> tuple[list[ContainerProcess], list[str]]:
    """Live processes whose pod uid no admitted pod has, and the uids with nothing left
    running (their files can go)."""
    orphans: list[ContainerProcess] = []
    empty: list[str] = []
    for uid in store.pod_uids():
        if uid in admitted:
            continue
        running = False
        for record in store.for_pod(uid).values():
            proc = containers.adopt(record, store.slot(uid, record.container))
            if decide(None, RecordFacts(uid, running=proc.poll() is None)) is Action.TERMINATE:
                log.info(
                    "terminating orphan %s/%s pid %s: its pod is gone",
                    record.pod_key,
                    record.container,
                    record.process.pid,
                )
                orphans.append(proc)
                running = True
        if not running:
            empty.append(uid)
    return orphans, empty


def step_orphan(orphan: Orphan, now: float) -> bool:
    """Advance an orphan's termination (SIGTERM, its pod's grace period, SIGKILL); True
    once its process is gone."""
    proc = orphan.proc
    if proc.poll() is not None:
        log.info("orphan %s/%s ended", orphan.pod_key, proc.record.container)
        return True
    if orphan.deadline is None:
        proc.signal_group(signal.SIGTERM)
        orphan.deadline = now + proc.record.grace_seconds
    elif now >= orphan.deadline:
        proc.signal_group(signal.SIGKILL)
    return False


def clean_pod_dirs(store: RecordStore, pods_dir: Path, uid: str) -> None:
    """What a pod that is gone leaves behind, except its logs: records, credentials (its
    token's kubeconfig, its Secret volumes) and its other volumes."""
    store.remove_pod(uid)
    root = pods_dir / uid
    shutil.rmtree(root / "secrets", ignore_errors=True)
    shutil.rmtree(root / "volumes", ignore_errors=True)
