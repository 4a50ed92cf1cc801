"""The process node: a Node that runs pods' containers as local processes.

It does a kubelet's job for this machine, against the real API server: registers a Node with
a heartbeat Lease, binds unscheduled pods to itself (there is no scheduler), starts each
container's command with the pod's environment resolved (downward API, Secret and ConfigMap
references), a loopback pod IP of its own (127.0.0.N), a token for the pod's own
ServiceAccount (so RBAC applies to the process exactly as in a cluster), volumes mapped to
per-pod and per-claim directories (Secret volumes written as files before any container of the
pod starts; localkube/volumes.py); it probes readiness over HTTP, restarts containers by the
pod's restartPolicy with back-off, and on deletion sends SIGTERM, waits the grace period,
sends SIGKILL and removes the pod object as a kubelet would.

Containers run the project's own Python (its virtualenv's bin directory leads PATH); images
are not pulled. Production runs on a real cluster; this exists so that the real bot runtime
runs against the real API server in tests and in `make run`.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch

from localkube.cluster import write_kubeconfig
from localkube.processes import _die_with_parent
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
NODE_LEASE_NAMESPACE = "kube-node-lease"
HEARTBEAT_SECONDS = 10
TOKEN_SECONDS = 3600
BACKOFF_START = 1.0
BACKOFF_MAX = 30.0
MOUNT_RETRY_SECONDS = 1.0
POD_IP_RANGE = range(2, 255)
LOCAL_PROVISIONER = "localkube.local/dir"


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Container:
    name: str
    spec: dict[str, Any]
    proc: subprocess.Popen[bytes] | None = None
    restart_count: int = 0
    started_at: str | None = None
    last_exit: dict[str, Any] | None = None
    next_start: float = 0.0
    backoff: float = BACKOFF_START
    ready: bool = False
    next_probe: float = 0.0
    probe_failures: int = 0
    probe_successes: int = 0
    finished: bool = False
    term_sent: bool = False


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
        return sum(1 for c in self.containers if c.proc is not None and c.proc.poll() is None)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


class ProcessNode:
    """Run with `start()` (background threads) and `stop()` (stop every pod's processes)."""

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
    ) -> None:
        self.kubeconfig = kubeconfig
        self.data_dir = data_dir
        self.server = server
        self.ca_cert = ca_cert
        self.name = name
        self.die_with_parent = die_with_parent
        self.python_bin = python_bin or Path(sys.executable).parent
        self.api = config.new_client_from_config(config_file=str(kubeconfig))
        self.core = client.CoreV1Api(self.api)
        self.coord = client.CoordinationV1Api(self.api)
        self.pods: dict[str, PodRun] = {}
        self.lock = threading.RLock()
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self.threads: list[threading.Thread] = []
        self.ips_in_use: set[str] = set()
        self.node_uid: str | None = None
        # None: every namespace. Tests share one API server with tests that play the
        # kubelet themselves, so they hand the node only their own namespaces.
        self.namespaces = namespaces

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> ProcessNode:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._register()
        for target in (self._heartbeat_loop, self._watch_pods, self._watch_claims, self._sync_loop):
            thread = threading.Thread(target=target, name=f"node-{target.__name__}", daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """Stop every container gracefully (a node shutting down), leaving pod objects."""
        self.stopping.set()
        self.wake.set()
        with self.lock:
            runs = list(self.pods.values())
        for run in runs:
            for c in run.containers:
                self._signal(c, signal.SIGTERM)
        deadline = time.monotonic() + min(timeout, max((r.grace for r in runs), default=0))
        for run in runs:
            for c in run.containers:
                self._wait_or_kill(c, deadline)
        for run in runs:  # a node going away leaves its pods not ready, as a kubelet would
            with contextlib.suppress(Exception):
                self.core.patch_namespaced_pod_status(
                    run.name,
                    run.namespace,
                    {
                        "status": {
                            "conditions": [
                                {
                                    "type": "Ready",
                                    "status": "False",
                                    "reason": "NodeShutdown",
                                    "lastTransitionTime": _now(),
                                }
                            ]
                        }
                    },
                )
        for thread in self.threads:
            thread.join(timeout=5)
        self.api.close()

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

    # -- node object and heartbeat -----------------------------------------------------

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
        self._report_node_status()
        with contextlib.suppress(client.ApiException):
            self.core.create_namespace({"metadata": {"name": NODE_LEASE_NAMESPACE}})

    def _report_node_status(self) -> None:
        now = _now()
        status = {
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "localkube process node is ready",
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": now,
                }
            ],
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": self.name},
            ],
            "capacity": {"cpu": str(os.cpu_count() or 1), "memory": "16Gi", "pods": "250"},
            "allocatable": {"cpu": str(os.cpu_count() or 1), "memory": "16Gi", "pods": "250"},
            "nodeInfo": {
                "kubeletVersion": "localkube",
                "operatingSystem": "linux",
                "architecture": "amd64",
                "containerRuntimeVersion": "process://",
                "kernelVersion": os.uname().release,
                "osImage": "localkube",
                "kubeProxyVersion": "",
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
            },
        }
        self.core.patch_node_status(self.name, {"status": status})

    def _heartbeat_loop(self) -> None:
        while not self.stopping.wait(HEARTBEAT_SECONDS):
            try:
                self._renew_lease()
                self._report_node_status()
            except Exception as err:  # the API server may be restarting; try next beat
                log.warning("node heartbeat failed: %s", err)

    def _renew_lease(self) -> None:
        now = dt.datetime.now(dt.UTC)
        body = {
            "metadata": {"name": self.name, "namespace": NODE_LEASE_NAMESPACE},
            "spec": {
                "holderIdentity": self.name,
                "leaseDurationSeconds": 40,
                "renewTime": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            },
        }
        try:
            self.coord.patch_namespaced_lease(self.name, NODE_LEASE_NAMESPACE, body)
        except client.ApiException as err:
            if err.status != 404:
                raise
            self.coord.create_namespaced_lease(NODE_LEASE_NAMESPACE, body)

    # -- watches ---------------------------------------------------------------------

    def _watch_pods(self) -> None:
        self._watch(self.core.list_pod_for_all_namespaces, self._on_pod)

    def _watch_claims(self) -> None:
        self._watch(self.core.list_persistent_volume_claim_for_all_namespaces, self._on_claim)

    def _watch(self, lister: Any, handler: Any) -> None:
        resource_version = None
        while not self.stopping.is_set():
            try:
                if resource_version is None:
                    listed = lister()
                    resource_version = listed.metadata.resource_version
                    for item in listed.items:
                        handler("ADDED", item)
                stream = watch.Watch()
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
        with self.lock:
            run = self.pods.get(key)
            if run and run.uid != pod.metadata.uid:
                self._kill_all(run)
                self._forget(run)
                run = None
            if run is None and pod.metadata.deletion_timestamp is None:
                run = self._admit(pod)
            if run and pod.metadata.deletion_timestamp and run.deleting_since is None:
                run.deleting_since = time.monotonic()
                run.grace = float(pod.metadata.deletion_grace_period_seconds or 0)
            elif run is None and pod.metadata.deletion_timestamp:
                self._remove_pod_object(pod.metadata.namespace, pod.metadata.name, pod.metadata.uid)
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
        ip = self._allocate_ip()
        root = self.data_dir / "pods" / pod.metadata.uid
        root.mkdir(parents=True, exist_ok=True)
        spec = self.api.sanitize_for_serialization(pod.spec)
        run = PodRun(
            labels=dict(pod.metadata.labels or {}),
            namespace=pod.metadata.namespace,
            name=pod.metadata.name,
            uid=pod.metadata.uid,
            ip=ip,
            root=root,
            spec=spec,
            grace=float(spec.get("terminationGracePeriodSeconds", 30)),
        )
        run.containers = [Container(name=c["name"], spec=c) for c in spec.get("containers", [])]
        # A pod that already ran here before the node restarted keeps its restart counts.
        for status in (pod.status.container_statuses or []) if pod.status else []:
            for c in run.containers:
                if c.name == status.name:
                    c.restart_count = int(status.restart_count or 0) + (
                        1 if status.state and status.state.running else 0
                    )
        self.pods[run.key] = run
        log.info("admitted pod %s (ip %s)", run.key, ip)
        return run

    def _allocate_ip(self) -> str:
        for n in POD_IP_RANGE:
            ip = f"127.0.0.{n}"
            if ip not in self.ips_in_use:
                self.ips_in_use.add(ip)
                return ip
        raise RuntimeError("no free loopback pod IP")

    def _forget(self, run: PodRun) -> None:
        with self.lock:
            if self.pods.get(run.key) is run:
                del self.pods[run.key]
            self.ips_in_use.discard(run.ip)
            # Under the lock: a mount in progress either finishes first or sees the pod gone.
            remove_secret_volumes(run.root / "volumes", run.spec)
        shutil.rmtree(run.root / "secrets", ignore_errors=True)

    # -- the sync loop ---------------------------------------------------------------

    def _sync_loop(self) -> None:
        while not self.stopping.is_set():
            with self.lock:
                terminating = any(r.deleting_since is not None for r in self.pods.values())
            # A process exit raises no event: poll briskly while a pod is shutting down, so
            # its object goes (and its successor may start) as soon as the process is gone.
            self.wake.wait(0.02 if terminating else 0.25)
            self.wake.clear()
            with self.lock:
                runs = list(self.pods.values())
            for run in runs:
                if self.stopping.is_set():
                    return
                try:
                    self._sync(run)
                except Exception as err:
                    log.warning("syncing pod %s failed: %s", run.key, err)

    def _sync(self, run: PodRun) -> None:
        if run.deleting_since is not None:
            self._terminate(run)
            return
        now = time.monotonic()
        if not run.mounted and now >= run.next_mount:
            self._mount_secrets(run, now)
        policy = run.spec.get("restartPolicy", "Always")
        for c in run.containers:
            if c.proc is not None and c.proc.poll() is not None:
                self._on_exit(run, c, policy)
            if c.proc is None and not c.finished and now >= c.next_start and run.mounted:
                self._start_container(run, c)
            if c.proc is not None:
                self._probe(run, c, now)
        self._report(run)

    def _on_exit(self, run: PodRun, c: Container, policy: str) -> None:
        assert c.proc is not None
        code = c.proc.returncode
        exit_code = 128 - code if code < 0 else code
        c.last_exit = {
            "terminated": {
                "exitCode": exit_code,
                "reason": "Completed" if exit_code == 0 else "Error",
                "startedAt": c.started_at,
                "finishedAt": _now(),
            }
        }
        c.proc = None
        c.ready = False
        log.info("container %s/%s exited with %s", run.key, c.name, exit_code)
        if policy == "Never" or (policy == "OnFailure" and exit_code == 0):
            c.finished = True
            return
        c.restart_count += 1
        c.next_start = time.monotonic() + c.backoff
        c.backoff = min(c.backoff * 2, BACKOFF_MAX)

    def _start_container(self, run: PodRun, c: Container) -> None:
        env = self._environment(run, c)
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
        if command[0] in ("python", "python3"):
            command[0] = str(self.python_bin / "python")
        log_path = run.root / "logs" / f"{c.name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as out:
            c.proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=run.root,
                start_new_session=True,
                preexec_fn=_die_with_parent if self.die_with_parent else None,
            )
        c.started_at = _now()
        c.next_probe = time.monotonic() + float(
            (c.spec.get("readinessProbe") or {}).get("initialDelaySeconds", 0)
        )
        c.probe_successes = c.probe_failures = 0
        log.info("started container %s/%s pid %s", run.key, c.name, c.proc.pid)

    def _probe(self, run: PodRun, c: Container, now: float) -> None:
        probe = c.spec.get("readinessProbe")
        if not probe:
            c.ready = True
            return
        if now < c.next_probe:
            return
        c.next_probe = now + float(probe.get("periodSeconds", 10))
        get = probe.get("httpGet") or {}
        port = get.get("port")
        if isinstance(port, str):
            port = next(
                (p["containerPort"] for p in c.spec.get("ports") or [] if p.get("name") == port),
                None,
            )
        url = f"http://{run.ip}:{port}{get.get('path', '/')}"
        try:
            with urllib.request.urlopen(
                url, timeout=float(probe.get("timeoutSeconds", 1))
            ) as response:
                ok = 200 <= response.status < 400
        except (urllib.error.URLError, OSError, ValueError):
            ok = False
        if ok:
            c.probe_successes += 1
            c.probe_failures = 0
            if c.probe_successes >= int(probe.get("successThreshold", 1)):
                c.ready = True
        else:
            c.probe_failures += 1
            c.probe_successes = 0
            if c.probe_failures >= int(probe.get("failureThreshold", 3)):
                c.ready = False

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
        alive = [c for c in run.containers if c.proc is not None and c.proc.poll() is None]
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
        if c.proc is not None and c.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(c.proc.pid, sig)

    @staticmethod
    def _wait_or_kill(c: Container, deadline: float) -> None:
        if c.proc is None:
            return
        try:
            c.proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(c.proc.pid, signal.SIGKILL)
            c.proc.wait(timeout=5)

    # -- status ------------------------------------------------------------------------

    def _report(self, run: PodRun) -> None:
        statuses = []
        for c in run.containers:
            running = c.proc is not None and c.proc.poll() is None
            if running:
                state: dict[str, Any] = {"running": {"startedAt": c.started_at}}
            elif c.finished and c.last_exit:
                state = c.last_exit
            else:
                waiting = {"reason": "CrashLoopBackOff" if c.restart_count else "ContainerCreating"}
                if run.mount_error:
                    waiting["message"] = run.mount_error
                state = {"waiting": waiting}
            entry: dict[str, Any] = {
                "name": c.name,
                "ready": running and c.ready,
                "started": running,
                "restartCount": c.restart_count,
                "image": c.spec.get("image", ""),
                "imageID": "",
                "containerID": f"process://{c.proc.pid}" if running and c.proc else "",
                "state": state,
            }
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
        status: dict[str, Any] = {
            "phase": phase,
            "podIP": run.ip,
            "podIPs": [{"ip": run.ip}],
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Initialized", "status": "True"},
                {"type": "ContainersReady", "status": ready},
                {"type": "Ready", "status": ready},
            ],
            "containerStatuses": statuses,
        }
        if status == run.reported:
            return
        stamped = copy.deepcopy(status)
        now = _now()
        run.start_time = run.start_time or now
        stamped["startTime"] = run.start_time
        for cond in stamped["conditions"]:
            cond["lastTransitionTime"] = now
        try:
            self.core.patch_namespaced_pod_status(run.name, run.namespace, {"status": stamped})
            run.reported = status
        except client.ApiException as err:
            if err.status == 404:
                self._kill_all(run)
                self._forget(run)
            else:
                log.warning("status of %s failed: %s", run.key, err.reason)
