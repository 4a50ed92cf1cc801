"""Names other components rely on (SPEC §11). Change them only together with the operator."""

from __future__ import annotations

API_GROUP = "trading.r7.dev"
API_VERSION = "v1alpha1"
TRADINGBOT_PLURAL = "tradingbots"
TRADINGBOT_KIND = "TradingBot"

LABEL_BOT = f"{API_GROUP}/bot"

STATE_KEY = "state.json"
STATE_PREV_KEY = "state.prev.json"
STATE_SCHEMA_VERSION = 1

# A ConfigMap holds at most 1 MiB; both copies of the state (current and previous) live in it,
# so each document gets half of a guard that leaves room for metadata.
CONFIGMAP_SIZE_GUARD_BYTES = 900 * 1024
CONFIGMAP_DOCUMENT_BUDGET_BYTES = CONFIGMAP_SIZE_GUARD_BYTES // 2

# Checkpoint reasons as written into the state's `reason` field. `order` records a live order
# intent before it is sent, so a crash between submit and fill can be reconciled on restore.
REASON_FILL = "fill"
REASON_PERIODIC = "periodic"
REASON_SHUTDOWN = "shutdown"
REASON_RESTORE = "restore"
REASON_ORDER = "order"
CHECKPOINT_REASONS = (REASON_FILL, REASON_PERIODIC, REASON_SHUTDOWN, REASON_RESTORE, REASON_ORDER)

PROFILES = ("stable", "medium", "volatile", "meme")
EXCHANGE_MODES = ("paper", "sandbox", "live")

EVENT_COMPONENT = "tradingbot"


def state_configmap_name(bot: str) -> str:
    return f"{bot}-state"


def lease_name(bot: str) -> str:
    return f"{bot}-trader"
