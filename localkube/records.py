"""What a process node remembers about its containers, on disk, across its own death.

Per container, in the node's data dir, ``containers/<pod uid>/<container>.json`` (the record:
which pod, which container, the pod IP, the grace period, and the identity of the container
process and of its shim) and ``<container>.exit.json`` (how that process ended, written by
the shim after reaping it). The shim writes the record *before* the container's command runs,
so a container process never exists without a record a restarted node can find. Files are
replaced atomically; a reader sees an old or a new record, never half of one.

Standard library only: the shim imports it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from localkube.procfs import ProcessIdentity

R = TypeVar("R")

RECORD_VERSION = 1
RECORD_SUFFIX = ".json"
EXIT_SUFFIX = ".exit.json"
# Pod uids and container names (DNS labels) never hold these; a record naming one is not
# ours and must never become a path.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")


class RecordError(ValueError):
    """A record file that does not hold a record of this version."""


def _str(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise RecordError(f"{key} must be a string, not {value!r}")
    return value


def _name(data: dict[str, Any], key: str) -> str:
    value = _str(data, key)
    if not _SAFE_NAME.match(value) or value.endswith(".exit"):
        raise RecordError(f"{key} {value!r} is not a pod uid or container name")
    return value


def _number(data: dict[str, Any], key: str) -> float:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise RecordError(f"{key} must be a non-negative number, not {value!r}")
    return float(value)


def _identity(data: dict[str, Any], key: str) -> ProcessIdentity:
    try:
        return ProcessIdentity.from_json(data.get(key))
    except ValueError as err:
        raise RecordError(f"{key}: {err}") from err


def _object(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError as err:
        raise RecordError(f"not JSON: {err}") from err
    if not isinstance(data, dict):
        raise RecordError("a record is a JSON object")
    if data.get("version") != RECORD_VERSION:
        raise RecordError(f"version {data.get('version')!r}, expected {RECORD_VERSION}")
    return data


@dataclass(frozen=True)
class ContainerRef:
    """Which container of which pod: what a ShimRequest hands on to its ContainerRecord."""

    pod_uid: str
    namespace: str
    pod: str
    container: str
    pod_ip: str
    grace_seconds: float


# The JSON key and the parser of each ContainerRef field.
_CONTAINER_KEYS: dict[str, tuple[str, Callable[[dict[str, Any], str], Any]]] = {
    "pod_uid": ("podUid", _name),
    "namespace": ("namespace", _str),
    "pod": ("pod", _str),
    "container": ("container", _name),
    "pod_ip": ("podIP", _str),
    "grace_seconds": ("graceSeconds", _number),
}


def container_fields(source: ContainerRef) -> dict[str, Any]:
    return {f.name: getattr(source, f.name) for f in fields(ContainerRef)}


def _container_json(source: ContainerRef) -> dict[str, Any]:
    return {key: getattr(source, name) for name, (key, _) in _CONTAINER_KEYS.items()}


def _parse_container(data: dict[str, Any]) -> dict[str, Any]:
    return {name: parse(data, key) for name, (key, parse) in _CONTAINER_KEYS.items()}


@dataclass(frozen=True)
class ContainerRecord(ContainerRef):
    """One container process this node started (or adopted)."""

    started_at: str
    process: ProcessIdentity
    shim: ProcessIdentity

    @property
    def pod_key(self) -> str:
        return f"{self.namespace}/{self.pod}"

    def encode(self) -> str:
        return json.dumps(
            {
                "version": RECORD_VERSION,
                **_container_json(self),
                "startedAt": self.started_at,
                "process": self.process.to_json(),
                "shim": self.shim.to_json(),
            },
            sort_keys=True,
        )

    @classmethod
    def parse(cls, text: str) -> ContainerRecord:
        data = _object(text)
        return cls(
            **_parse_container(data),
            started_at=_str(data, "startedAt"),
            process=_identity(data, "process"),
            shim=_identity(data, "shim"),
        )


@dataclass(frozen=True)
class ExitRecord:
    """How a container process ended, in Popen's convention (negative: killed by signal)."""

    process: ProcessIdentity
    returncode: int
    finished_at: str
    started_at: str = ""
    message: str = ""

    def encode(self) -> str:
        return json.dumps(
            {
                "version": RECORD_VERSION,
                "process": self.process.to_json(),
                "returncode": self.returncode,
                "startedAt": self.started_at,
                "finishedAt": self.finished_at,
                "message": self.message,
            },
            sort_keys=True,
        )

    @classmethod
    def parse(cls, text: str) -> ExitRecord:
        data = _object(text)
        code = data.get("returncode")
        if isinstance(code, bool) or not isinstance(code, int):
            raise RecordError(f"returncode must be an integer, not {code!r}")
        return cls(
            process=_identity(data, "process"),
            returncode=code,
            finished_at=_str(data, "finishedAt"),
            started_at=str(data.get("startedAt") or ""),
            message=str(data.get("message") or ""),
        )


def exit_code(returncode: int) -> int:
    """The container exit code Kubernetes reports: 128 + N for death by signal N."""
    return 128 - returncode if returncode < 0 else returncode


@dataclass(frozen=True)
class ShimRequest(ContainerRef):
    """What the node hands a shim on its stdin: the container to run and how to record it.
    The environment travels this way, never on a command line or in a file, because it holds
    the pod's secrets."""

    argv: list[str]
    env: dict[str, str]
    cwd: str
    log_path: str
    records_dir: str
    anchors: list[ProcessIdentity] = field(default_factory=list)

    def encode(self) -> str:
        return json.dumps(
            {
                "version": RECORD_VERSION,
                "argv": self.argv,
                "env": self.env,
                "cwd": self.cwd,
                "logPath": self.log_path,
                "recordsDir": self.records_dir,
                **_container_json(self),
                "anchors": [a.to_json() for a in self.anchors],
            }
        )

    @classmethod
    def parse(cls, text: str) -> ShimRequest:
        data = _object(text)
        argv, env, anchors = data.get("argv"), data.get("env"), data.get("anchors")
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            raise RecordError("argv must be a non-empty list of strings")
        if not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items()
        ):
            raise RecordError("env must map strings to strings")
        if not isinstance(anchors, list):
            raise RecordError("anchors must be a list")
        try:
            parsed_anchors = [ProcessIdentity.from_json(a) for a in anchors]
        except ValueError as err:
            raise RecordError(f"anchors: {err}") from err
        return cls(
            argv=list(argv),
            env=dict(env),
            cwd=_str(data, "cwd"),
            log_path=_str(data, "logPath"),
            records_dir=_str(data, "recordsDir"),
            **_parse_container(data),
            anchors=parsed_anchors,
        )


def write_atomically(path: Path, text: str) -> None:
    """Replace path with text: readers see the old file or the new one, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def _read(path: Path, parse: Callable[[str], R]) -> R | None:
    """The record stored at `path`; None when absent, unreadable or torn."""
    try:
        return parse(path.read_text())
    except (OSError, RecordError):
        return None


@dataclass(frozen=True)
class Slot:
    """The files of one container of one pod."""

    root: Path
    pod_uid: str
    container: str

    @property
    def record_path(self) -> Path:
        return self.root / self.pod_uid / (self.container + RECORD_SUFFIX)

    @property
    def exit_path(self) -> Path:
        return self.root / self.pod_uid / (self.container + EXIT_SUFFIX)

    def write_record(self, record: ContainerRecord) -> None:
        write_atomically(self.record_path, record.encode())

    def read_record(self) -> ContainerRecord | None:
        return _read(self.record_path, ContainerRecord.parse)

    def write_exit(self, record: ExitRecord) -> None:
        write_atomically(self.exit_path, record.encode())

    def read_exit(self) -> ExitRecord | None:
        return _read(self.exit_path, ExitRecord.parse)

    def clear_exit(self) -> None:
        self.exit_path.unlink(missing_ok=True)

    def retire(self) -> None:
        """The node saw the process end and counted it: only the exit record stays, so a
        restarted node neither adopts it nor counts its exit again."""
        self.record_path.unlink(missing_ok=True)

    def remove(self) -> None:
        self.exit_path.unlink(missing_ok=True)
        self.record_path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.record_path.parent.rmdir()  # only once the pod's last container is gone


class RecordStore:
    """Every container record under one node's data dir."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def slot(self, pod_uid: str, container: str) -> Slot:
        return Slot(self.root, pod_uid, container)

    def load(self) -> tuple[list[ContainerRecord], list[str]]:
        """All records, and a line per file that is not one (kept, never acted on)."""
        records: list[ContainerRecord] = []
        problems: list[str] = []
        if self.root.is_dir():
            for pod_dir in sorted(self.root.iterdir()):
                if pod_dir.is_dir():
                    records += self._load_pod(pod_dir, problems)
        return records, problems

    def for_pod(self, pod_uid: str) -> dict[str, ContainerRecord]:
        if not _SAFE_NAME.match(pod_uid):
            return {}
        return {r.container: r for r in self._load_pod(self.root / pod_uid, [])}

    @staticmethod
    def _load_pod(pod_dir: Path, problems: list[str]) -> list[ContainerRecord]:
        records = []
        for path in sorted(pod_dir.glob("*" + RECORD_SUFFIX)):
            if path.name.endswith(EXIT_SUFFIX) or path.name.startswith(".tmp-"):
                continue
            try:
                record = ContainerRecord.parse(path.read_text())
            except (OSError, RecordError) as err:
                problems.append(f"{path}: {err}")
                continue
            if (record.pod_uid, record.container + RECORD_SUFFIX) != (pod_dir.name, path.name):
                problems.append(f"{path}: names {record.pod_uid}/{record.container}")
                continue
            records.append(record)
        return records

    def pod_uids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and _SAFE_NAME.match(p.name)
        )

    def remove_pod(self, pod_uid: str) -> None:
        if _SAFE_NAME.match(pod_uid):
            shutil.rmtree(self.root / pod_uid, ignore_errors=True)
