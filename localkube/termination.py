"""Ending a pod's processes: SIGTERM, the grace period, SIGKILL, and then removing the pod
object, as a kubelet does on deletion.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import time

from kubernetes import client

from localkube.containers import ContainerProcess
from localkube.nodestate import NodeState
from localkube.pods import Container, PodRun

log = logging.getLogger("localkube.node")


class PodTermination(NodeState):
    """Ends pods being deleted, and every process of a pod whose object is gone."""

    def _terminate(self, run: PodRun) -> None:
        assert run.deleting_since is not None
        alive = [c for c in run.containers if c.running()]
        if alive and time.monotonic() - run.deleting_since < run.grace:
            for c in alive:
                if not c.term_sent:
                    self._signal(c, signal.SIGTERM)
                    c.term_sent = True
            return
        for c in alive:
            self._signal(c, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                assert c.proc is not None
                c.proc.wait(timeout=5)
        self._remove_pod_object(run.namespace, run.name, run.uid)
        self._forget(run)

    def _remove_pod_object(self, namespace: str, name: str, uid: str) -> None:
        body = client.V1DeleteOptions(
            grace_period_seconds=0, preconditions=client.V1Preconditions(uid=uid)
        )
        try:
            self.core.delete_namespaced_pod(name, namespace, body=body)
        except client.ApiException as err:
            if err.status not in (404, 409):
                log.warning("removing pod %s/%s failed: %s", namespace, name, err.reason)

    def _kill_all(self, run: PodRun) -> None:
        for c in run.containers:
            self._signal(c, signal.SIGKILL)

    @staticmethod
    def _signal(c: Container, sig: int) -> None:
        if c.proc is not None:
            c.proc.signal_group(sig)  # checks the process is still the recorded one

    @staticmethod
    def _wait_or_kill(proc: ContainerProcess, deadline: float) -> None:
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            proc.signal_group(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
