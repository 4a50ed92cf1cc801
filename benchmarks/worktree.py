"""An earlier commit checked out beside this one, for benchmarks that compare the two in one
run: a temporary git worktree with its own virtualenv (`uv sync --frozen --offline`, so the
processes it starts, pods included, run its own code)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from localkube import binaries

RUN_TIMEOUT_SECONDS = 3600


def head_rev() -> str:
    return subprocess.run(
        ["git", "-C", str(binaries.REPO_ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def _uv() -> str:
    found = shutil.which("uv") or str(Path.home() / ".local/bin/uv")
    if not Path(found).exists():
        raise RuntimeError("uv not found (make setup installs it)")
    return found


@contextlib.contextmanager
def checkout(rev: str, label: str) -> Iterator[tuple[Path, str]]:
    """(tree, its python) for `rev`; removed afterwards."""
    repo = binaries.REPO_ROOT
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "base"
        subprocess.run(
            ["git", "-C", str(repo), "worktree", "add", "--detach", "--quiet", str(tree), rev],
            check=True,
        )
        try:
            print(f"[bench] {label}: virtualenv for {rev}", file=sys.stderr, flush=True)
            subprocess.run(
                [_uv(), "sync", "--frozen", "--offline", "--quiet", "--python", sys.executable],
                cwd=tree,
                check=True,
                env={k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"},
            )
            yield tree, str(tree / ".venv/bin/python")
        finally:
            subprocess.run(
                ["git", "-C", str(repo), "worktree", "remove", "--force", str(tree)], check=False
            )


def run_in(tree: Path, python: str, code: str, label: str) -> str:
    """What `code` prints, run by `python` in `tree` (its own packages, not ours)."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    out = subprocess.run(
        [python, "-c", code],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_SECONDS,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{label} in {tree} failed:\n{out.stderr[-3000:]}")
    return out.stdout
