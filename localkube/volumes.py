"""Secret volumes on the process node: which files a pod's `secret` volume holds, and writing
them into the volume's directory as a kubelet would.

Kept apart from node.py as pure helpers (a pod spec and Secret data in, files out) so that
the Kubernetes rules they follow are unit-tested without a cluster: every key or only the
listed `items`, `mode` over `defaultMode` (0644 when unset), a missing Secret or key fails the
mount unless the volume is `optional`.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

# The API server's default for `secret.defaultMode` (a hand-built spec may lack it).
DEFAULT_MODE = 0o644
# Owner and group only: other users of the machine must not read a pod's credentials.
DIR_MODE = 0o750
# A Secret holds at most 1 MiB; anything larger did not come from the API server.
MAX_SECRET_BYTES = 1024 * 1024

Files = dict[str, tuple[bytes, int]]


class VolumeError(Exception):
    """A volume cannot be set up yet; the pod's containers wait for it."""


@dataclass(frozen=True)
class KeyToPath:
    key: str
    path: str
    mode: int | None = None


@dataclass(frozen=True)
class SecretVolume:
    name: str
    secret_name: str
    default_mode: int = DEFAULT_MODE
    items: tuple[KeyToPath, ...] | None = None
    optional: bool = False


def secret_volumes(pod_spec: Mapping[str, Any]) -> list[SecretVolume]:
    """The `secret` volumes of a pod spec in its API (camelCase) form."""
    found: list[SecretVolume] = []
    for volume in pod_spec.get("volumes") or []:
        source = volume.get("secret")
        if source is None:
            continue
        items = source.get("items")
        found.append(
            SecretVolume(
                name=str(volume["name"]),
                secret_name=str(source.get("secretName") or ""),
                default_mode=_mode(source.get("defaultMode"), DEFAULT_MODE),
                items=None
                if items is None
                else tuple(
                    KeyToPath(
                        key=str(i["key"]),
                        path=str(i["path"]),
                        mode=None if i.get("mode") is None else _mode(i["mode"], DEFAULT_MODE),
                    )
                    for i in items
                ),
                optional=bool(source.get("optional")),
            )
        )
    return found


def _mode(value: Any, default: int) -> int:
    if value is None:
        return default
    mode = int(value)
    if not 0 <= mode <= 0o777:
        raise VolumeError(f"file mode {mode:#o} is not between 0 and 0777")
    return mode


def decode_data(data: Mapping[str, str] | None) -> dict[str, bytes]:
    """A Secret's `data` (base64 values, as the API returns them) as raw bytes."""
    try:
        decoded = {
            key: base64.b64decode(value or "", validate=True) for key, value in (data or {}).items()
        }
    except binascii.Error as err:
        raise VolumeError(f"secret data is not base64: {err}") from err
    if sum(len(v) for v in decoded.values()) > MAX_SECRET_BYTES:
        raise VolumeError(f"secret data larger than {MAX_SECRET_BYTES} bytes")
    return decoded


def project(volume: SecretVolume, data: Mapping[str, bytes] | None) -> Files:
    """Relative path -> (content, mode) for the volume, given the Secret's data (None: the
    Secret does not exist). VolumeError when the pod must wait for the Secret."""
    if data is None:
        if volume.optional:
            return {}
        raise VolumeError(f'secret "{volume.secret_name}" not found')
    if volume.items is None:
        files = {key: (value, volume.default_mode) for key, value in data.items()}
    else:
        files = {}
        for item in volume.items:
            if item.key not in data:
                if volume.optional:
                    continue
                raise VolumeError(f'couldn\'t find key {item.key} in Secret "{volume.secret_name}"')
            mode = volume.default_mode if item.mode is None else item.mode
            files[item.path] = (data[item.key], mode)
    return files


def _check_relative(path: str) -> None:
    # The API server refuses such paths; a file must never land outside its volume anyway.
    parts = PurePosixPath(path).parts
    if not path or path.startswith("/") or ".." in parts or not parts:
        raise VolumeError(f"item path {path!r} must be relative and must not contain '..'")


def write_files(directory: Path, files: Files) -> None:
    """Make `directory` hold exactly `files`, each replaced atomically with its mode, so a
    reader sees the old or the new content, never a partly written or too open file."""
    for relative in files:
        _check_relative(relative)
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, DIR_MODE)
    for relative, (content, mode) in files.items():
        target = directory / relative
        for parent in reversed(target.relative_to(directory).parents[:-1]):
            (directory / parent).mkdir(mode=DIR_MODE, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")  # mode 0600
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(content)
                os.fchmod(handle.fileno(), mode)
            os.replace(temporary, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
    wanted = {directory / relative for relative in files}
    for root, _, names in os.walk(directory):
        for name in names:
            path = Path(root) / name
            if path not in wanted:  # a key the Secret no longer has
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()


def remove_secret_volumes(volumes_dir: Path, pod_spec: Mapping[str, Any]) -> None:
    """Delete the files of every Secret volume of the pod (its logs and other volumes stay)."""
    for volume in secret_volumes(pod_spec):
        shutil.rmtree(volumes_dir / volume.name, ignore_errors=True)
