"""A restarted process node's decision per container: adopt, restart, finish, start or
terminate; restart counts carried over; the pod IP kept."""

from __future__ import annotations

import pytest

from localkube.adoption import (
    Action,
    PodFacts,
    RecordFacts,
    choose_pod_ip,
    decide,
    restart_count,
    restarts_after_exit,
)

UID, OTHER = "uid-1", "uid-2"
POD = PodFacts(UID)
DELETING = PodFacts(UID, deleting=True)
RUNNING = RecordFacts(UID, running=True)
DEAD = RecordFacts(UID, running=False, exit_code=137)
DEAD_OK = RecordFacts(UID, running=False, exit_code=0)
DEAD_UNKNOWN = RecordFacts(UID, running=False, exit_code=None)
SEEN = RecordFacts(UID, running=False, exit_code=1, seen_exit=True)
SEEN_OK = RecordFacts(UID, running=False, exit_code=0, seen_exit=True)


@pytest.mark.parametrize(
    ("pod", "record", "action"),
    [
        # the pod is still bound here
        (POD, RUNNING, Action.ADOPT),
        (POD, DEAD, Action.RESTART),
        (POD, DEAD_UNKNOWN, Action.RESTART),
        (POD, None, Action.START),
        (POD, SEEN, Action.START),  # its exit was counted before the agent died
        (PodFacts(UID, "OnFailure"), DEAD, Action.RESTART),
        (PodFacts(UID, "OnFailure"), DEAD_UNKNOWN, Action.RESTART),
        (PodFacts(UID, "OnFailure"), DEAD_OK, Action.FINISHED),
        (PodFacts(UID, "OnFailure"), SEEN_OK, Action.FINISHED),
        (PodFacts(UID, "Never"), DEAD, Action.FINISHED),
        (PodFacts(UID, "Never"), DEAD_OK, Action.FINISHED),
        (PodFacts(UID, "Never"), SEEN, Action.FINISHED),
        # being deleted: a live process gets its grace period, nothing new starts
        (DELETING, RUNNING, Action.ADOPT),
        (DELETING, DEAD, Action.DISCARD),
        (DELETING, None, Action.DISCARD),
        # gone, or a namesake with another uid
        (None, RUNNING, Action.TERMINATE),
        (None, DEAD, Action.DISCARD),
        (None, SEEN, Action.DISCARD),
        (None, None, Action.DISCARD),
        (PodFacts(OTHER), RUNNING, Action.TERMINATE),
        (PodFacts(OTHER), DEAD, Action.DISCARD),
    ],
)
def test_decide(pod: PodFacts | None, record: RecordFacts | None, action: Action) -> None:
    assert decide(pod, record) is action


@pytest.mark.parametrize(
    ("policy", "code", "restarts"),
    [
        ("Always", 0, True),
        ("Always", 1, True),
        ("Always", None, True),
        ("OnFailure", 0, False),
        ("OnFailure", 2, True),
        ("OnFailure", None, True),  # an unknown end is not a success
        ("Never", 1, False),
        ("Never", None, False),
    ],
)
def test_restarts_after_exit(policy: str, code: int | None, restarts: bool) -> None:
    assert restarts_after_exit(policy, code) is restarts


@pytest.mark.parametrize(
    ("action", "reported", "reported_running", "count"),
    [
        (Action.ADOPT, 2, True, 2),  # adopting is not restarting
        (Action.RESTART, 2, True, 3),  # died unseen while no agent ran
        (Action.RESTART, 0, False, 1),
        (Action.START, 0, False, 0),  # first start
        (Action.START, 3, False, 3),  # the seen exit was counted and reported already
        (Action.START, 3, True, 4),  # ...counted but never reported: count it now
        (Action.FINISHED, 1, True, 1),
        (Action.DISCARD, 1, False, 1),
    ],
)
def test_restart_count(action: Action, reported: int, reported_running: bool, count: int) -> None:
    assert restart_count(action, reported, reported_running) == count


IPS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")


@pytest.mark.parametrize(
    ("adopted", "reported", "in_use", "ip"),
    [
        ("127.0.0.3", None, {"127.0.0.3"}, "127.0.0.3"),  # an adopted process listens there
        ("127.0.0.3", "127.0.0.4", set(), "127.0.0.3"),
        (None, "127.0.0.4", {"127.0.0.2"}, "127.0.0.4"),  # the pod keeps its address
        (None, "127.0.0.4", {"127.0.0.4"}, "127.0.0.2"),  # ...unless another pod has it
        (None, "10.0.0.9", set(), "127.0.0.2"),  # not one of ours
        (None, None, {"127.0.0.2"}, "127.0.0.3"),
        (None, None, set(IPS), None),
    ],
)
def test_choose_pod_ip(
    adopted: str | None, reported: str | None, in_use: set[str], ip: str | None
) -> None:
    assert (
        choose_pod_ip(adopted_ip=adopted, reported_ip=reported, in_use=in_use, candidates=IPS) == ip
    )
