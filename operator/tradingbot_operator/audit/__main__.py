"""`python -m tradingbot_operator.audit`: the same CLI as `python -m tradingbot_audit`."""

import sys

from tradingbot_audit.__main__ import run

sys.exit(run())
