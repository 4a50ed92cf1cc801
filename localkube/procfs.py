"""Which process a pid is: identities read from /proc that survive pid reuse.

A pid alone names a process only while it lives; once it exits the kernel may hand the number
to another process. `/proc/PID/stat` field 22 (start time in clock ticks since boot) plus the
boot id tell two processes with one pid apart, so a record written by one node agent can be
checked by the next one before it signals or adopts anything. Standard library only: the
per-container shim imports it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROC = Path("/proc")
BOOT_ID_PATH = PROC / "sys" / "kernel" / "random" / "boot_id"
# Exited but not reaped (Z), or being torn down (X): no code of it runs any more.
DEAD_STATES = frozenset({"Z", "X", "x"})
# /proc/PID/stat after the ")" closing the command name: field 3 (state) is index 0, so
# field N is index N - 3.
_STATE, _PPID, _PGRP, _SESSION, _START_TIME = 0, 1, 2, 3, 19


class StatError(ValueError):
    """The text is not a /proc/PID/stat line."""


@dataclass(frozen=True)
class ProcStat:
    pid: int
    comm: str
    state: str
    ppid: int
    pgrp: int
    session: int
    start_time: int


def parse_stat(text: str) -> ProcStat:
    """Parse /proc/PID/stat; the command name may itself hold spaces and parentheses."""
    open_paren, close_paren = text.find("("), text.rfind(")")
    if open_paren < 1 or close_paren < open_paren:
        raise StatError(f"no (comm) in {text[:80]!r}")
    fields = text[close_paren + 1 :].split()
    if len(fields) <= _START_TIME:
        raise StatError(f"only {len(fields) + 2} fields in {text[:80]!r}")
    try:
        return ProcStat(
            pid=int(text[:open_paren]),
            comm=text[open_paren + 1 : close_paren],
            state=fields[_STATE],
            ppid=int(fields[_PPID]),
            pgrp=int(fields[_PGRP]),
            session=int(fields[_SESSION]),
            start_time=int(fields[_START_TIME]),
        )
    except ValueError as err:
        raise StatError(f"bad number in {text[:80]!r}: {err}") from err


def read_stat(pid: int) -> ProcStat | None:
    """The process's stat, None when no process has that pid."""
    if pid <= 0:
        return None
    try:
        return parse_stat((PROC / str(pid) / "stat").read_text())
    except (OSError, StatError):
        return None


_boot_id: str | None = None


def boot_id() -> str:
    """This boot's id: start times count from boot, so they only compare within one."""
    global _boot_id
    if _boot_id is None:
        try:
            _boot_id = BOOT_ID_PATH.read_text().strip()
        except OSError:
            _boot_id = ""
    return _boot_id


@dataclass(frozen=True)
class ProcessIdentity:
    """One process, for good: its pid, when it started, and in which boot."""

    pid: int
    start_time: int
    boot_id: str

    def to_json(self) -> dict[str, Any]:
        return {"pid": self.pid, "startTime": self.start_time, "bootId": self.boot_id}

    @classmethod
    def from_json(cls, data: Any) -> ProcessIdentity:
        if not isinstance(data, dict):
            raise ValueError(f"a process identity is an object, not {type(data).__name__}")
        pid, start, boot = data.get("pid"), data.get("startTime"), data.get("bootId")
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
            raise ValueError(f"pid must be a positive integer, not {pid!r}")
        if not isinstance(start, int) or isinstance(start, bool) or start < 0:
            raise ValueError(f"startTime must be a non-negative integer, not {start!r}")
        if not isinstance(boot, str):
            raise ValueError(f"bootId must be a string, not {boot!r}")
        return cls(pid=pid, start_time=start, boot_id=boot)


def identify(pid: int) -> ProcessIdentity | None:
    """The identity of the process now holding pid, None if there is none."""
    stat = read_stat(pid)
    if stat is None:
        return None
    return ProcessIdentity(pid=pid, start_time=stat.start_time, boot_id=boot_id())


def same_process(recorded: ProcessIdentity, current: ProcStat | None, current_boot: str) -> bool:
    """True when `current` (what holds the pid now) is the recorded process, still running."""
    return (
        current is not None
        and current.pid == recorded.pid
        and current.start_time == recorded.start_time
        and current_boot == recorded.boot_id
        and current.state not in DEAD_STATES
    )


def is_running(identity: ProcessIdentity) -> bool:
    """The recorded process exists and has not exited (a stopped process still runs)."""
    return same_process(identity, read_stat(identity.pid), boot_id())


def pids() -> list[int]:
    """Every pid in /proc now (a census; processes may come and go meanwhile)."""
    found = []
    with contextlib.suppress(OSError):
        for entry in PROC.iterdir():
            if entry.name.isdigit():
                found.append(int(entry.name))
    return found
