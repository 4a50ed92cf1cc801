"""Entry point: `python -m tradingbot_operator.audit --log-dir DIR COMMAND`."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
