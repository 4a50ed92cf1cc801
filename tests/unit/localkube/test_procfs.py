"""Reading process identities from /proc: parsing, and telling a reused pid apart."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from localkube import procfs
from localkube.procfs import ProcessIdentity, ProcStat, StatError, parse_stat, same_process

# A real line (kernel 6.x) with the 52 fields; comm is "python3".
STAT = (
    "4242 (python3) S 100 4242 4242 0 -1 4194304 1204 0 0 0 5 1 0 0 20 0 1 0 987654 "
    "15728640 2390 18446744073709551615 1 1 0 0 0 0 0 16781312 2 0 0 0 17 1 0 0 0 0 0 "
    "0 0 0 0 0 0 0 0"
)


@pytest.mark.parametrize(
    ("text", "comm", "state", "start_time"),
    [
        (STAT, "python3", "S", 987654),
        # A command name may hold spaces and parentheses: only the last ")" ends it.
        (STAT.replace("(python3)", "(my (odd) name)"), "my (odd) name", "S", 987654),
        (STAT.replace("(python3)", "(a) b)"), "a) b", "S", 987654),
        (STAT.replace(") S ", ") Z "), "python3", "Z", 987654),
        (STAT.replace(") S ", ") T "), "python3", "T", 987654),
    ],
)
def test_parse_stat_reads_the_start_time_after_the_last_paren(
    text: str, comm: str, state: str, start_time: int
) -> None:
    stat = parse_stat(text)
    assert (stat.pid, stat.comm, stat.state, stat.start_time) == (4242, comm, state, start_time)
    assert (stat.ppid, stat.pgrp, stat.session) == (100, 4242, 4242)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "4242 python3 S 1 2 3",  # no parentheses
        "4242 (python3) S 100 4242",  # truncated
        "x (python3)" + STAT.split(")", 1)[1],  # pid not a number
        STAT.replace(" 987654 ", " soon "),  # start time not a number
    ],
)
def test_parse_stat_refuses_what_is_not_a_stat_line(text: str) -> None:
    with pytest.raises(StatError):
        parse_stat(text)


RECORDED = ProcessIdentity(pid=4242, start_time=987654, boot_id="boot-a")


def stat(**changes: object) -> ProcStat:
    base = {
        "pid": 4242,
        "comm": "python3",
        "state": "S",
        "ppid": 1,
        "pgrp": 4242,
        "session": 4242,
        "start_time": 987654,
    }
    base.update(changes)
    return ProcStat(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("current", "boot", "expected"),
    [
        (stat(), "boot-a", True),
        (stat(state="T"), "boot-a", True),  # stopped (SIGSTOP) still runs
        (stat(state="R"), "boot-a", True),
        (stat(state="Z"), "boot-a", False),  # exited, not yet reaped
        (stat(state="X"), "boot-a", False),
        (stat(start_time=987655), "boot-a", False),  # the pid was reused
        (stat(), "boot-b", False),  # another boot: start times do not compare
        (stat(pid=4243), "boot-a", False),
        (None, "boot-a", False),  # no process has the pid
    ],
)
def test_same_process_needs_pid_start_time_boot_and_life(
    current: ProcStat | None, boot: str, expected: bool
) -> None:
    assert same_process(RECORDED, current, boot) is expected


def test_this_process_is_identified_and_running() -> None:
    me = procfs.identify(os.getpid())
    assert me is not None and me.pid == os.getpid() and me.boot_id == procfs.boot_id()
    assert procfs.is_running(me)
    assert not procfs.is_running(ProcessIdentity(me.pid, me.start_time + 1, me.boot_id))
    assert os.getpid() in procfs.pids()


def test_a_zombie_and_a_reaped_child_are_not_running() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    identity = procfs.identify(child.pid)
    assert identity is not None
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, still a zombie
    assert procfs.read_stat(child.pid) is not None
    assert not procfs.is_running(identity)
    child.wait()
    assert not procfs.is_running(identity)
    assert procfs.read_stat(child.pid) is None or procfs.identify(child.pid) != identity


@pytest.mark.parametrize(
    "data",
    [
        None,
        [],
        {"pid": 0, "startTime": 1, "bootId": "b"},
        {"pid": True, "startTime": 1, "bootId": "b"},
        {"pid": 1, "startTime": -1, "bootId": "b"},
        {"pid": 1, "startTime": "1", "bootId": "b"},
        {"pid": 1, "startTime": 1},
    ],
)
def test_identity_from_json_refuses_malformed_data(data: object) -> None:
    with pytest.raises(ValueError):
        ProcessIdentity.from_json(data)


def test_identity_round_trips_through_json() -> None:
    assert ProcessIdentity.from_json(RECORDED.to_json()) == RECORDED
