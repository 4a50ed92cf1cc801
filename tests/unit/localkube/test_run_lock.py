"""`make run` holds its data dir: a second run on it refuses with one clear line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from localkube.run import AlreadyRunning, hold_data_dir


def test_a_second_run_on_the_same_data_dir_is_refused_naming_the_first(tmp_path: Path) -> None:
    held = hold_data_dir(tmp_path)
    try:
        # Another process, as a second `make run` would be.
        second = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from pathlib import Path; from localkube.run import hold_data_dir;"
                f"hold_data_dir(Path({str(tmp_path)!r}))",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert second.returncode != 0
        assert "in use by a running `make run` (pid" in second.stderr
    finally:
        held.close()
    hold_data_dir(tmp_path).close()  # free again once the first run ended


def test_the_refusal_is_an_exception_the_entry_point_turns_into_one_line(tmp_path: Path) -> None:
    held = hold_data_dir(tmp_path)
    try:
        with pytest.raises(AlreadyRunning, match="use another --data-dir"):
            # flock locks are per open file description: a second open conflicts too.
            hold_data_dir(tmp_path)
    finally:
        held.close()
