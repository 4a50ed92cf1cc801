"""Exchange credentials come from the files of the mounted Secret volume, never the API."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from tests.fakeapi import FakeApiServer
from tradingbot.config import DEFAULT_CREDENTIALS_DIR, ConfigError, Settings
from tradingbot.credentials import MAX_CREDENTIAL_BYTES, Credentials, read_credentials
from tradingbot.kube import KubeApi
from tradingbot.logsetup import REDACTOR
from tradingbot.runtime import EXIT_CONFIG, BotRuntime
from tradingbot.state import MemoryStateStore

API_KEY = "file-api-key-0123456789abcdef"
SECRET = "file-secret-fedcba9876543210"
NS = "bots"


def mount(directory: Path, **files: str | bytes) -> Path:
    """Files as the kubelet writes them: one per key, read-only for owner and group."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = directory / name
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        path.chmod(0o440)
    return directory


def test_values_are_read_with_trailing_whitespace_removed(tmp_path: Path) -> None:
    directory = mount(tmp_path, apiKey=f"{API_KEY}\n", secret=f"{SECRET} \r\n\t")
    creds = read_credentials(directory, "sandbox")
    assert creds == Credentials(api_key=API_KEY, secret=SECRET)
    assert API_KEY not in repr(creds) and SECRET not in repr(creds)


def test_files_behind_symlinks_are_followed(tmp_path: Path) -> None:
    # The kubelet's atomic writer exposes each key as a symlink into `..data/`.
    data = mount(tmp_path / "..data", apiKey=API_KEY, secret=SECRET)
    for name in ("apiKey", "secret"):
        os.symlink(data / name, tmp_path / name)
    assert read_credentials(tmp_path, "live").api_key == API_KEY


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        pytest.param({"secret": SECRET}, ["apiKey: missing"], id="missing apiKey"),
        pytest.param({"apiKey": API_KEY, "secret": "\n  \n"}, ["secret: empty"], id="blank"),
        pytest.param({"apiKey": "", "secret": ""}, ["apiKey: empty", "secret: empty"], id="both"),
        pytest.param(
            {"apiKey": API_KEY, "secret": b"\xff" + SECRET.encode()},
            ["secret: not UTF-8 text"],
            id="binary",
        ),
        pytest.param(
            {"apiKey": "k" * (MAX_CREDENTIAL_BYTES + 1), "secret": SECRET},
            [f"apiKey: larger than {MAX_CREDENTIAL_BYTES} bytes"],
            id="oversized",
        ),
    ],
)
def test_an_unusable_file_is_named_and_no_value_is_shown(
    tmp_path: Path, files: dict[str, str | bytes], expected: list[str]
) -> None:
    directory = mount(tmp_path, **files)
    with pytest.raises(ConfigError) as failed:
        read_credentials(directory, "sandbox")
    message = str(failed.value)
    assert message.startswith("CREDENTIALS_DIR: sandbox mode needs")
    for fragment in expected:
        assert f"{directory}/{fragment}" in message
    assert API_KEY not in message and SECRET not in message
    assert failed.value.__cause__ is None and failed.value.__context__ is None


def test_a_file_of_exactly_the_bound_is_accepted(tmp_path: Path) -> None:
    directory = mount(tmp_path, apiKey="k" * MAX_CREDENTIAL_BYTES, secret=SECRET)
    assert len(read_credentials(directory, "live").api_key) == MAX_CREDENTIAL_BYTES


def test_a_directory_in_place_of_a_file_is_a_config_error(tmp_path: Path) -> None:
    directory = mount(tmp_path, secret=SECRET)
    (directory / "apiKey").mkdir()
    with pytest.raises(ConfigError, match="apiKey: is a directory"):
        read_credentials(directory, "live")


def test_an_unreadable_file_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tradingbot.credentials

    directory = mount(tmp_path, apiKey=API_KEY, secret=SECRET)

    def denied(path: Path, *args: Any, **kwargs: Any) -> Any:
        if Path(path).name == "secret":  # a mode the process may not read (root may, always)
            raise PermissionError(13, "Permission denied", str(path))
        return open(path, *args, **kwargs)

    monkeypatch.setattr(tradingbot.credentials, "open", denied, raising=False)
    with pytest.raises(ConfigError) as failed:
        read_credentials(directory, "live")
    assert str(failed.value).endswith(f"{directory}/secret: cannot be read (Permission denied)")


def test_credentials_dir_comes_from_the_environment() -> None:
    base = {"BOT_NAME": "alpha", "POD_NAMESPACE": NS}
    assert Settings.from_env(base).credentials_dir == DEFAULT_CREDENTIALS_DIR
    assert DEFAULT_CREDENTIALS_DIR == "/var/run/secrets/trading.r7.dev/credentials"
    custom = Settings.from_env({**base, "CREDENTIALS_DIR": " /mnt/keys "})
    assert custom.credentials_dir == "/mnt/keys"


# ------------------------------------------------------------------ the runtime


def kube_with_bot(mode: str, **exchange: Any) -> FakeApiServer:
    kube = FakeApiServer()
    kube.put(
        {
            "apiVersion": "trading.r7.dev/v1alpha1",
            "kind": "TradingBot",
            "metadata": {"name": "alpha", "namespace": NS},
            "spec": {
                "profile": "volatile",
                "exchange": {"id": "binance", "mode": mode, **exchange},
                "symbols": ["BTC/USDT"],
                "strategy": {"params": {"priceFeed": "seeded", "seed": 5}},
            },
        },
    )
    return kube


def runtime_settings(credentials_dir: Path) -> Settings:
    return Settings(
        bot_name="alpha",
        namespace=NS,
        pod_name="pod-a",
        metrics_port=0,
        tick_seconds=0.01,
        lease_duration_seconds=3,
        grace_period_seconds=10,
        credentials_dir=str(credentials_dir),
    )


def invalid_config_events(kube: FakeApiServer) -> list[str]:
    return [e["message"] for e in kube.all("Event", NS) if e.get("reason") == "InvalidConfig"]


async def test_sandbox_mode_without_the_mounted_files_does_not_start(tmp_path: Path) -> None:
    kube = kube_with_bot("sandbox", credentialsSecretRef={"name": "keys"})
    runtime = BotRuntime(
        runtime_settings(tmp_path / "absent"), api=KubeApi(kube), store=MemoryStateStore()
    )
    assert await asyncio.wait_for(runtime.run(), 30) == EXIT_CONFIG
    (message,) = invalid_config_events(kube)
    assert f"{tmp_path}/absent/apiKey: missing" in message
    assert f"{tmp_path}/absent/secret: missing" in message
    assert runtime.credentials is None and runtime.exchange is None
    # No API read of any Secret: the bot's ServiceAccount may not `get` them.
    assert not [c for c in kube.calls if "/secrets" in c.path]


async def test_credentials_from_files_are_registered_with_the_redactor(tmp_path: Path) -> None:
    directory = mount(tmp_path / "creds", apiKey=f"{API_KEY}\n", secret=f"{SECRET}\n")
    kube = kube_with_bot("live", credentialsSecretRef={"name": "keys"})
    handed: list[Credentials | None] = []

    def no_exchange(config: Any) -> Any:
        # Stops the start-up where the exchange would be built, before any network access.
        handed.append(runtime.credentials)
        raise ConfigError("no exchange in this test")

    runtime = BotRuntime(
        runtime_settings(directory),
        api=KubeApi(kube),
        store=MemoryStateStore(),
        exchange_factory=no_exchange,
    )
    assert await asyncio.wait_for(runtime.run(), 30) == EXIT_CONFIG
    assert handed == [Credentials(api_key=API_KEY, secret=SECRET)]
    assert REDACTOR.redact(f"key={API_KEY} secret={SECRET}") == "key=*** secret=***"
    assert not [c for c in kube.calls if "/secrets" in c.path]


async def test_paper_mode_reads_no_credentials(tmp_path: Path) -> None:
    kube = kube_with_bot("paper")
    runtime = BotRuntime(
        runtime_settings(tmp_path / "absent"), api=KubeApi(kube), store=MemoryStateStore()
    )
    task = asyncio.create_task(runtime.run())
    deadline = asyncio.get_running_loop().time() + 20
    while not runtime.health.ready:
        assert asyncio.get_running_loop().time() < deadline, "paper bot never became ready"
        await asyncio.sleep(0.01)
    runtime.request_stop()
    assert await asyncio.wait_for(task, 10) == 0
    assert runtime.credentials is None
