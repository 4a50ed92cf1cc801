"""`python -m tradingbot_operator`: run the operator against the current kubeconfig."""

from __future__ import annotations

import argparse
import asyncio
import sys

import kopf

from tradingbot_operator import handlers, webhook  # noqa: F401  (registers kopf handlers)
from tradingbot_operator.logging_setup import configure_logging
from tradingbot_operator.settings import OperatorSettings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tradingbot_operator", description=__doc__)
    parser.add_argument("--namespace", help="watch only this namespace (default: all)")
    parser.add_argument("--metrics-port", type=int, help="port for /metrics (0 disables)")
    parser.add_argument(
        "--max-concurrent-restarts",
        type=int,
        help="bots restarting at once, operator-wide (0 = unlimited)",
    )
    parser.add_argument(
        "--ready-timeout",
        type=float,
        dest="ready_timeout_seconds",
        help="seconds a new bot pod may take to become ready",
    )
    parser.add_argument(
        "--bot-env",
        action="append",
        metavar="KEY=VALUE",
        help="extra environment for every bot container (repeatable)",
    )
    parser.add_argument(
        "--shard", metavar="I/N", help="handle shard I of N (a hash of namespace/name)"
    )
    parser.add_argument(
        "--leader-election",
        action="store_true",
        default=None,
        help="act only while holding the shard's leader Lease (for several replicas)",
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    settings = OperatorSettings.from_env(
        namespace=args.namespace,
        metrics_port=args.metrics_port,
        max_concurrent_restarts=args.max_concurrent_restarts,
        ready_timeout_seconds=args.ready_timeout_seconds,
        bot_env=tuple(args.bot_env) if args.bot_env else None,
        shard=args.shard,
        leader_election=args.leader_election,
    )
    if settings.webhook_listen:
        if not (settings.webhook_cert_file and settings.webhook_key_file):
            parser.error("the webhook needs TRADINGBOT_OPERATOR_WEBHOOK_CERT_FILE and _KEY_FILE")
        webhook.register(settings.operator_user)
    namespaces = [settings.namespace] if settings.namespace else []
    asyncio.run(
        kopf.operator(
            clusterwide=not namespaces,
            namespaces=namespaces,
            standalone=True,
            memo=kopf.Memo(settings=settings),
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
