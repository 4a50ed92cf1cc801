"""The commands that read and change TradingBots: status, restart, stop, resume, halt,
unhalt (one bot, several, or the fleet-wide switch) and positions, with the `Context` every
command runs in.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, TextIO

from tradingbot_api.constants import (
    ANNOTATION_RESTARTED_AT,
    ANNOTATION_SUSPEND,
    API_GROUP,
    STATE_KEY,
    HaltMode,
    StateBackend,
    state_configmap_name,
)
from tradingbot_plugin.core import PROG, Clock, ExitCode, PluginError, _mapping
from tradingbot_plugin.format import (
    _no_bots_message,
    _render_status,
    _sort_key,
    as_list,
    dump,
    render_positions,
    state_positions,
    strip_server_fields,
)
from tradingbot_plugin.kube import (
    Kube,
    KubeConfigChoice,
    bearer_token,
    load_configuration,
    new_api_client,
)
from tradingbot_plugin.patches import (
    fleet_switch_patch,
    halt_mode,
    halt_patch,
    is_halted,
    is_suspended,
    restart_patch,
    restart_stamp,
    suspend_patch,
    suspended_by_annotation,
    suspended_by_spec,
    unhalt_patch,
    validate_reason,
)
from tradingbot_plugin.watch import watch_status


@dataclasses.dataclass
class Context:
    """What a command needs: parsed arguments, streams, a clock and lazy API access."""

    args: argparse.Namespace
    out: TextIO
    err: TextIO
    clock: Clock
    _kube: Kube | None = None
    _namespace: str | None = None
    _configuration: Any = None

    def _load(self) -> None:
        if self._configuration is None:
            choice = KubeConfigChoice(
                getattr(self.args, "kubeconfig", None), getattr(self.args, "context", None)
            )
            self._configuration, self._namespace = load_configuration(choice)

    @property
    def kube(self) -> Kube:
        if self._kube is None:
            self._load()
            self._kube = Kube(new_api_client(self._configuration))
        return self._kube

    @property
    def namespace(self) -> str:
        """-n if given, else the kubeconfig context's namespace, else "default"."""
        explicit = getattr(self.args, "namespace", None)
        if explicit:
            return str(explicit)
        self._load()
        return self._namespace or "default"

    @property
    def list_namespace(self) -> str | None:
        """The namespace to list in, None for all (-A)."""
        return None if getattr(self.args, "all_namespaces", False) else self.namespace

    def token(self) -> str | None:
        self._load()
        return bearer_token(self._configuration)

    def close(self) -> None:
        if self._kube is not None:
            with contextlib.suppress(Exception):
                self._kube.api.close()


def _targets(ctx: Context, verb: str) -> list[dict[str, Any]]:
    """The bots a command acts on: BOT, --all or -l SELECTOR (in -n or, with -A, everywhere)."""
    args = ctx.args
    bot = getattr(args, "bot", None)
    every = getattr(args, "all", False)
    selector = getattr(args, "selector", None)
    chosen = sum(1 for x in (bot, every, selector) if x)
    if chosen != 1:
        raise PluginError(f"{verb}: name one BOT, or use --all or -l SELECTOR", ExitCode.USAGE)
    if getattr(args, "all_namespaces", False) and bot:
        raise PluginError(f"{verb}: -A goes with --all or -l, not with a BOT name", ExitCode.USAGE)
    if bot:
        return [ctx.kube.get_bot(ctx.namespace, bot)]
    namespace = ctx.list_namespace
    items = list(ctx.kube.list_bots(namespace, selector).get("items") or [])
    if not items:
        what = f"matching {selector} " if selector else ""
        raise PluginError(
            f"no tradingbots {what}found "
            + (f"in namespace {namespace}" if namespace else "in any namespace")
        )
    return sorted(items, key=_sort_key)


def _label(bot: Mapping[str, Any], with_namespace: bool) -> str:
    meta = _mapping(bot.get("metadata"))
    text = f"tradingbot.{API_GROUP}/{meta.get('name')}"
    return f"{text} (namespace {meta.get('namespace')})" if with_namespace else text


# Most telling last: a forbidden patch explains more than a vanished bot.
_EXIT_RANK: Final = (ExitCode.OK, ExitCode.FAILED, ExitCode.NOT_FOUND, ExitCode.FORBIDDEN)


def _exit_rank(code: int) -> int:
    return _EXIT_RANK.index(code) if code in _EXIT_RANK else 1


def _apply_each(
    ctx: Context,
    bots: Sequence[Mapping[str, Any]],
    plan: Callable[[Mapping[str, Any]], tuple[dict[str, Any] | None, str]],
) -> int:
    """Patch every bot with its planned body (None: nothing to do), one line each.

    Keeps going after a failure so one forbidden namespace does not hide the rest; the exit
    code is the most telling failure (not allowed > not found > other).
    """
    with_namespace = bool(getattr(ctx.args, "all_namespaces", False))
    worst: int = ExitCode.OK
    for bot in bots:
        meta = _mapping(bot.get("metadata"))
        body, message = plan(bot)
        try:
            if body is not None:
                ctx.kube.patch_bot(str(meta.get("namespace")), str(meta.get("name")), body)
        except PluginError as exc:
            ctx.err.write(f"error: {exc.message}\n")
            worst = max(worst, exc.code, key=_exit_rank)
            continue
        ctx.out.write(f"{_label(bot, with_namespace)} {message}\n")
    return worst


def cmd_status(ctx: Context) -> int:
    args = ctx.args
    if args.bot and (args.all_namespaces or args.selector):
        raise PluginError("status: a BOT name goes without -A and -l", ExitCode.USAGE)
    if args.watch:
        stop = threading.Event()
        namespace = ctx.list_namespace
        try:
            return watch_status(
                ctx.kube,
                namespace,
                args.bot,
                args.selector,
                ctx.out,
                ctx.err,
                stop,
                output=args.output,
                interactive=ctx.out.isatty(),
                clock=ctx.clock,
                feed=lambda: ctx.kube.list_events(namespace),
            )
        except KeyboardInterrupt:
            stop.set()
            return ExitCode.OK
    if args.bot:
        bot = ctx.kube.get_bot(ctx.namespace, args.bot)
        if args.output != "table":
            ctx.out.write(dump(strip_server_fields(bot), args.output))
            return ExitCode.OK
        bots = [bot]
    else:
        namespace = ctx.list_namespace
        bots = list(ctx.kube.list_bots(namespace, args.selector).get("items") or [])
        if args.output != "table":
            ctx.out.write(dump(as_list(bots), args.output))
            return ExitCode.OK
        if not bots:
            ctx.err.write(_no_bots_message(namespace) + "\n")
            return ExitCode.OK
    ctx.out.write(
        _render_status(bots, ctx.clock(), with_namespace=ctx.list_namespace is None) + "\n"
    )
    return ExitCode.OK


def cmd_restart(ctx: Context) -> int:
    reason = validate_reason(ctx.args.reason, required=True)
    assert reason is not None
    bots = _targets(ctx, "restart")
    now = ctx.clock()

    def plan(bot: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str]:
        previous = _mapping(_mapping(bot.get("metadata")).get("annotations")).get(
            ANNOTATION_RESTARTED_AT
        )
        body = restart_patch(restart_stamp(now, previous), reason)
        note = ""
        if is_halted(bot):
            note = " (note: halted; it stays stopped until unhalt)"
        elif is_suspended(bot):
            note = " (note: stopped; the new config applies on resume)"
        return body, f"restart requested{note}"

    return _apply_each(ctx, bots, plan)


def cmd_stop(ctx: Context) -> int:
    reason = validate_reason(ctx.args.reason, required=False)
    bot = ctx.kube.get_bot(ctx.namespace, ctx.args.bot)
    if suspended_by_annotation(bot):
        return _apply_each(ctx, [bot], lambda _b: (None, "already stopped"))
    return _apply_each(
        ctx,
        [bot],
        lambda _b: (suspend_patch(True, reason), f"stop requested ({ANNOTATION_SUSPEND})"),
    )


def cmd_resume(ctx: Context) -> int:
    reason = validate_reason(ctx.args.reason, required=False)
    bot = ctx.kube.get_bot(ctx.namespace, ctx.args.bot)
    name = ctx.args.bot
    note = (
        f"; note: the kill switch is still set, `{PROG} unhalt {name}` lets it trade"
        if is_halted(bot)
        else ""
    )
    if suspended_by_spec(bot):
        note += (
            "; note: spec.suspend is true (the declarative stop, e.g. from Git): change it there"
        )
    if not suspended_by_annotation(bot):
        return _apply_each(
            ctx, [bot], lambda _b: (None, f"not stopped by {PROG}; nothing to resume{note}")
        )
    return _apply_each(
        ctx,
        [bot],
        lambda _b: (suspend_patch(False, reason), f"resume requested{note}"),
    )


def _confirm(ctx: Context, question: str) -> None:
    """Ask before acting on many bots at once, unless --yes; refuse when nobody can answer."""
    if getattr(ctx.args, "yes", False):
        return
    if not sys.stdin.isatty():
        raise PluginError(f"{question}: add --yes to confirm (no terminal to ask)", ExitCode.USAGE)
    answer = input(f"{question} [y/N] ").strip().lower()
    if answer not in ("y", "yes"):
        raise PluginError("cancelled; nothing was changed", ExitCode.USAGE)


def cmd_halt(ctx: Context) -> int:
    reason = validate_reason(ctx.args.reason, required=False)
    mode = HaltMode(ctx.args.mode)
    if getattr(ctx.args, "fleet", False):
        return _set_fleet_switch(ctx, mode, reason)
    bots = _targets(ctx, "halt")
    if getattr(ctx.args, "all", False) or getattr(ctx.args, "selector", None):
        _confirm(ctx, f"halt ({mode}) {len(bots)} tradingbots")

    shown = "" if mode == HaltMode.TRUE else f": {mode}"

    def plan(bot: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str]:
        if halt_mode(bot) == mode:
            return None, f"already halted{shown}"
        return halt_patch(reason, mode), f"halt requested (kill switch set{shown})"

    return _apply_each(ctx, bots, plan)


def cmd_unhalt(ctx: Context) -> int:
    reason = validate_reason(ctx.args.reason, required=False)
    if getattr(ctx.args, "fleet", False):
        return _set_fleet_switch(ctx, None, reason)
    bot = ctx.kube.get_bot(ctx.namespace, ctx.args.bot)
    if not is_halted(bot):
        return _apply_each(ctx, [bot], lambda _b: (None, "not halted; nothing to do"))
    return _apply_each(ctx, [bot], lambda _b: (unhalt_patch(reason), "kill switch removed"))


def _set_fleet_switch(ctx: Context, mode: HaltMode | None, reason: str | None) -> int:
    namespace, _, name = str(ctx.args.fleet_switch).partition("/")
    if mode is not None:
        _confirm(ctx, f"halt ({mode}) every tradingbot that obeys {namespace}/{name}")
    ctx.kube.patch_configmap(namespace, name, fleet_switch_patch(mode), create=mode is not None)
    what = f"fleet-wide kill switch set ({mode})" if mode else "fleet-wide kill switch removed"
    ctx.out.write(
        f"configmap {namespace}/{name}: {what}" + (f" ({reason})" if reason else "") + "\n"
    )
    return ExitCode.OK


def load_state(kube: Kube, bot: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """The bot's state document from its ConfigMap, or None and a note saying why not."""
    meta = _mapping(bot.get("metadata"))
    namespace, name = str(meta.get("namespace")), str(meta.get("name"))
    configmap = state_configmap_name(name)
    backend = _mapping(_mapping(bot.get("spec")).get("state")).get("backend")
    if backend == StateBackend.PVC:
        return None, (
            f"the state is on the PersistentVolumeClaim {configmap}, which the plugin "
            "cannot read; showing the status only"
        )
    try:
        data = kube.read_state(namespace, name)
    except PluginError as exc:
        if exc.code == ExitCode.FORBIDDEN:
            return None, (
                f"not allowed to read configmap {configmap} in namespace "
                f"{namespace}; showing the status only"
            )
        if exc.code == ExitCode.NOT_FOUND:
            return None, (
                f"no state ConfigMap {configmap} yet (the bot has not saved state); "
                "showing the status only"
            )
        return None, f"cannot read configmap {configmap}: {exc.message}"
    text = data.get(STATE_KEY)
    if not text:
        return None, f"configmap {configmap} has no {STATE_KEY}; showing the status only"
    try:
        state = json.loads(text)
    except ValueError as exc:
        return None, f"{STATE_KEY} in configmap {configmap} is not valid JSON ({exc})"
    if not isinstance(state, dict):
        return None, f"{STATE_KEY} in configmap {configmap} is not a JSON object"
    return state, None


def cmd_positions(ctx: Context) -> int:
    bot = ctx.kube.get_bot(ctx.namespace, ctx.args.bot)
    state, note = load_state(ctx.kube, bot)
    if ctx.args.output == "json":
        status = _mapping(bot.get("status"))
        document = {
            "name": _mapping(bot.get("metadata")).get("name"),
            "namespace": _mapping(bot.get("metadata")).get("namespace"),
            "phase": status.get("phase"),
            "halted": is_halted(bot),
            "suspended": is_suspended(bot),
            "status": {key: status.get(key) for key in ("positions", "pnl", "trades", "state")},
            "positions": [dict(p) for p in state_positions(state)] if state else None,
            "balances": dict(_mapping(state.get("balances"))) if state else None,
            "stats": state.get("stats") if state else None,
            "checkpointSeq": state.get("checkpointSeq") if state else None,
            "note": note,
        }
        ctx.out.write(dump(document, "json"))
        return ExitCode.OK
    ctx.out.write(render_positions(bot, state, note))
    return ExitCode.OK
