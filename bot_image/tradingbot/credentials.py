"""Exchange credentials from the files of the Secret volume the pod mounts.

The kubelet projects the Secret's keys `apiKey` and `secret` as files into CREDENTIALS_DIR,
so neither the bot's ServiceAccount nor the operator needs `get` on Secrets. The values are
never part of an error message, a repr or a log line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tradingbot.config import ConfigError

API_KEY_FILE = "apiKey"
SECRET_FILE = "secret"
# Exchange keys are well under 1 KiB; the bound keeps a wrong mount (a log, a device) from
# being read into memory.
MAX_CREDENTIAL_BYTES = 4096


@dataclass(frozen=True)
class Credentials:
    api_key: str
    secret: str

    def __repr__(self) -> str:  # never print the values, even in a traceback's locals
        return "Credentials(api_key='***', secret='***')"


def _read_value(path: Path) -> str:
    """One credential file's text without trailing whitespace; ConfigError naming the file."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_CREDENTIAL_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{path}: missing") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a file") from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"{path}: cannot be read ({reason})") from None
    if len(raw) > MAX_CREDENTIAL_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CREDENTIAL_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        # `from None`: the decode error quotes the offending byte.
        raise ConfigError(f"{path}: not UTF-8 text") from None
    value = text.rstrip()
    if not value:
        raise ConfigError(f"{path}: empty")
    return value


def read_credentials(directory: Path, mode: str) -> Credentials:
    """The API key and secret from `directory`; ConfigError naming every unusable file."""
    values: dict[str, str] = {}
    errors: list[str] = []
    for name in (API_KEY_FILE, SECRET_FILE):
        try:
            values[name] = _read_value(directory / name)
        except ConfigError as exc:
            errors.append(str(exc))
    if errors:
        raise ConfigError(
            f"CREDENTIALS_DIR: {mode} mode needs the exchange credentials as files "
            f"{API_KEY_FILE} and {SECRET_FILE} (the mounted credentials Secret): "
            + "; ".join(errors)
        )
    return Credentials(api_key=values[API_KEY_FILE], secret=values[SECRET_FILE])
