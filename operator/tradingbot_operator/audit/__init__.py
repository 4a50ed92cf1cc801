"""The audit log's former home, kept because other tools rely on its names (SPEC §11):
`python -m tradingbot_operator.audit` and `tradingbot_operator.audit.open_writer`. The audit
library, CLI and sidecar live in the package `tradingbot_audit`."""

from tradingbot_audit import *  # noqa: F403 - the same public names
from tradingbot_audit import __all__ as __all__
from tradingbot_audit import open_writer as open_writer
