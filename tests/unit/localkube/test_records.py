"""Container records: their format, and the store a restarted node reads them from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from localkube.procfs import ProcessIdentity
from localkube.records import (
    ContainerRecord,
    ExitRecord,
    RecordError,
    RecordStore,
    ShimRequest,
    container_fields,
    exit_code,
)

PROCESS = ProcessIdentity(pid=4242, start_time=987654, boot_id="boot-a")
SHIM = ProcessIdentity(pid=4241, start_time=987650, boot_id="boot-a")
RECORD = ContainerRecord(
    pod_uid="0b7e4c1a-5d7e-4f4e-9a53-1f5c1d2e3f40",
    namespace="trading",
    pod="bot-medio-7f9c",
    container="bot",
    pod_ip="127.0.0.7",
    grace_seconds=30.0,
    started_at="2026-12-01T20:00:00Z",
    process=PROCESS,
    shim=SHIM,
)


def test_a_container_record_round_trips() -> None:
    assert ContainerRecord.parse(RECORD.encode()) == RECORD
    assert json.loads(RECORD.encode())["process"] == {
        "pid": 4242,
        "startTime": 987654,
        "bootId": "boot-a",
    }
    assert RECORD.pod_key == "trading/bot-medio-7f9c"


def mutated(**changes: Any) -> str:
    data = json.loads(RECORD.encode())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return json.dumps(data)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[]",
        "{not json",
        mutated(version=2),
        mutated(version=None),
        mutated(podUid="../../etc"),  # a record must never name a path outside its dir
        mutated(podUid="a/b"),
        mutated(container="bot.exit"),  # would collide with the exit record's name
        mutated(container=""),
        mutated(graceSeconds=-1),
        mutated(graceSeconds=True),
        mutated(process={"pid": -4, "startTime": 1, "bootId": "b"}),
        mutated(shim=None),
        mutated(podIP=7),
    ],
)
def test_a_malformed_record_is_refused(text: str) -> None:
    with pytest.raises(RecordError):
        ContainerRecord.parse(text)


def test_an_exit_record_round_trips() -> None:
    ended = ExitRecord(PROCESS, -9, "2026-12-01T20:01:00Z", "2026-12-01T20:00:00Z", "why")
    assert ExitRecord.parse(ended.encode()) == ended
    with pytest.raises(RecordError):
        ExitRecord.parse(ended.encode().replace('"returncode": -9', '"returncode": "-9"'))


@pytest.mark.parametrize(
    ("returncode", "code"), [(0, 0), (1, 1), (127, 127), (-15, 143), (-9, 137)]
)
def test_exit_codes_follow_kubernetes(returncode: int, code: int) -> None:
    assert exit_code(returncode) == code


def test_a_shim_request_round_trips_and_checks_its_fields() -> None:
    request = ShimRequest(
        argv=["python", "-c", "pass"],
        env={"API_KEY": "k"},
        cwd="/tmp",
        log_path="/tmp/log",
        records_dir="/tmp/containers",
        pod_uid=RECORD.pod_uid,
        namespace="trading",
        pod="p",
        container="bot",
        pod_ip="127.0.0.2",
        grace_seconds=3,
        anchors=[SHIM],
    )
    assert ShimRequest.parse(request.encode()) == request
    data = json.loads(request.encode())
    for key, bad in (("argv", []), ("env", {"A": 1}), ("anchors", [{"pid": 0}])):
        with pytest.raises(RecordError):
            ShimRequest.parse(json.dumps({**data, key: bad}))


def test_the_store_finds_records_skips_foreign_files_and_retires_seen_exits(
    tmp_path: Path,
) -> None:
    store = RecordStore(tmp_path / "containers")
    assert store.load() == ([], [])
    slot = store.slot(RECORD.pod_uid, "bot")
    slot.write_record(RECORD)
    other = ContainerRecord(**{**RECORD.__dict__, "container": "audit"})
    store.slot(RECORD.pod_uid, "audit").write_record(other)
    # A file claiming to be another container than its name says is not trusted.
    (slot.record_path.parent / "sidecar.json").write_text(RECORD.encode())
    (slot.record_path.parent / "broken.json").write_text("{")
    records, problems = store.load()
    assert sorted(r.container for r in records) == ["audit", "bot"]
    assert len(problems) == 2
    assert set(store.for_pod(RECORD.pod_uid)) == {"audit", "bot"}
    assert store.pod_uids() == [RECORD.pod_uid]

    ended = ExitRecord(PROCESS, 0, "2026-12-01T20:01:00Z")
    slot.write_exit(ended)
    assert slot.read_exit() == ended
    assert set(store.for_pod(RECORD.pod_uid)) == {"audit", "bot"}  # exit files are not records
    slot.retire()
    assert slot.read_record() is None and slot.read_exit() == ended
    assert set(store.for_pod(RECORD.pod_uid)) == {"audit"}
    store.remove_pod(RECORD.pod_uid)
    assert store.load() == ([], [])
    assert not list(tmp_path.glob("containers/*/.tmp-*"))


def test_a_shim_request_hands_its_container_on_to_the_record_whole() -> None:
    request = ShimRequest(
        argv=["/bin/true"],
        env={},
        cwd="/",
        log_path="/tmp/log",
        records_dir="/tmp/records",
        **container_fields(RECORD),
    )
    record = ContainerRecord(
        **container_fields(request), started_at="t", process=PROCESS, shim=SHIM
    )
    assert container_fields(record) == container_fields(RECORD)
    # The round trips fail for a ContainerRef field that has no JSON key.
    assert ShimRequest.parse(request.encode()) == request
    assert ContainerRecord.parse(record.encode()) == record
