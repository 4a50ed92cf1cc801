"""The console script's entry point (`kubectl-tradingbot = tradingbot_plugin.plugin:main`),
and the plugin's public names for the programs and tests that import them from here.

The code lives in the modules of this package: `cli` (arguments and `main`), `commands`,
`audit`, `watch`, `kube`, `format`, `patches` and `core`.
"""

from __future__ import annotations

from tradingbot_plugin.audit import AuditQuery, HttpAuditSource, LocalAuditSource
from tradingbot_plugin.cli import build_parser, main
from tradingbot_plugin.core import PluginError, user_agent
from tradingbot_plugin.format import format_age, pending_text, status_table
from tradingbot_plugin.kube import FIELD_MANAGER
from tradingbot_plugin.patches import halt_patch, restart_patch, suspend_patch, unhalt_patch
from tradingbot_plugin.watch import watch_status

__all__ = [
    "FIELD_MANAGER",
    "AuditQuery",
    "HttpAuditSource",
    "LocalAuditSource",
    "PluginError",
    "build_parser",
    "format_age",
    "halt_patch",
    "main",
    "pending_text",
    "restart_patch",
    "status_table",
    "suspend_patch",
    "unhalt_patch",
    "user_agent",
    "watch_status",
]
