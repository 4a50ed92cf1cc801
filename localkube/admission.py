"""Pods and claims from the API server: the watch loops (list, then watch, listing again
when the watch expires), binding unscheduled pods to this node (there is no scheduler),
admitting the pods bound here (adopting their live processes, localkube/adoption.py),
noticing deletions, and a tiny provisioner that gives every pending claim a directory.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client, watch

from localkube import procfs
from localkube.adoption import PodFacts, choose_pod_ip, restart_count
from localkube.pods import Container, Orphan, PodRun
from localkube.probes import probe_spec
from localkube.recovery import clean_pod_dirs, find_orphans, recover_container
from localkube.termination import PodTermination

log = logging.getLogger("localkube.node")

LOCAL_PROVISIONER = "localkube.local/dir"


class PodAdmission(PodTermination):
    """Follows pods and claims on the API server and admits the pods bound here."""

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
