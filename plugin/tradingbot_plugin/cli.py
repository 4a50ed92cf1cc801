"""`kubectl tradingbot`: the kubectl plugin for TradingBots (SPEC §9): its arguments and
`main`, which runs one command and returns its exit code.

Commands::

    status [BOT] [-w] [-A] [-l SELECTOR] [-o table|json|yaml]
    restart BOT|--all|-l SELECTOR [-A] --reason TEXT
    stop BOT [--reason TEXT]            spec.suspend=true (graceful, positions kept)
    resume BOT [--reason TEXT]          spec.suspend=false
    halt BOT|--all|-l SELECTOR [-A] [--reason TEXT]
                                        kill switch: annotation trading.r7.dev/halt="true"
    unhalt BOT [--reason TEXT]          removes the kill switch annotation
    positions BOT [-o table|json]       status + the state ConfigMap <bot>-state
    audit [filters] [--limit N] [-o table|json]
    audit summary [filters] [-o table|json]
    audit export FILE [filters]         JSON array in chain order ("-" for stdout)
    audit verify [--head-configmap NS/NAME] [-o table|json]

Global options (before or after the command): --kubeconfig FILE, --context NAME,
-n/--namespace NS (default: the context's namespace, else "default").
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, Final, TextIO

from tradingbot_api.constants import (
    ANNOTATION_HALT,
    ANNOTATION_RESTARTED_AT,
    ANNOTATION_SUSPEND,
    HaltMode,
)
from tradingbot_api.times import utc_now
from tradingbot_plugin.audit import AUDIT_URL_ENV, DEFAULT_AUDIT_LIMIT, cmd_audit
from tradingbot_plugin.commands import (
    Context,
    cmd_halt,
    cmd_positions,
    cmd_restart,
    cmd_resume,
    cmd_status,
    cmd_stop,
    cmd_unhalt,
)
from tradingbot_plugin.core import PROG, Clock, ExitCode, PluginError

# The chart's fleet switch for release `tb` in `tradingbot-system` (make deploy's defaults).
DEFAULT_FLEET_SWITCH: Final = "tradingbot-system/tb-tradingbot-operator-fleet-switch"

EXIT_CODES_HELP: Final = """\
exit codes: 0 success, 1 failure, 2 usage error, 3 not allowed (RBAC or credentials),
            4 tradingbot not found, 130 interrupted"""

COMMANDS: Final[dict[str, Callable[[Context], int]]] = {
    "status": cmd_status,
    "restart": cmd_restart,
    "stop": cmd_stop,
    "resume": cmd_resume,
    "halt": cmd_halt,
    "unhalt": cmd_unhalt,
    "positions": cmd_positions,
    "audit": cmd_audit,
}


def _kept(group: Any, *flags: str, **options: Any) -> None:
    # SUPPRESS keeps an option given before the command from being reset by the command's
    # own copy (argparse copies every default of a subparser over the parent's values).
    group.add_argument(*flags, default=argparse.SUPPRESS, **options)


def _global_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("global options")
    _kept(
        group,
        "--kubeconfig",
        metavar="FILE",
        help="kubeconfig file (default: $KUBECONFIG, else ~/.kube/config)",
    )
    _kept(group, "--context", metavar="NAME", help="kubeconfig context (default: the current one)")
    _kept(
        group,
        "-n",
        "--namespace",
        metavar="NS",
        help="namespace (default: the context's, else default)",
    )
    return common


def _audit_options(parser: argparse.ArgumentParser, *, filters: bool) -> None:
    source = parser.add_argument_group("audit source")
    _kept(
        source, "--audit-url", metavar="URL", help=f"audit API base URL (default: ${AUDIT_URL_ENV})"
    )
    _kept(source, "--audit-ca", metavar="FILE", help="CA bundle for an https audit URL")
    _kept(
        source,
        "--log-dir",
        metavar="DIR",
        help="read a local audit log directory instead of the API",
    )
    if not filters:
        return
    group = parser.add_argument_group("filters (-n NS filters by namespace)")
    types = "event type: config_change, restart, stop, halt, trade, ..."
    _kept(group, "--type", dest="event_type", metavar="T", help=types)
    _kept(group, "--severity", choices=("info", "warning", "critical"))
    _kept(group, "--source", metavar="S", help="kubectl, gitops, plugin, operator, bot, webhook")
    _kept(group, "--bot", dest="audit_bot", metavar="B", help="target bot (or symbol)")
    _kept(group, "--user", metavar="U", help="the Kubernetes user who made the change")
    since = "inclusive lower bound: ISO 8601 (UTC if no offset) or 30m, 24h, 7d"
    _kept(group, "--since", metavar="TIME", help=since)
    _kept(group, "--until", metavar="TIME", help="exclusive upper bound, same forms")


def _selection(parser: argparse.ArgumentParser, verb: str) -> None:
    parser.add_argument("bot", nargs="?", metavar="BOT", help=f"the tradingbot to {verb}")
    parser.add_argument(
        "--all", action="store_true", help=f"{verb} every tradingbot in the namespace"
    )
    parser.add_argument(
        "-l",
        "--selector",
        metavar="SELECTOR",
        help=f"{verb} the tradingbots matching this label selector",
    )
    parser.add_argument(
        "-A", "--all-namespaces", action="store_true", help="with --all or -l: in every namespace"
    )


def _fleet_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--fleet",
        action="store_true",
        help="the fleet-wide kill switch (a ConfigMap every bot watches) instead of one bot",
    )
    parser.add_argument(
        "--fleet-switch",
        metavar="NAMESPACE/NAME",
        default=os.environ.get("TRADINGBOT_FLEET_SWITCH", DEFAULT_FLEET_SWITCH),
        help=f"the fleet switch ConfigMap (default: $TRADINGBOT_FLEET_SWITCH or "
        f"{DEFAULT_FLEET_SWITCH})",
    )


def build_parser() -> argparse.ArgumentParser:
    common = _global_options()
    parser = argparse.ArgumentParser(
        prog=PROG,
        parents=[common],
        description="Operate TradingBots (trading.r7.dev/v1alpha1): status, graceful restarts, "
        "stop/resume, the halt kill switch, positions and the audit log.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            parents=[common],
            help=text,
            description=text,
            epilog=EXIT_CODES_HELP,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    status = command("status", "show tradingbots: phase, readiness, positions, PnL, pending action")
    status.add_argument("bot", nargs="?", metavar="BOT", help="one tradingbot (default: all)")
    status.add_argument(
        "-A",
        "--all-namespaces",
        action="store_true",
        help="every namespace (adds a NAMESPACE column)",
    )
    status.add_argument("-l", "--selector", metavar="SELECTOR", help="label selector")
    status.add_argument(
        "-w", "--watch", action="store_true", help="redraw on every change until Ctrl-C"
    )
    status.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table")

    restart = command(
        "restart",
        "request a graceful restart (annotation "
        f"{ANNOTATION_RESTARTED_AT}, coalesced and rate limited)",
    )
    _selection(restart, "restart")
    restart.add_argument(
        "--reason", required=True, metavar="TEXT", help="why: recorded in the audit log (required)"
    )

    stop = command("stop", f"stop gracefully (annotation {ANNOTATION_SUSPEND}); positions are kept")
    stop.add_argument("bot", metavar="BOT")
    stop.add_argument("--reason", metavar="TEXT", help="why: recorded in the audit log")

    resume = command("resume", "start a bot stopped with `stop` again")
    resume.add_argument("bot", metavar="BOT")
    resume.add_argument("--reason", metavar="TEXT", help="why: recorded in the audit log")

    halt = command(
        "halt",
        f"kill switch ({ANNOTATION_HALT}), no coalescing or rate limit; obeyed by the bots "
        "themselves even with the operator down; undo with unhalt",
    )
    _selection(halt, "halt")
    halt.add_argument(
        "--mode",
        choices=[str(m) for m in HaltMode],
        default=str(HaltMode.TRUE),
        help="true: stop now, keep positions; drain: no new entries, stop once flat; "
        "flatten: close every position at market, then stop (default: true)",
    )
    _fleet_options(halt)
    halt.add_argument("--reason", metavar="TEXT", help="why: recorded in the audit log")
    halt.add_argument(
        "-y", "--yes", action="store_true", help="with --all, -l or --fleet: do not ask first"
    )

    unhalt = command(
        "unhalt", f"remove the kill switch ({ANNOTATION_HALT}) so the bot may trade again"
    )
    unhalt.add_argument("bot", nargs="?", metavar="BOT")
    _fleet_options(unhalt)
    unhalt.add_argument("--reason", metavar="TEXT", help="why: recorded in the audit log")

    positions = command("positions", "open positions, balances and PnL of one bot")
    positions.add_argument("bot", metavar="BOT")
    positions.add_argument("-o", "--output", choices=("table", "json"), default="table")

    audit = command(
        "audit", "query the audit log (most recent first); subcommands: summary, export, verify"
    )
    _audit_options(audit, filters=True)
    audit.add_argument(
        "--limit",
        type=int,
        default=DEFAULT_AUDIT_LIMIT,
        help=f"at most N events (default {DEFAULT_AUDIT_LIMIT}; 0 for all)",
    )
    audit.add_argument("-o", "--output", choices=("table", "json"), default="table")
    audit_commands = audit.add_subparsers(dest="audit_command", metavar="SUBCOMMAND")
    audit_summary = audit_commands.add_parser(
        "summary", parents=[common], help="counts by type, severity, source and bot"
    )
    _audit_options(audit_summary, filters=True)
    audit_summary.add_argument(
        "-o", "--output", choices=("table", "json"), default=argparse.SUPPRESS
    )
    audit_export = audit_commands.add_parser(
        "export", parents=[common], help="matching events as one JSON array in chain order"
    )
    audit_export.add_argument("file", metavar="FILE", help="output file, or - for stdout")
    _audit_options(audit_export, filters=True)
    audit_verify = audit_commands.add_parser(
        "verify", parents=[common], help="check the hash chain; exit 1 if it is broken"
    )
    _audit_options(audit_verify, filters=False)
    audit_verify.add_argument(
        "--head-configmap",
        metavar="NAMESPACE/NAME",
        default=argparse.SUPPRESS,
        help="also check the log against the chain head the audit sidecar records in this "
        "ConfigMap (catches lines deleted from the end); needs get on it",
    )
    audit_verify.add_argument(
        "-o", "--output", choices=("table", "json"), default=argparse.SUPPRESS
    )
    return parser


def main(
    argv: Sequence[str] | None = None,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    clock: Clock = utc_now,
) -> int:
    """Run one command; returns the exit code (the console script exits with it)."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        # argparse exits 2 on bad usage and 0 after --help.
        return int(exc.code) if isinstance(exc.code, int) else ExitCode.USAGE
    ctx = Context(args, out, err, clock)
    try:
        return COMMANDS[args.command](ctx)
    except PluginError as exc:
        err.write(f"error: {exc.message}\n")
        return exc.code
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`| head`): not an error worth a traceback. Point stdout at
        # /dev/null so the interpreter's final flush does not fail again.
        if out is sys.stdout:
            with contextlib.suppress(OSError, ValueError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
        return ExitCode.OK
    finally:
        ctx.close()
