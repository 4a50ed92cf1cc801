"""Entry point: `python -m tradingbot_audit --log-dir DIR COMMAND`."""

from __future__ import annotations

import os
import sys

from .cli import main


def run() -> int:
    try:
        return main()
    except BrokenPipeError:
        # Output piped into `head` and the like: stop quietly, and point stdout at /dev/null
        # so the interpreter's final flush does not complain a second time.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(run())
