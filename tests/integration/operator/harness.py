"""Run the operator as a real separate process and play the kubelet for its pods.

No node runs in these tests: a pod stays unscheduled (deleting it removes it at once, as the
API server does for pods without a node), and `Kubelet` marks new pods Ready the way a
kubelet would report them, so the restart protocol runs end to end on the real API server.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubernetes import client, watch

from localkube.cluster import free_port
from tests import kube
from tradingbot_api.constants import API_GROUP, LABEL_BOT, PLURAL, VERSION


class OperatorProcess:
    """`python -m tradingbot_operator` for one namespace, killable at will."""

    def __init__(
        self,
        kubeconfig: Path,
        namespace: str,
        log_path: Path,
        extra_env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
    ) -> None:
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.log_path = log_path
        self.extra_env = extra_env or {}
        self.args = args
        self.metrics_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.pod_name = ""  # POD_NAME, the prefix of its leader Lease identity

    def start(self, **env: str) -> OperatorProcess:
        self.pod_name = env.get("POD_NAME", "")
        environ = {**os.environ, "KUBECONFIG": str(self.kubeconfig), **self.extra_env, **env}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tradingbot_operator",
                    "--namespace",
                    self.namespace,
                    "--metrics-port",
                    str(self.metrics_port),
                    *self.args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environ,
            )
        kube.wait_for(self._serving, timeout=30, message="operator metrics endpoint")
        return self

    def _serving(self) -> bool:
        if self.proc and self.proc.poll() is not None:
            raise AssertionError(f"operator exited with {self.proc.returncode}:\n{self.logs()}")
        try:
            self.metrics()
        except OSError:
            return False
        return True

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=2) as response:
            return str(response.read().decode())

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels`."""
        total = 0.0
        for line in self.metrics().splitlines():
            if not line.startswith(name) or line.startswith("#"):
                continue
            head, _, value = line.rpartition(" ")
            metric, _, rest = head.partition("{")
            if metric != name:
                continue
            if all(f'{k}="{v}"' in rest for k, v in labels.items()):
                total += float(value)
        return total

    def kill(self) -> None:
        """SIGKILL: no cleanup, no goodbye, as a node loss would."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def exited(self) -> int | None:
        return self.proc.poll() if self.proc else None

    def wait_exit(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]


class Kubelet(threading.Thread):
    """Marks every new pod in a namespace Ready (after `delay`), unless told to fail it."""

    def __init__(
        self, api_client: client.ApiClient, namespace: str, delay: float = 0.1, poll: float = 0.05
    ) -> None:
        super().__init__(daemon=True)
        self.poll = poll
        self.core = client.CoreV1Api(api_client)
        self.namespace = namespace
        self.delay = delay
        self.enabled = True
        self.crash = False  # report containers as crash-looping instead
        self._halt = threading.Event()

    def run(self) -> None:
        seen: set[str] = set()
        while not self._halt.is_set():
            try:
                pods = self.core.list_namespaced_pod(self.namespace).items
            except client.ApiException:
                time.sleep(0.2)
                continue
            for pod in pods:
                uid = pod.metadata.uid
                if uid in seen or pod.metadata.deletion_timestamp or not self.enabled:
                    continue
                seen.add(uid)
                threading.Timer(self.delay, self._report, args=(pod.metadata.name,)).start()
            self._halt.wait(self.poll)

    def _report(self, name: str) -> None:
        ready = "False" if self.crash else "True"
        status = {
            "phase": "Running",
            "conditions": [
                {"type": "Ready", "status": ready},
                {"type": "ContainersReady", "status": ready},
            ],
            "containerStatuses": [
                {
                    "name": "bot",
                    "ready": not self.crash,
                    "restartCount": 5 if self.crash else 0,
                    "image": "bot",
                    "imageID": "",
                    "started": True,
                    "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}},
                }
            ],
        }
        with contextlib.suppress(client.ApiException):
            self.core.patch_namespaced_pod_status(name, self.namespace, {"status": status})

    def stop(self) -> None:
        self._halt.set()


class WatchKubelet(Kubelet):
    """The same stand-in, told of new pods by a watch instead of a LIST per poll: for fleets
    of thousands, where listing every pod twice a second would cost the API server more than
    the operator under test. Status reports go out from a few threads, as a kubelet's would."""

    REPORTERS = 4

    def __init__(self, api_client: client.ApiClient, namespace: str, delay: float = 0.0) -> None:
        super().__init__(api_client, namespace, delay=delay)
        self.reported = 0
        self.lists = 0
        self.watches = 0
        self._watch = watch.Watch()

    def run(self) -> None:
        seen: set[str] = set()
        with ThreadPoolExecutor(self.REPORTERS) as reporters:

            def consider(pod: Any) -> None:
                if pod.metadata.uid in seen or pod.metadata.deletion_timestamp:
                    return
                if not self.enabled:
                    return
                seen.add(pod.metadata.uid)
                self.reported += 1
                reporters.submit(self._report_after, pod.metadata.name)

            rv = ""
            while not self._halt.is_set():
                try:
                    if not rv:  # (again) after a watch that cannot resume
                        self.lists += 1
                        listed = self.core.list_namespaced_pod(self.namespace)
                        for pod in listed.items:
                            consider(pod)
                        rv = listed.metadata.resource_version
                    self.watches += 1
                    for event in self._watch.stream(
                        self.core.list_namespaced_pod,
                        self.namespace,
                        resource_version=rv,
                        timeout_seconds=5,
                    ):
                        pod = event["object"]
                        rv = pod.metadata.resource_version
                        if event["type"] in ("ADDED", "MODIFIED"):
                            consider(pod)
                        if self._halt.is_set():
                            return
                except client.ApiException as err:
                    rv = "" if err.status == 410 else rv
                    time.sleep(0.2)
                except Exception:  # a dropped connection: list again
                    rv = ""
                    time.sleep(0.2)

    def _report_after(self, name: str) -> None:
        if self.delay:
            time.sleep(self.delay)
        self._report(name)

    def stop(self) -> None:
        super().stop()
        self._watch.stop()


class PodCensus(threading.Thread):
    """Watches a namespace's bot pods for the whole test; remembers the most seen at once."""

    def __init__(self, api_client: client.ApiClient, namespace: str) -> None:
        super().__init__(daemon=True)
        self.core = client.CoreV1Api(api_client)
        self.namespace = namespace
        self.max_per_bot: dict[str, int] = {}
        self.created: dict[str, list[str]] = {}
        self._stop = threading.Event()
        self._watch = watch.Watch()
        self.ready = threading.Event()

    def run(self) -> None:
        live: dict[str, set[str]] = {}
        rv = self.core.list_namespaced_pod(self.namespace).metadata.resource_version
        self.ready.set()
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                for event in self._watch.stream(
                    self.core.list_namespaced_pod,
                    self.namespace,
                    resource_version=rv,
                    label_selector=LABEL_BOT,
                    timeout_seconds=5,
                ):
                    pod = event["object"]
                    rv = pod.metadata.resource_version
                    bot = pod.metadata.labels[LABEL_BOT]
                    names = live.setdefault(bot, set())
                    if event["type"] == "ADDED":
                        names.add(pod.metadata.name)
                        self.created.setdefault(bot, []).append(pod.metadata.name)
                    elif event["type"] == "DELETED":
                        names.discard(pod.metadata.name)
                    self.max_per_bot[bot] = max(self.max_per_bot.get(bot, 0), len(names))
                    if self._stop.is_set():
                        return

    def stop(self) -> None:
        self._stop.set()
        self._watch.stop()


def bot_manifest(name: str, spec: dict[str, Any], **annotations: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if annotations:
        meta["annotations"] = annotations
    return {
        "apiVersion": f"{API_GROUP}/{VERSION}",
        "kind": "TradingBot",
        "metadata": meta,
        "spec": spec,
    }


def create_as(api: client.ApiClient, namespace: str, name: str, spec: dict, **ann: str) -> dict:
    return dict(
        client.CustomObjectsApi(api).create_namespaced_custom_object(
            API_GROUP, VERSION, namespace, PLURAL, bot_manifest(name, spec, **ann)
        )
    )


def patch_as(
    api: client.ApiClient, namespace: str, name: str, body: dict, manager: str = "kubectl-edit"
) -> dict:
    return dict(
        client.CustomObjectsApi(api).patch_namespaced_custom_object(
            API_GROUP, VERSION, namespace, PLURAL, name, body, field_manager=manager
        )
    )


class Bots:
    """TradingBot reads and writes for one namespace."""

    def __init__(self, api_client: client.ApiClient, namespace: str) -> None:
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.namespace = namespace

    def create(self, name: str, spec: dict[str, Any], **annotations: str) -> dict[str, Any]:
        return dict(
            self.custom.create_namespaced_custom_object(
                API_GROUP, VERSION, self.namespace, PLURAL, bot_manifest(name, spec, **annotations)
            )
        )

    def get(self, name: str) -> dict[str, Any]:
        return dict(
            self.custom.get_namespaced_custom_object(
                API_GROUP, VERSION, self.namespace, PLURAL, name
            )
        )

    def patch(self, name: str, patch: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            API_GROUP, VERSION, self.namespace, PLURAL, name, patch
        )

    def annotate(self, name: str, **annotations: str | None) -> None:
        self.patch(name, {"metadata": {"annotations": annotations}})

    def delete(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(
            API_GROUP, VERSION, self.namespace, PLURAL, name
        )

    def status(self, name: str) -> dict[str, Any]:
        return dict(self.get(name).get("status") or {})

    def pods(self, name: str) -> list[client.V1Pod]:
        return list(
            self.core.list_namespaced_pod(
                self.namespace, label_selector=f"{LABEL_BOT}={name}"
            ).items
        )

    def events(self, name: str) -> list[client.CoreV1Event]:
        return [
            e
            for e in self.core.list_namespaced_event(self.namespace).items
            if e.involved_object.name == name and e.involved_object.kind == "TradingBot"
        ]

    def reasons(self, name: str) -> list[str]:
        # Event timestamps have one-second precision; etcd revisions order creations exactly.
        events = sorted(self.events(name), key=lambda e: int(e.metadata.resource_version))
        return [e.reason for e in events]

    def wait_reason(self, name: str, reason: str, timeout: float = 15) -> list[str]:
        """Events are posted right after the status write they belong to: wait for them."""
        return list(
            kube.wait_for(
                lambda: (r := self.reasons(name)) and reason in r and r,
                timeout=timeout,
                message=f"{name} Event {reason}",
            )
        )

    def wait_phase(self, name: str, phase: str, timeout: float = 30) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            status = self.status(name)
            return status if status.get("phase") == phase else None

        return dict(kube.wait_for(reached, timeout=timeout, message=f"{name} phase {phase}"))

    def wait_running_with(
        self, name: str, config_hash: str | None = None, timeout: float = 30
    ) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            status = self.status(name)
            if status.get("phase") != "Running" or status.get("pendingAction"):
                return None
            if config_hash and status.get("configHash") != config_hash:
                return None
            if status.get("configHash") != status.get("desiredConfigHash"):
                return None
            return status

        return dict(kube.wait_for(reached, timeout=timeout, message=f"{name} Running"))


@contextlib.contextmanager
def running(*threads: threading.Thread) -> Iterator[None]:
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        for thread in threads:
            thread.stop()  # type: ignore[attr-defined]
