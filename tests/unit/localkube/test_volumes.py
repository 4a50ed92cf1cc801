"""Secret volumes on the process node follow the kubelet's rules (no cluster needed)."""

from __future__ import annotations

import base64
import stat
from pathlib import Path
from typing import Any

import pytest

from localkube.volumes import (
    DEFAULT_MODE,
    DIR_MODE,
    KeyToPath,
    SecretVolume,
    VolumeError,
    decode_data,
    project,
    remove_secret_volumes,
    secret_volumes,
    write_files,
)

# The bot pod's credentials volume, as the operator renders it.
CREDENTIALS_VOLUME = {
    "name": "credentials",
    "secret": {
        "secretName": "exchange-keys",
        "defaultMode": 0o440,
        "items": [{"key": "apiKey", "path": "apiKey"}, {"key": "secret", "path": "secret"}],
    },
}
DATA = {"apiKey": b"key-123456", "secret": b"secret-123456", "extra": b"unused"}


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_secret_volumes_are_read_from_the_pod_spec() -> None:
    spec: dict[str, Any] = {
        "volumes": [
            {"name": "tmp", "emptyDir": {}},
            CREDENTIALS_VOLUME,
            {"name": "all", "secret": {"secretName": "s", "optional": True}},
            {"name": "state", "persistentVolumeClaim": {"claimName": "c"}},
        ]
    }
    credentials, everything = secret_volumes(spec)
    assert credentials == SecretVolume(
        name="credentials",
        secret_name="exchange-keys",
        default_mode=0o440,
        items=(KeyToPath("apiKey", "apiKey"), KeyToPath("secret", "secret")),
    )
    assert everything == SecretVolume(name="all", secret_name="s", optional=True)
    assert everything.default_mode == DEFAULT_MODE == 0o644
    assert secret_volumes({}) == []


def test_items_pick_keys_and_an_item_mode_overrides_the_default() -> None:
    volume = SecretVolume(
        "v",
        "s",
        default_mode=0o440,
        items=(KeyToPath("apiKey", "a/key"), KeyToPath("secret", "s", 0o400)),
    )
    assert project(volume, DATA) == {
        "a/key": (b"key-123456", 0o440),
        "s": (b"secret-123456", 0o400),
    }


def test_without_items_every_key_is_a_file() -> None:
    assert project(SecretVolume("v", "s"), DATA) == {k: (v, 0o644) for k, v in DATA.items()}


def test_a_missing_secret_fails_the_mount_unless_optional() -> None:
    with pytest.raises(VolumeError, match='secret "exchange-keys" not found'):
        project(SecretVolume("v", "exchange-keys"), None)
    assert project(SecretVolume("v", "exchange-keys", optional=True), None) == {}


def test_a_missing_key_fails_the_mount_unless_optional() -> None:
    items = (KeyToPath("apiKey", "apiKey"), KeyToPath("passphrase", "passphrase"))
    with pytest.raises(VolumeError, match='key passphrase in Secret "s"'):
        project(SecretVolume("v", "s", items=items), DATA)
    assert project(SecretVolume("v", "s", items=items, optional=True), DATA) == {
        "apiKey": (b"key-123456", DEFAULT_MODE)
    }


@pytest.mark.parametrize("mode", [-1, 0o1000])
def test_a_mode_out_of_range_is_refused(mode: int) -> None:
    with pytest.raises(VolumeError, match="file mode"):
        secret_volumes(
            {"volumes": [{"name": "v", "secret": {"secretName": "s", "defaultMode": mode}}]}
        )


def test_secret_data_is_decoded_and_size_bounded() -> None:
    encoded = {k: base64.b64encode(v).decode() for k, v in DATA.items()}
    assert decode_data(encoded) == DATA
    assert decode_data(None) == {}
    with pytest.raises(VolumeError, match="not base64"):
        decode_data({"apiKey": "not base64!"})
    with pytest.raises(VolumeError, match="larger than"):
        decode_data({"big": base64.b64encode(b"x" * (1024 * 1024 + 1)).decode()})


def test_files_are_written_with_their_modes_in_a_closed_directory(tmp_path: Path) -> None:
    directory = tmp_path / "volumes" / "credentials"
    write_files(
        directory, {"apiKey": (b"key-123456", 0o440), "nested/secret": (b"s-123456", 0o400)}
    )
    assert (directory / "apiKey").read_bytes() == b"key-123456"
    assert mode_of(directory / "apiKey") == 0o440
    assert mode_of(directory / "nested" / "secret") == 0o400
    assert mode_of(directory) == DIR_MODE and not DIR_MODE & 0o007
    assert mode_of(directory / "nested") == DIR_MODE
    assert sorted(p.name for p in directory.iterdir()) == ["apiKey", "nested"]  # no temp files


def test_writing_again_replaces_content_and_drops_keys_that_are_gone(tmp_path: Path) -> None:
    write_files(tmp_path, {"apiKey": (b"old", 0o440), "secret": (b"old", 0o440)})
    write_files(tmp_path, {"apiKey": (b"new", 0o400)})
    assert [p.name for p in tmp_path.iterdir()] == ["apiKey"]
    assert (tmp_path / "apiKey").read_bytes() == b"new"
    assert mode_of(tmp_path / "apiKey") == 0o400


def test_an_empty_projection_still_makes_the_directory(tmp_path: Path) -> None:
    write_files(tmp_path / "optional", {})
    assert mode_of(tmp_path / "optional") == DIR_MODE


@pytest.mark.parametrize("path", ["/etc/passwd", "../escape", "a/../../b", ""])
def test_paths_outside_the_volume_are_refused_before_anything_is_written(
    tmp_path: Path, path: str
) -> None:
    with pytest.raises(VolumeError, match="must be relative"):
        write_files(tmp_path / "v", {"ok": (b"1", 0o644), path: (b"x", 0o644)})
    assert not (tmp_path / "v").exists()


def test_removal_deletes_only_the_secret_volumes(tmp_path: Path) -> None:
    spec = {"volumes": [{"name": "tmp", "emptyDir": {}}, CREDENTIALS_VOLUME]}
    write_files(tmp_path / "credentials", {"apiKey": (b"key-123456", 0o440)})
    (tmp_path / "tmp").mkdir()
    remove_secret_volumes(tmp_path, spec)
    assert [p.name for p in tmp_path.iterdir()] == ["tmp"]
    remove_secret_volumes(tmp_path, spec)  # gone already: nothing to do
