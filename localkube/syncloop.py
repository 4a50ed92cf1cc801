"""The sync loop: each pass ends orphans, terminates deleting pods, mounts Secret volumes,
starts containers and restarts exited ones by the pod's restartPolicy with back-off, collects
readiness probes (run off the loop, localkube/probes.py) and reports status.
"""

from __future__ import annotations

import logging
import time

from localkube import containers
from localkube.containers import ContainerStartError
from localkube.podenv import PodEnvironment
from localkube.pods import Container, Orphan, PodRun, terminated_state
from localkube.podstatus import PodStatusReporting
from localkube.probes import Readiness, after_probe
from localkube.records import ShimRequest
from localkube.recovery import clean_pod_dirs, step_orphan

log = logging.getLogger("localkube.node")

BACKOFF_MAX = 30.0


class PodSync(PodEnvironment, PodStatusReporting):
    """Drives every admitted pod and every orphan towards what its state asks for."""

    def _sync_loop(self) -> None:
        while not self.stopping.is_set():
            with self.lock:
                terminating = bool(self.orphans) or any(
                    r.deleting_since is not None for r in self.pods.values()
                )
                probes = [
                    c.next_probe
                    for r in self.pods.values()
                    for c in r.containers
                    if c.proc is not None and c.probe is not None and c.in_flight is None
                ]
            # A process exit raises no event: poll briskly while a pod is shutting down, so
            # its object goes (and its successor may start) as soon as the process is gone;
            # otherwise wake for the next probe that is due, so probes keep their period.
            timeout = 0.02 if terminating else 0.25
            if probes:
                timeout = min(timeout, max(min(probes) - time.monotonic(), 0.01))
            self.wake.wait(timeout)
            self.wake.clear()
            try:
                self._sync_orphans(time.monotonic())
            except Exception as err:
                log.warning("ending orphans failed: %s", err)
            with self.lock:
                runs = list(self.pods.values())
            for run in runs:
                if self.stopping.is_set():
                    return
                try:
                    self._sync(run)
                except Exception as err:
                    log.warning("syncing pod %s failed: %s", run.key, err)

    def _sync_orphans(self, now: float) -> None:
        with self.lock:
            orphans = list(self.orphans)
        for orphan in orphans:
            if not step_orphan(orphan, now):
                continue
            record = orphan.proc.record
            with self.lock:
                self.orphans.remove(orphan)
                orphan.proc.slot.remove()
                if not any(r.ip == record.pod_ip for r in self.pods.values()) and not any(
                    o.proc.record.pod_ip == record.pod_ip for o in self.orphans
                ):
                    self.ips_in_use.discard(record.pod_ip)
                if not self.records.for_pod(record.pod_uid):
                    clean_pod_dirs(self.records, self.data_dir / "pods", record.pod_uid)

    def _sync(self, run: PodRun) -> None:
        if run.deleting_since is not None:
            self._terminate(run)
            return
        now = time.monotonic()
        if not run.mounted and now >= run.next_mount:
            self._mount_secrets(run, now)
        policy = run.spec.get("restartPolicy", "Always")
        with self.lock:
            # A namesake's orphan (same pod name, older uid) must be gone before this pod's
            # containers start: two bots of one name never run at once.
            namesake_running = any(o.pod_key == run.key for o in self.orphans)
        for c in run.containers:
            if c.proc is not None and c.proc.poll() is not None:
                self._on_exit(run, c, policy)
            if (
                c.proc is None
                and not c.finished
                and now >= c.next_start
                and run.mounted
                and not namesake_running
                and self.recovered.is_set()
                and not self.stopping.is_set()
            ):
                self._start_container(run, c)
            if c.proc is not None:
                self._probe(c, now)
            else:
                c.in_flight, c.readiness = None, Readiness()
        self._report(run)

    def _on_exit(self, run: PodRun, c: Container, policy: str) -> None:
        proc = c.proc
        assert proc is not None and proc.returncode is not None
        c.last_exit = terminated_state(proc)
        c.last_exit["terminated"]["startedAt"] = c.started_at
        code = c.last_exit["terminated"]["exitCode"]
        proc.slot.retire()
        c.proc = None
        c.readiness, c.in_flight = Readiness(), None
        log.info("container %s/%s exited with %s", run.key, c.name, code)
        if policy == "Never" or (policy == "OnFailure" and code == 0):
            c.finished = True
            return
        c.restart_count += 1
        c.next_start = time.monotonic() + c.backoff
        c.backoff = min(c.backoff * 2, BACKOFF_MAX)

    def _start_container(self, run: PodRun, c: Container) -> None:
        command = list(c.spec.get("command") or []) + list(c.spec.get("args") or [])
        if not command:
            c.finished = True
            c.last_exit = {
                "waiting": {
                    "reason": "CreateContainerError",
                    "message": "a process node needs an explicit command",
                }
            }
            return
        env = self._environment(run, c)
        if command[0] in ("python", "python3"):
            command[0] = str(self.python_bin / "python")
        logs = run.root / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        request = ShimRequest(
            argv=command,
            env=env,
            cwd=str(run.root),
            log_path=str(logs / f"{c.name}.log"),
            records_dir=str(self.records.root),
            pod_uid=run.uid,
            namespace=run.namespace,
            pod=run.name,
            container=c.name,
            pod_ip=run.ip,
            grace_seconds=run.grace,
            anchors=self.anchors,
        )
        try:
            proc = containers.spawn(request, logs / f"{c.name}.shim.log")
        except (ContainerStartError, OSError) as err:
            log.warning("starting container %s/%s failed: %s", run.key, c.name, err)
            c.last_exit = {"waiting": {"reason": "RunContainerError", "message": str(err)[:1000]}}
            c.next_start = time.monotonic() + c.backoff
            c.backoff = min(c.backoff * 2, BACKOFF_MAX)
            return
        with self.lock:
            if self.pods.get(run.key) is not run:
                # Deleted while it started: nobody else would ever end this process.
                self.orphans.append(Orphan(proc))
                return
            c.proc = proc
        c.started_at = proc.record.started_at
        c.readiness, c.in_flight = Readiness(), None
        c.next_probe = time.monotonic() + (c.probe.initial_delay if c.probe else 0.0)
        log.info("started container %s/%s pid %s", run.key, c.name, proc.pid)

    def _probe(self, c: Container, now: float) -> None:
        """Readiness from the probe's verdicts; a probe never blocks this loop."""
        if c.probe is None:
            c.readiness = Readiness(ready=True)
            return
        if c.in_flight is not None:
            verdict = self.prober.collect(c.in_flight, now)
            if verdict is None:
                return
            c.in_flight = None
            c.readiness = after_probe(c.readiness, verdict, c.probe)
        if now >= c.next_probe:
            c.next_probe = now + c.probe.period
            c.in_flight = self.prober.submit(c.probe, now)
