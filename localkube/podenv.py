"""What a pod's containers see: their environment (downward API, Secret and ConfigMap
references, a kubeconfig with a token for the pod's own ServiceAccount), Secret volumes
written as files before any container starts, and volumes mapped to per-pod and per-claim
directories (localkube/volumes.py).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kubernetes import client

from localkube.cluster import write_kubeconfig
from localkube.nodestate import NodeState
from localkube.pods import Container, PodRun
from localkube.volumes import VolumeError, decode_data, project, secret_volumes, write_files

log = logging.getLogger("localkube.node")

TOKEN_SECONDS = 3600
MOUNT_RETRY_SECONDS = 1.0


class PodEnvironment(NodeState):
    """Resolves what a container is started with, and mounts a pod's Secret volumes."""

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
