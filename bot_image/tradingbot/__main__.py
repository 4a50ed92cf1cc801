"""`python -m tradingbot`: run the bot named by BOT_NAME in POD_NAMESPACE (SPEC §11)."""

from __future__ import annotations

import asyncio
import logging
import sys

from tradingbot.config import ConfigError, Settings
from tradingbot.kube import default_namespace
from tradingbot.logsetup import configure_logging
from tradingbot.runtime import EXIT_CONFIG, BotRuntime


def main() -> int:
    try:
        settings = Settings.from_env(default_namespace=default_namespace())
    except ConfigError as exc:
        configure_logging()
        logging.getLogger("tradingbot").error(str(exc))
        return EXIT_CONFIG
    configure_logging(
        settings.log_level, static={"bot": settings.bot_name, "pod": settings.pod_name}
    )
    try:
        return asyncio.run(BotRuntime(settings).run())
    except Exception:
        logging.getLogger("tradingbot").exception("bot crashed")
        return 1


if __name__ == "__main__":
    sys.exit(main())
