"""The restart state machine (SPEC §4) as one pure function.

``decide(bot, pods, now, limits)`` looks at what is (the TradingBot with its status, the pods
that carry its label, the clock, the operator-wide restart slots) and returns what to do next:
pod deletions and creations, a status patch, audit events and when to look again. It never
talks to the API server, so every transition is a table test, and because every input comes
from the cluster (status included) an operator killed at any instant resumes exactly where
it stopped.

The steps are an ordered chain of named checks; the first that applies decides.

The steps live in `decide_stopping`, `decide_starting` and `decide_running`; the state a
pass works on in `decide_context`; what the chain is told in `decide_facts` and what it
returns in `decide_outcome` (`Decision` is importable from here too).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence

from tradingbot_operator.decide_context import Context
from tradingbot_operator.decide_facts import BotFacts, OperatorLimits, PodFacts
from tradingbot_operator.decide_outcome import Decision
from tradingbot_operator.decide_running import change_requested, pod_current
from tradingbot_operator.decide_starting import new_pod_not_ready, new_pod_ready, no_pod
from tradingbot_operator.decide_stopping import (
    bot_is_being_deleted,
    half_deleted_pods,
    halt_requested,
    pod_still_terminating,
    pods_on_lost_nodes,
    surplus_pods,
)

Check = Callable[[Context], bool]


def decide(
    bot: BotFacts,
    pods: Sequence[PodFacts],
    now: dt.datetime,
    limits: OperatorLimits | None = None,
) -> Decision:
    ctx = Context(bot=bot, pods=pods, now=now, limits=limits or OperatorLimits())
    for check in CHAIN:
        if check(ctx):
            break
    alive = ctx.alive
    ctx.decision.status.setdefault(
        "pod", {"name": alive[0].name, "uid": alive[0].uid} if len(alive) == 1 else None
    )
    ctx.decision.status["observedGeneration"] = bot.generation
    ctx.decision.status["desiredConfigHash"] = bot.desired_hash
    if bot.last_change is not None:
        ctx.decision.status["lastChange"] = dict(bot.last_change)
    # Write only what differs from the stored status: steady state costs no API call.
    ctx.decision.status = {k: v for k, v in ctx.decision.status.items() if bot.status.get(k) != v}
    return ctx.decision


CHAIN: tuple[Check, ...] = (
    half_deleted_pods,
    pods_on_lost_nodes,
    bot_is_being_deleted,
    halt_requested,
    surplus_pods,
    pod_still_terminating,
    no_pod,
    new_pod_not_ready,
    new_pod_ready,
    change_requested,
    pod_current,
)
