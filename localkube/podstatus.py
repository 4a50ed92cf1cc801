"""Reporting a pod's status to the API server, only when it changed; a pod whose object is
gone is ended and forgotten.
"""

from __future__ import annotations

import logging

from kubernetes import client

from localkube.pods import PodRun, now_stamp, pod_status, stamped, stopped_status
from localkube.termination import PodTermination

log = logging.getLogger("localkube.node")

_now = now_stamp


class PodStatusReporting(PodTermination):
    """Patches pod status from what the node observes."""

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
