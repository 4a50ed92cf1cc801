"""Container processes as the process node sees them: started through a shim, or adopted.

`ContainerProcess` offers Popen's polling interface (`pid`, `poll`, `wait`, `send_signal`,
`kill`, `returncode`) for a process that may not be a child of this node agent: a restarted
agent adopts the processes its predecessor started. Liveness is always checked against the
recorded identity (pid + start time + boot), so a reused pid is never mistaken for the
container and never signalled; the exit status comes from the shim's exit record.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from localkube import procfs
from localkube.processes import tail
from localkube.procfs import ProcessIdentity
from localkube.records import ContainerRecord, ExitRecord, ShimRequest, Slot

# The shim writes the exit record right after reaping the container; on a loaded machine that
# can take a while. A dead container whose shim still lives but wrote no record is reported
# running this long before its status is declared unknown; a dead shim decides at once.
EXIT_RECORD_WAIT_SECONDS = 10.0
SHIM_START_TIMEOUT_SECONDS = 15.0
PACKAGE_PARENT = Path(__file__).resolve().parent.parent


class ContainerStartError(RuntimeError):
    """The shim could not start the container (its log says why)."""


class ContainerProcess:
    """One container process, known by its record."""

    def __init__(
        self,
        record: ContainerRecord,
        slot: Slot,
        *,
        shim: subprocess.Popen[bytes] | None = None,
        adopted: bool = False,
    ) -> None:
        self.record = record
        self.slot = slot
        self.shim = shim
        self.adopted = adopted
        self.returncode: int | None = None
        self.exit: ExitRecord | None = None
        # True when the process is gone but nobody saw how it ended (its shim was killed).
        self.lost = False
        self._gone_since: float | None = None

    @property
    def pid(self) -> int:
        return self.record.process.pid

    def running(self) -> bool:
        return procfs.is_running(self.record.process)

    def _shim_running(self) -> bool:
        if self.shim is not None:
            return self.shim.poll() is None
        return procfs.is_running(self.record.shim)

    def poll(self) -> int | None:
        """None while the process runs (or its shim has yet to record how it ended), else
        its return code (negative: killed by signal). Never blocks."""
        if self.returncode is not None:
            return self.returncode
        if self.shim is not None:
            self.shim.poll()  # reap the shim once it is done; never blocks
        if self.running():
            return None
        shim_alive = self._shim_running()  # read before the record: a shim writes, then exits
        record = self.slot.read_exit()
        if record is not None and record.process == self.record.process:
            self.exit, self.returncode = record, record.returncode
            return self.returncode
        now = time.monotonic()
        if self._gone_since is None:
            self._gone_since = now
        if shim_alive and now - self._gone_since < EXIT_RECORD_WAIT_SECONDS:
            return None
        # Its shim died first: the kernel killed the container (PR_SET_PDEATHSIG).
        self.returncode, self.lost = -signal.SIGKILL, True
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(self.record.container, timeout or 0.0)
            time.sleep(0.02)
        if self.shim is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.shim.wait(timeout=1)
        return code

    def send_signal(self, sig: int) -> None:
        if self.running():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def signal_group(self, sig: int) -> None:
        """Signal the container's process group (it leads one: the shim made it so)."""
        if self.running():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, sig)


def _read_line(stream: int, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        readable, _, _ = select.select([stream], [], [], left)
        if not readable:
            break
        chunk = os.read(stream, 4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\n", 1)[0]


def spawn(request: ShimRequest, shim_log: Path) -> ContainerProcess:
    """Start the container through a new shim; return once its record is on disk and the
    command has been executed (or has failed to be: then the process polls as exited)."""
    shim_log.parent.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(PACKAGE_PARENT),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    with open(shim_log, "ab") as log:
        # Its own session, no PR_SET_PDEATHSIG: the shim outlives this node agent on purpose
        # (the anchors in the request bound its life instead).
        shim = subprocess.Popen(
            [sys.executable, "-S", "-m", "localkube.shim"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            env=env,
            cwd=request.cwd,
            start_new_session=True,
        )
    assert shim.stdin is not None and shim.stdout is not None
    try:
        with contextlib.suppress(BrokenPipeError):
            shim.stdin.write(request.encode().encode())
        with contextlib.suppress(BrokenPipeError):
            shim.stdin.close()
        line = _read_line(shim.stdout.fileno(), SHIM_START_TIMEOUT_SECONDS)
    finally:
        shim.stdout.close()
    try:
        reply = json.loads(line) if line else {}
    except ValueError:
        reply = {}
    slot = Slot(Path(request.records_dir), request.pod_uid, request.container)
    if "pid" not in reply:
        if shim.poll() is None:
            shim.kill()
        shim.wait(timeout=5)
        reason = reply.get("error") or f"the shim did not start:\n{tail(shim_log, 10)}"
        raise ContainerStartError(str(reason))
    record = slot.read_record()
    if record is None or record.process != ProcessIdentity.from_json(reply):
        shim.kill()
        shim.wait(timeout=5)
        raise ContainerStartError("the shim's record does not match its reply")
    return ContainerProcess(record, slot, shim=shim)


def adopt(record: ContainerRecord, slot: Slot) -> ContainerProcess:
    """Take over a process another node agent started (it may have ended meanwhile)."""
    return ContainerProcess(record, slot, adopted=True)
