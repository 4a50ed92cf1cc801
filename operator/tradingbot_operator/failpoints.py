"""Named crash points for fault-injection tests, off unless an env var names one.

`TRADINGBOT_OPERATOR_FAILPOINT=after-pod-deleted` makes the operator SIGKILL itself right
after that step, so tests can prove every step of a restart is resumable at exactly the
worst moment instead of hoping a timed kill lands there.
"""

from __future__ import annotations

import os
import signal

FAILPOINT_ENV = "TRADINGBOT_OPERATOR_FAILPOINT"
POINTS = (
    "after-pending-recorded",
    "after-restart-recorded",
    "after-pod-deleted",
    "after-pod-created",
)
# Between the status write that carries audit events and their delivery to the audit log.
AUDIT_POINTS = ("before-audit-delivery",)


def failpoint(name: str) -> None:
    if os.environ.get(FAILPOINT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
