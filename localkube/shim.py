"""The per-container supervisor ("shim"): `python -m localkube.shim`, parent of one container.

The process node starts one shim per container run and hands it a `ShimRequest` on stdin.
The shim forks the container process, writes the container's record (localkube/records.py)
while the child still waits, and only then lets the child exec the command: no container
process ever runs without a record. Then it supervises:

* the container exits -> any process left in its process group is killed (as when a
  container's init dies), the exit status is written next to the record, the shim exits;
* an *anchor* dies (a process whose lifetime bounds the container's: the cluster's etcd and
  API server, or the process that owns an in-process node), or the shim gets SIGTERM/SIGINT/
  SIGHUP -> SIGTERM to the container's process group, the pod's grace period, SIGKILL.

The shim is not bound to the node agent: the node dying leaves shim and container running for
a restarted node to adopt. The container is bound to the shim (PR_SET_PDEATHSIG = SIGKILL),
so a killed shim never leaves an unsupervised container behind.

Standard library only (plus localkube's stdlib-only record modules), so it starts quickly.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import json
import os
import select
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from localkube import procfs
from localkube.procfs import ProcessIdentity
from localkube.records import (
    ContainerRecord,
    ExitRecord,
    RecordError,
    ShimRequest,
    Slot,
    container_fields,
)

PR_SET_PDEATHSIG = 1
# Without pidfds (or as a safety net) every anchor is looked at this often.
POLL_SECONDS = 0.5
# After SIGKILL a process is gone in milliseconds unless stuck in the kernel; do not hang on.
KILL_WAIT_SECONDS = 5.0
EXEC_FAILED = 127
BAD_REQUEST = 2
ANCHOR_GONE = 3


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _say(message: str) -> None:
    print(f"{_now()} localkube-shim[{os.getpid()}] {message}", file=sys.stderr, flush=True)


class Anchor:
    """A process whose death ends the container: a pidfd when the kernel has them (wakes the
    shim at once), /proc identity checks in any case."""

    def __init__(self, identity: ProcessIdentity) -> None:
        self.identity = identity
        self.fd: int | None = None
        with contextlib.suppress(OSError, AttributeError):
            self.fd = os.pidfd_open(identity.pid)
        # Opened after a pid reuse, the fd would watch the wrong process: check identity after.
        if self.fd is not None and not procfs.is_running(identity):
            os.close(self.fd)
            self.fd = None

    def gone(self) -> bool:
        return not procfs.is_running(self.identity)


def _set_pdeathsig(sig: int) -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, sig)


def _child(request: ShimRequest, shim_pid: int, go_read: int, err_write: int) -> NoReturn:
    """In the forked child: wait for the record, then become the container."""
    try:
        os.setsid()  # its own process group: the node and the shim signal it as a unit
        _set_pdeathsig(signal.SIGKILL)
        if os.getppid() != shim_pid:  # the shim died before the prctl took effect
            os._exit(EXEC_FAILED)
        os.read(go_read, 1)  # EOF once the record is on disk (or the shim died)
        if os.getppid() != shim_pid:
            os._exit(EXEC_FAILED)
        os.close(go_read)
        # Python ignores these; a container starts with the default dispositions.
        for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        null = os.open(os.devnull, os.O_RDONLY)
        log = os.open(request.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.closerange(3, err_write)
        os.closerange(err_write + 1, 1 << 16)
        os.chdir(request.cwd)
        os.execvpe(request.argv[0], request.argv, request.env)
    except BaseException as err:
        with contextlib.suppress(BaseException):
            os.write(err_write, f"{type(err).__name__}: {err}".encode()[:4000])
    os._exit(EXEC_FAILED)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


def _reap_if_exited(pid: int) -> int | None:
    """The container's return code once it exited (Popen convention), else None. Leftover
    members of its process group are killed first, while the zombie leader still pins the
    group id so it cannot name someone else's group."""
    try:
        exited = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return -signal.SIGKILL  # reaped elsewhere: nothing more to learn
    if exited is None:
        return None
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def supervise(pid: int, anchors: Sequence[Anchor], grace: float, wakeup: int) -> int:
    """Wait for the container; end it if an anchor dies or the shim is told to stop."""
    poller = select.poll()
    with contextlib.suppress(OSError, AttributeError):
        poller.register(os.pidfd_open(pid), select.POLLIN)
    for anchor in anchors:
        if anchor.fd is not None:
            poller.register(anchor.fd, select.POLLIN)
    poller.register(wakeup, select.POLLIN)
    terminating_since: float | None = None
    killed_at: float | None = None
    while True:
        code = _reap_if_exited(pid)
        if code is not None:
            return code
        now = time.monotonic()
        if terminating_since is None and (_stop_requested or any(a.gone() for a in anchors)):
            why = "told to stop" if _stop_requested else "an anchor is gone"
            _say(f"ending container pid {pid}: {why}")
            _signal_group(pid, signal.SIGTERM)
            terminating_since = now
            for anchor in anchors:  # a dead anchor's pidfd stays readable: stop polling it
                if anchor.fd is not None:
                    poller.unregister(anchor.fd)
        if terminating_since is not None and killed_at is None and now - terminating_since >= grace:
            _signal_group(pid, signal.SIGKILL)
            killed_at = now
        if killed_at is not None and now - killed_at >= KILL_WAIT_SECONDS:
            _say(f"container pid {pid} survives SIGKILL; leaving it")
            return -signal.SIGKILL
        timeout = POLL_SECONDS
        if terminating_since is not None and killed_at is None:
            timeout = min(timeout, max(grace - (now - terminating_since), 0.0))
        for fd, _ in poller.poll(timeout * 1000):
            if fd == wakeup:
                with contextlib.suppress(OSError):
                    os.read(wakeup, 512)


_stop_requested = False


def _on_stop(signum: int, frame: object) -> None:
    global _stop_requested
    _stop_requested = True


def _report(line: dict[str, object]) -> None:
    """Tell the node what happened; the node may be gone, which is fine."""
    with contextlib.suppress(OSError):
        os.write(1, (json.dumps(line) + "\n").encode())
    with contextlib.suppress(OSError):
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)  # later output must not hit a pipe nobody reads
        os.close(null)


def main() -> int:
    try:
        request = ShimRequest.parse(sys.stdin.read())
    except (RecordError, OSError, ValueError) as err:
        _say(f"bad request: {err}")
        _report({"error": f"bad shim request: {err}"})
        return BAD_REQUEST
    with contextlib.suppress(OSError):
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _on_stop)
    anchors = [Anchor(a) for a in request.anchors]
    if any(a.gone() for a in anchors):
        _report({"error": "the cluster this container belongs to is gone"})
        return ANCHOR_GONE
    me = procfs.identify(os.getpid())
    assert me is not None
    slot = Slot(Path(request.records_dir), request.pod_uid, request.container)
    slot.clear_exit()
    go_read, go_write = os.pipe()
    err_read, err_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(go_write)
        os.close(err_read)
        _child(request, me.pid, go_read, err_write)
    os.close(go_read)
    os.close(err_write)
    child = procfs.identify(pid)  # an unreaped child keeps its /proc entry
    assert child is not None
    record = ContainerRecord(**container_fields(request), started_at=_now(), process=child, shim=me)
    try:
        slot.write_record(record)
    except OSError as err:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        _report({"error": f"cannot write the container record: {err}"})
        return BAD_REQUEST
    os.close(go_write)  # the child may exec now
    failure = _read_all(err_read).decode(errors="replace")
    if failure:
        code = _reap_if_exited(pid)
        while code is None:
            time.sleep(0.01)
            code = _reap_if_exited(pid)
        slot.write_exit(ExitRecord(child, code, _now(), record.started_at, failure))
        _report({"error": failure, **child.to_json()})
        return 0
    _report(child.to_json())
    code = supervise(pid, anchors, request.grace_seconds, wake_read)
    slot.write_exit(ExitRecord(child, code, _now(), record.started_at))
    _say(f"container pid {pid} exited with {code}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
