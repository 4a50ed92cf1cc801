"""Names the bot relies on (SPEC §11). The API's names and keys come from tradingbot_api (the
aliases keep the names this package has always used); only the bot's own are defined here.
"""

from __future__ import annotations

from tradingbot_api.constants import (
    API_GROUP,
    LABEL_BOT,
    STATE_KEY,
    STATE_PREV_KEY,
    ExchangeMode,
    Profile,
    lease_name,
    state_configmap_name,
)
from tradingbot_api.constants import KIND as TRADINGBOT_KIND
from tradingbot_api.constants import PLURAL as TRADINGBOT_PLURAL
from tradingbot_api.constants import VERSION as API_VERSION

__all__ = [
    "API_GROUP",
    "API_VERSION",
    "LABEL_BOT",
    "STATE_KEY",
    "STATE_PREV_KEY",
    "TRADINGBOT_KIND",
    "TRADINGBOT_PLURAL",
    "lease_name",
    "state_configmap_name",
]

STATE_SCHEMA_VERSION = 1

# A ConfigMap holds at most 1 MiB; both copies of the state (current and previous) live in it,
# so each document gets half of a guard that leaves room for metadata.
CONFIGMAP_SIZE_GUARD_BYTES = 900 * 1024
CONFIGMAP_DOCUMENT_BUDGET_BYTES = CONFIGMAP_SIZE_GUARD_BYTES // 2

# Checkpoint reasons as written into the state's `reason` field. `order` records a live order
# intent before it is sent, so a crash between submit and fill can be reconciled on restore;
# `halt` is written when the bot starts obeying a kill switch or a suspension.
REASON_FILL = "fill"
REASON_PERIODIC = "periodic"
REASON_SHUTDOWN = "shutdown"
REASON_RESTORE = "restore"
REASON_ORDER = "order"
REASON_HALT = "halt"
CHECKPOINT_REASONS = (
    REASON_FILL,
    REASON_PERIODIC,
    REASON_SHUTDOWN,
    REASON_RESTORE,
    REASON_ORDER,
    REASON_HALT,
)

PROFILES = tuple(p.value for p in Profile)
EXCHANGE_MODES = tuple(m.value for m in ExchangeMode)

EVENT_COMPONENT = "tradingbot"
