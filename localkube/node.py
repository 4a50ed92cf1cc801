"""The process node: a Node that runs pods' containers as local processes.

It does a kubelet's job for this machine, against the real API server: registers a Node with
a heartbeat Lease (localkube/heartbeat.py), binds unscheduled pods to itself (there is no
scheduler), starts each container's command with the pod's environment resolved (downward
API, Secret and ConfigMap references), a loopback pod IP of its own (127.0.0.N), a token for
the pod's own ServiceAccount (so RBAC applies to the process exactly as in a cluster), volumes
mapped to per-pod and per-claim directories (Secret volumes written as files before any
container of the pod starts; localkube/volumes.py); it probes readiness over HTTP off the sync
loop (localkube/probes.py), restarts containers by the pod's restartPolicy with back-off, and
on deletion sends SIGTERM, waits the grace period, sends SIGKILL and removes the pod object as
a kubelet would.

Process lifetime. Killing a kubelet does not kill its containers, and neither does killing
this node agent: every container process is the child of its own small supervisor, the shim
(localkube/shim.py), started in a session of its own and not bound to the agent. What bounds a
container's life instead is its node's *anchors*: processes whose death means the cluster or
the session that started it is over. A node run by the CLI (`python -m localkube node`,
`up --node`) is anchored to the cluster's etcd and kube-apiserver, so `LocalCluster.stop` and
`python -m localkube down` end every pod process, adopted ones included, within its grace
period (and both die with a test run that started them, through PDEATHSIG). A
node running inside another program (tests' fixture, `make run`, benchmarks;
`die_with_parent=True`) is anchored to that program's process: its end, however abrupt, ends
the pods. When an anchor dies the shim sends SIGTERM to the container's process group, waits
the pod's grace period and sends SIGKILL. The container in turn carries PR_SET_PDEATHSIG =
SIGKILL towards its shim, so no container runs unsupervised, and when a container exits the
rest of its process group is killed, as when a container's init dies.

Adoption. The shim writes a record per container (localkube/records.py: pod uid, container,
pod IP, pid and /proc start time of the container and of the shim) before the command runs.
A node agent starting on a data dir where another one died reads them: a container whose
recorded process still runs (same pid *and* start time) is adopted (monitored, probed,
reported, terminated with its grace period on deletion) and nothing is started; a dead one is
restarted per restartPolicy and counted; a process whose pod is gone or has another uid is
terminated (localkube/adoption.py decides). Readiness only ever comes from a live process
whose probe passes, and a frozen process's probes time out, so a status never shows Ready for
a container without a live, answering process.

Containers run the project's own Python (its virtualenv's bin directory leads PATH); images
are not pulled. Production runs on a real cluster; this exists so that the real bot runtime
runs against the real API server in tests and in `make run`.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch

from localkube import containers, procfs
from localkube.adoption import PodFacts, choose_pod_ip, restart_count
from localkube.cluster import write_kubeconfig
from localkube.containers import ContainerProcess, ContainerStartError
from localkube.heartbeat import NODE_LEASE_DURATION_SECONDS, NODE_STATUS_SECONDS, Heartbeat
from localkube.podnet import Block, PodNetwork, block_of
from localkube.pods import (
    Container,
    Orphan,
    PodRun,
    now_stamp,
    pod_status,
    stamped,
    stopped_status,
    terminated_state,
)
from localkube.probes import Prober, Readiness, after_probe, probe_spec
from localkube.procfs import ProcessIdentity
from localkube.records import RecordStore, ShimRequest
from localkube.recovery import clean_pod_dirs, find_orphans, recover_container, step_orphan
from localkube.volumes import (
    VolumeError,
    decode_data,
    project,
    remove_secret_volumes,
    secret_volumes,
    write_files,
)

log = logging.getLogger("localkube.node")

NODE_NAME = "localkube-node"
TOKEN_SECONDS = 3600
BACKOFF_MAX = 30.0
MOUNT_RETRY_SECONDS = 1.0
LOCAL_PROVISIONER = "localkube.local/dir"
LOCK_FILE = "node.lock"
RECORDS_DIR = "containers"
_now = now_stamp


class NodeBusyError(RuntimeError):
    """Another node agent runs on this data dir: two would start every container twice."""


class ProcessNode:
    """Run with `start()` (background threads) and `stop()` (stop every pod's processes).

    `anchors`: processes whose death ends every container of this node (see the module
    docstring); by default this process when `die_with_parent`, else none.
    `lease_duration_seconds`: the node Lease's duration; it is renewed every quarter of it.
    """

    def __init__(
        self,
        kubeconfig: Path,
        data_dir: Path,
        *,
        server: str,
        ca_cert: Path,
        name: str = NODE_NAME,
        die_with_parent: bool = True,
        python_bin: Path | None = None,
        namespaces: set[str] | None = None,
        anchors: Sequence[ProcessIdentity] | None = None,
        lease_duration_seconds: int = NODE_LEASE_DURATION_SECONDS,
        status_seconds: float = NODE_STATUS_SECONDS,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.data_dir = data_dir
        self.server = server
        self.ca_cert = ca_cert
        self.name = name
        self.die_with_parent = die_with_parent
        self.python_bin = python_bin or Path(sys.executable).parent
        if anchors is None:
            me = procfs.identify(os.getpid())
            anchors = [me] if die_with_parent and me is not None else []
        self.anchors = list(anchors)
        self.api = config.new_client_from_config(config_file=str(kubeconfig))
        self.core = client.CoreV1Api(self.api)
        self.coord = client.CoordinationV1Api(self.api)
        self.heartbeat = Heartbeat(
            self.core,
            self.coord,
            name,
            lease_duration_seconds=lease_duration_seconds,
            status_seconds=status_seconds,
        )
        self.records = RecordStore(data_dir / RECORDS_DIR)
        self.wake = threading.Event()
        self.prober = Prober(on_done=self.wake.set)
        self.pods: dict[str, PodRun] = {}
        self.orphans: list[Orphan] = []
        self.lock = threading.RLock()
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.sync_thread: threading.Thread | None = None
        self.watches: list[watch.Watch] = []
        self.ips_in_use: set[str] = set()
        self.network: PodNetwork | None = None
        self.node_uid: str | None = None
        self.recovered = threading.Event()
        self._lock_file: Any = None
        # None: every namespace. Tests share one API server with tests that play the
        # kubelet themselves, so they hand the node only their own namespaces.
        self.namespaces = namespaces

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> ProcessNode:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._take_data_dir()
        try:
            preferred = self._reserve_recorded_ips()
            self.network = PodNetwork.claim(str(self.data_dir.resolve()), preferred)
            self._register()
            self.heartbeat.start(self.node_uid)
        except BaseException:
            if self.network is not None:
                self.network.release()
            self._release_data_dir()
            raise
        self.sync_thread = threading.Thread(target=self._sync_loop, name="node-sync", daemon=True)
        for target in (self._watch_pods, self._watch_claims):
            thread = threading.Thread(target=target, name=f"node-{target.__name__}", daemon=True)
            thread.start()
            self.threads.append(thread)
        self.sync_thread.start()
        self.threads.append(self.sync_thread)
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """Stop every container gracefully (a node shutting down), leaving pod objects."""
        self.stopping.set()
        self.wake.set()
        if self.sync_thread is not None:
            self.sync_thread.join(timeout=20)  # no container may start once stopping begins
        with self.lock:
            runs = list(self.pods.values())
            orphans = list(self.orphans)
        procs = [c.proc for run in runs for c in run.containers if c.proc is not None]
        procs += [o.proc for o in orphans]
        for proc in procs:
            proc.signal_group(signal.SIGTERM)
        graces = [r.grace for r in runs] + [o.proc.record.grace_seconds for o in orphans]
        deadline = time.monotonic() + min(timeout, max(graces, default=0))
        for proc in procs:
            self._wait_or_kill(proc, deadline)
        for run in runs:  # a node going away leaves its pods not ready, as a kubelet would
            with contextlib.suppress(Exception):
                self._report_stopped(run)
        self.heartbeat.stop()
        with self.lock:
            streams = list(self.watches)
        for stream in streams:  # unblocks a watch waiting for its next event
            stream.stop()
        for thread in self.threads:
            thread.join(timeout=5)
        self.prober.close()
        self.api.close()
        if self.network is not None:
            self.network.release()
        self._release_data_dir()

    def live_processes(self, label: str) -> dict[str, int]:
        """Running processes per value of a pod label (e.g. bots by their bot label)."""
        with self.lock:
            runs = list(self.pods.values())
        counts: dict[str, int] = {}
        for run in runs:
            value = run.labels.get(label)
            if value is not None:
                counts[value] = counts.get(value, 0) + run.live_processes()
        return counts

    def _take_data_dir(self) -> None:
        lock = open(self.data_dir / LOCK_FILE, "a+")  # noqa: SIM115 (held until stop)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise NodeBusyError(f"another node agent runs on {self.data_dir}") from None
        self._lock_file = lock

    def _release_data_dir(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def _reserve_recorded_ips(self) -> Block | None:
        """Addresses live processes of a previous agent listen on stay theirs; returns the
        address block they are in, to claim it again."""
        records, problems = self.records.load()
        for problem in problems:
            log.warning("ignoring container record %s", problem)
        block: Block | None = None
        for record in records:
            if procfs.is_running(record.process):
                self.ips_in_use.add(record.pod_ip)
                block = block or block_of(record.pod_ip)
        return block

    # -- node object -------------------------------------------------------------------

    def _register(self) -> None:
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "labels": {
                    "kubernetes.io/hostname": self.name,
                    "kubernetes.io/os": "linux",
                    "node.kubernetes.io/instance-type": "localkube-process-node",
                },
            },
        }
        try:
            created = self.core.create_node(node)
        except client.ApiException as err:
            if err.status != 409:
                raise
            created = self.core.read_node(self.name)
        self.node_uid = created.metadata.uid

    # -- watches ---------------------------------------------------------------------

    def _watch_pods(self) -> None:
        self._watch(self.core.list_pod_for_all_namespaces, self._on_pod, self._after_pod_list)

    def _watch_claims(self) -> None:
        self._watch(self.core.list_persistent_volume_claim_for_all_namespaces, self._on_claim)

    def _watch(
        self,
        lister: Any,
        handler: Callable[[str, Any], None],
        after_list: Callable[[], None] | None = None,
    ) -> None:
        resource_version = None
        while not self.stopping.is_set():
            try:
                if resource_version is None:
                    listed = lister()
                    resource_version = listed.metadata.resource_version
                    for item in listed.items:
                        handler("ADDED", item)
                    if after_list is not None:
                        after_list()
                stream = watch.Watch()
                with self.lock:
                    self.watches.append(stream)
                try:
                    if self.stopping.is_set():
                        return
                    for event in stream.stream(
                        lister,
                        resource_version=resource_version,
                        timeout_seconds=30,
                        allow_watch_bookmarks=True,
                    ):
                        if self.stopping.is_set():
                            stream.stop()
                            return
                        obj = event["object"]
                        if event["type"] == "ERROR":  # e.g. 410 Gone: list again
                            resource_version = None
                            break
                        if isinstance(obj, dict):
                            resource_version = obj.get("metadata", {}).get("resourceVersion")
                            continue
                        resource_version = obj.metadata.resource_version
                        if event["type"] != "BOOKMARK":
                            handler(event["type"], obj)
                finally:
                    with self.lock:
                        self.watches.remove(stream)
            except client.ApiException as err:
                if err.status == 410:
                    resource_version = None  # expired: list again
                else:
                    log.warning("watch failed (%s); retrying", err.reason)
                    self.stopping.wait(1)
            except Exception as err:
                if self.stopping.is_set():
                    return  # the API server going away at shutdown is expected
                log.warning("watch failed (%s); retrying", err)
                self.stopping.wait(1)

    def _on_pod(self, kind: str, pod: client.V1Pod) -> None:
        if self.namespaces is not None and pod.metadata.namespace not in self.namespaces:
            return
        if kind == "DELETED":
            with self.lock:
                run = self.pods.get(f"{pod.metadata.namespace}/{pod.metadata.name}")
            if run and run.uid == pod.metadata.uid:
                self._kill_all(run)
                self._forget(run)
            return
        if not pod.spec.node_name:
            if (
                pod.spec.scheduler_name or "default-scheduler"
            ) == "default-scheduler" and not pod.metadata.deletion_timestamp:
                self._bind(pod)
            return
        if pod.spec.node_name != self.name:
            return
        key = f"{pod.metadata.namespace}/{pod.metadata.name}"
        deleting = pod.metadata.deletion_timestamp is not None
        with self.lock:
            run = self.pods.get(key)
            if run and run.uid != pod.metadata.uid:
                self._kill_all(run)
                self._forget(run)
                run = None
            # A pod deleted while no agent ran may still have a live process here: adopted,
            # it gets its grace period like any other.
            if run is None and (not deleting or self._runs_here(pod.metadata.uid)):
                run = self._admit(pod)
            if run and deleting and run.deleting_since is None:
                run.deleting_since = time.monotonic()
                run.grace = float(pod.metadata.deletion_grace_period_seconds or 0)
            elif run is None and deleting:
                self.records.remove_pod(pod.metadata.uid)
                self._remove_pod_object(pod.metadata.namespace, pod.metadata.name, pod.metadata.uid)
        self.wake.set()

    def _runs_here(self, pod_uid: str) -> bool:
        return any(procfs.is_running(r.process) for r in self.records.for_pod(pod_uid).values())

    def _after_pod_list(self) -> None:
        """After the first list every pod still bound here has been admitted (and its live
        processes adopted), so a record no admitted pod claims is an orphan's: its pod was
        deleted, replaced or moved while no agent ran."""
        if self.recovered.is_set():
            return
        with self.lock:
            orphans, empty = find_orphans(self.records, {run.uid for run in self.pods.values()})
            for proc in orphans:
                self.orphans.append(Orphan(proc))
                self.ips_in_use.add(proc.record.pod_ip)
            for uid in empty:
                clean_pod_dirs(self.records, self.data_dir / "pods", uid)
        self.recovered.set()
        self.wake.set()

    def _on_claim(self, kind: str, claim: client.V1PersistentVolumeClaim) -> None:
        """A tiny provisioner: every pending claim gets a directory-backed volume."""
        if self.namespaces is not None and claim.metadata.namespace not in self.namespaces:
            return
        if kind == "DELETED" or claim.spec.volume_name or claim.metadata.deletion_timestamp:
            return
        ns, name = claim.metadata.namespace, claim.metadata.name
        pv_name = f"local-{claim.metadata.uid}"
        path = self.data_dir / "volumes" / pv_name
        path.mkdir(parents=True, exist_ok=True)
        size = ((claim.spec.resources.requests or {}).get("storage")) or "1Gi"
        volume = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {
                "name": pv_name,
                "annotations": {"pv.kubernetes.io/provisioned-by": LOCAL_PROVISIONER},
            },
            "spec": {
                "capacity": {"storage": size},
                "accessModes": claim.spec.access_modes or ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": claim.spec.storage_class_name or "",
                "hostPath": {"path": str(path), "type": "DirectoryOrCreate"},
                "claimRef": {"namespace": ns, "name": name, "uid": claim.metadata.uid},
            },
        }
        try:
            with contextlib.suppress(client.ApiException):
                self.core.create_persistent_volume(volume)
            self.core.patch_namespaced_persistent_volume_claim(
                name, ns, {"spec": {"volumeName": pv_name}}
            )
            self.core.patch_namespaced_persistent_volume_claim_status(
                name,
                ns,
                {
                    "status": {
                        "phase": "Bound",
                        "capacity": {"storage": size},
                        "accessModes": claim.spec.access_modes,
                    }
                },
            )
            self.core.patch_persistent_volume_status(pv_name, {"status": {"phase": "Bound"}})
        except client.ApiException as err:
            log.warning("binding claim %s/%s failed: %s", ns, name, err.reason)

    def _bind(self, pod: client.V1Pod) -> None:
        binding = client.V1Binding(
            metadata=client.V1ObjectMeta(name=pod.metadata.name, uid=pod.metadata.uid),
            target=client.V1ObjectReference(kind="Node", name=self.name, api_version="v1"),
        )
        try:
            self.core.create_namespaced_binding(
                pod.metadata.namespace, binding, _preload_content=False
            )
        except client.ApiException as err:
            if err.status not in (404, 409):
                log.warning("binding %s failed: %s", pod.metadata.name, err.reason)

    # -- admitting a pod -------------------------------------------------------------

    def _admit(self, pod: client.V1Pod) -> PodRun | None:
        uid = pod.metadata.uid
        spec = self.api.sanitize_for_serialization(pod.spec)
        facts = PodFacts(
            uid=uid,
            restart_policy=spec.get("restartPolicy", "Always"),
            deleting=pod.metadata.deletion_timestamp is not None,
        )
        # Container names are fixed in a pod's spec: every record of this uid is one of them.
        records = self.records.for_pod(uid)
        status = pod.status or client.V1PodStatus()
        ip = choose_pod_ip(
            adopted_ip=next(
                (r.pod_ip for r in records.values() if procfs.is_running(r.process)), None
            ),
            reported_ip=status.pod_ip,
            in_use=self.ips_in_use,
            candidates=self.network.ips if self.network else (),
        )
        if ip is None:
            raise RuntimeError("no free loopback pod IP")
        self.ips_in_use.add(ip)
        root = self.data_dir / "pods" / uid
        root.mkdir(parents=True, exist_ok=True)
        run = PodRun(
            labels=dict(pod.metadata.labels or {}),
            namespace=pod.metadata.namespace,
            name=pod.metadata.name,
            uid=uid,
            ip=ip,
            root=root,
            spec=spec,
            grace=float(spec.get("terminationGracePeriodSeconds", 30)),
            # A pod this node ran before it restarted keeps its start time.
            start_time=status.start_time.strftime("%Y-%m-%dT%H:%M:%SZ")
            if status.start_time
            else None,
        )
        run.containers = [Container(name=c["name"], spec=c) for c in spec.get("containers", [])]
        reported = {s.name: s for s in status.container_statuses or []}
        now = time.monotonic()
        for c in run.containers:
            found = recover_container(
                self.records, facts, run.key, c.name, records.pop(c.name, None)
            )
            c.proc = found.proc
            c.started_at = found.proc.record.started_at if found.proc else None
            c.last_exit, c.finished = found.last_exit, found.finished
            previous = reported.get(c.name)
            c.restart_count = restart_count(
                found.action,
                int(previous.restart_count or 0) if previous else 0,
                bool(previous and previous.state and previous.state.running),
            )
            c.probe = probe_spec(c.spec.get("readinessProbe"), run.ip, c.spec.get("ports") or [])
            c.next_probe = now
        self.pods[run.key] = run
        log.info("admitted pod %s (ip %s)", run.key, ip)
        return run

    def _forget(self, run: PodRun) -> None:
        with self.lock:
            if self.pods.get(run.key) is run:
                del self.pods[run.key]
            self.ips_in_use.discard(run.ip)
            # Under the lock: a mount in progress either finishes first or sees the pod gone.
            remove_secret_volumes(run.root / "volumes", run.spec)
            self.records.remove_pod(run.uid)
        shutil.rmtree(run.root / "secrets", ignore_errors=True)

    # -- the sync loop ---------------------------------------------------------------

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

    # -- environment, secrets, volumes ---------------------------------------------

    def _environment(self, run: PodRun, c: Container) -> dict[str, str]:
        env: dict[str, str] = {
            "PATH": f"{self.python_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(run.root),
            "LANG": "C.UTF-8",
            "HOSTNAME": run.name,
            "KUBERNETES_SERVICE_HOST": "127.0.0.1",
        }
        mounts = self._volume_dirs(run)
        for mount in c.spec.get("volumeMounts") or []:
            if mount.get("mountPath") == "/tmp" and mount["name"] in mounts:
                env["TMPDIR"] = str(mounts[mount["name"]])
        for source in c.spec.get("envFrom") or []:
            prefix = source.get("prefix", "")
            if "configMapRef" in source:
                data = self._configmap(run.namespace, source["configMapRef"]["name"])
            else:
                data = self._secret(run.namespace, source["secretRef"]["name"])
            env.update({prefix + k: v for k, v in (data or {}).items()})
        for item in c.spec.get("env") or []:
            value = self._env_value(run, item)
            if value is not None:
                env[item["name"]] = self._map_paths(value, c, mounts)
        if run.spec.get("automountServiceAccountToken", True) is not False:
            env["KUBECONFIG"] = str(self._pod_kubeconfig(run))
        return env

    def _env_value(self, run: PodRun, item: Mapping[str, Any]) -> str | None:
        if "value" in item:
            return str(item["value"])
        source = item.get("valueFrom") or {}
        if "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            return {
                "metadata.name": run.name,
                "metadata.namespace": run.namespace,
                "metadata.uid": run.uid,
                "status.podIP": run.ip,
                "status.hostIP": "127.0.0.1",
                "spec.nodeName": self.name,
                "spec.serviceAccountName": run.spec.get("serviceAccountName", "default"),
            }.get(path, "")
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            return (self._secret(run.namespace, ref["name"]) or {}).get(ref["key"])
        if "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            return (self._configmap(run.namespace, ref["name"]) or {}).get(ref["key"])
        return None

    def _secret(self, namespace: str, name: str) -> dict[str, str] | None:
        import base64

        try:
            secret = self.core.read_namespaced_secret(name, namespace)
        except client.ApiException:
            return None
        return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}

    def _mount_secrets(self, run: PodRun, now: float) -> None:
        """Write the pod's Secret volumes; while one cannot be, its containers wait and the
        sync loop tries again."""
        projected: dict[str, dict[str, tuple[bytes, int]]] = {}
        current = ""
        try:
            for volume in secret_volumes(run.spec):
                current = volume.name
                data = self._secret_data(run.namespace, volume.secret_name)
                projected[volume.name] = project(volume, data)
            with self.lock:
                if self.pods.get(run.key) is not run:
                    return  # forgotten meanwhile: no file may outlive the pod
                for name, files in projected.items():
                    current = name
                    write_files(run.root / "volumes" / name, files)
        except (VolumeError, OSError) as err:
            message = f'MountVolume.SetUp failed for volume "{current}": {err}'
            if message != run.mount_error:
                log.warning("pod %s waits: %s", run.key, message)
            run.mount_error = message
            run.next_mount = now + MOUNT_RETRY_SECONDS
            return
        run.mounted, run.mount_error = True, ""

    def _secret_data(self, namespace: str, name: str) -> dict[str, bytes] | None:
        """The Secret's data as bytes, None if it does not exist (yet)."""
        try:
            secret = self.core.read_namespaced_secret(name, namespace)
        except client.ApiException as err:
            if err.status == 404:
                return None
            raise VolumeError(f'reading secret "{name}": {err.status} {err.reason}') from err
        except Exception as err:  # the API server restarting: the mount is retried
            raise VolumeError(f'reading secret "{name}": {err}') from err
        return decode_data(secret.data)

    def _configmap(self, namespace: str, name: str) -> dict[str, str] | None:
        try:
            return dict(self.core.read_namespaced_config_map(name, namespace).data or {})
        except client.ApiException:
            return None

    def _volume_dirs(self, run: PodRun) -> dict[str, Path]:
        dirs: dict[str, Path] = {}
        for volume in run.spec.get("volumes") or []:
            name = volume["name"]
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                path = self._claim_dir(run.namespace, claim)
            else:
                path = run.root / "volumes" / name
            path.mkdir(parents=True, exist_ok=True)
            dirs[name] = path
        return dirs

    def _claim_dir(self, namespace: str, claim: str) -> Path:
        try:
            bound = self.core.read_namespaced_persistent_volume_claim(claim, namespace)
            if bound.spec.volume_name:
                pv = self.core.read_persistent_volume(bound.spec.volume_name)
                if pv.spec.host_path:
                    return Path(pv.spec.host_path.path)
        except client.ApiException:
            pass
        return self.data_dir / "claims" / namespace / claim

    @staticmethod
    def _map_paths(value: str, c: Container, mounts: Mapping[str, Path]) -> str:
        """Env values that point into a volume mount point into the volume's directory."""
        for mount in c.spec.get("volumeMounts") or []:
            target = mount.get("mountPath", "")
            host = mounts.get(mount.get("name", ""))
            if host and target and (value == target or value.startswith(target + "/")):
                return str(host) + value[len(target) :]
        return value

    def _pod_kubeconfig(self, run: PodRun) -> Path:
        """A kubeconfig with a token bound to this pod, for its own ServiceAccount."""
        sa = run.spec.get("serviceAccountName") or "default"
        request = client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(
                audiences=[],
                expiration_seconds=TOKEN_SECONDS,
                bound_object_ref=client.V1BoundObjectReference(
                    kind="Pod", api_version="v1", name=run.name, uid=run.uid
                ),
            )
        )
        token = self.core.create_namespaced_service_account_token(sa, run.namespace, request)
        path = run.root / "secrets" / "kubeconfig"
        return write_kubeconfig(
            path,
            self.server,
            self.ca_cert,
            f"system:serviceaccount:{run.namespace}:{sa}",
            token=token.status.token,
            namespace=run.namespace,
        )

    # -- termination -----------------------------------------------------------------

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

    # -- status ------------------------------------------------------------------------

    def _report(self, run: PodRun) -> None:
        status = pod_status(run)
        if status == run.reported:
            return
        run.start_time = run.start_time or _now()
        body = {"status": stamped(status, run.start_time, _now())}
        try:
            self.core.patch_namespaced_pod_status(run.name, run.namespace, body)
            run.reported = status
        except client.ApiException as err:
            if err.status == 404:
                self._kill_all(run)
                self._forget(run)
            else:
                log.warning("status of %s failed: %s", run.key, err.reason)

    def _report_stopped(self, run: PodRun) -> None:
        body = {"status": stopped_status(run, _now())}
        self.core.patch_namespaced_pod_status(run.name, run.namespace, body)
