"""The gather step's pure half: a TradingBot and its pods, as read from the API server,
turned into the facts `decide` takes (`reconcile` does the reads)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from tradingbot_api.constants import (
    ANNOTATION_APPLIED_RESTART,
    ANNOTATION_APPLIED_SPEC,
    ANNOTATION_CONFIG_HASH,
    ANNOTATION_HALT,
    ANNOTATION_RESTART_REASON,
    ANNOTATION_SUSPEND,
    SPEC_DEFAULTS,
    SUSPEND_VALUE,
    HaltMode,
    effective_halt,
)
from tradingbot_api.models import RestartPolicySpec, TradingBotSpec
from tradingbot_api.times import format_time, parse_time
from tradingbot_operator.decide_facts import BotFacts, FieldChange, PodFacts, RestartPolicy
from tradingbot_operator.guards import spec_problems
from tradingbot_operator.hashing import (
    bounded_text,
    changed_fields,
    compact_spec,
    config_hash,
    restart_token,
    value_at,
)
from tradingbot_operator.identity import PolicyState, StampOrder, verified_identity


@dataclass(frozen=True)
class ObservedBot:
    """One read of a TradingBot, its spec parsed once for the whole pass."""

    body: Mapping[str, Any]
    spec: TradingBotSpec | None  # None: the spec does not parse (see `problems`)
    problems: tuple[str, ...] = ()

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> ObservedBot:
        spec, problems = spec_problems(body.get("spec") or {})
        return cls(body, spec, problems)

    @property
    def meta(self) -> Mapping[str, Any]:
        return self.body.get("metadata") or {}

    @property
    def stored_spec(self) -> Mapping[str, Any]:
        """The spec as the API server stored it: what the config hash is taken over."""
        return self.body.get("spec") or {}

    @property
    def status(self) -> Mapping[str, Any]:
        return self.body.get("status") or {}

    @property
    def annotations(self) -> Mapping[str, str]:
        return self.meta.get("annotations") or {}

    @property
    def uid(self) -> str:
        return str(self.meta.get("uid"))

    @property
    def resource_version(self) -> str | None:
        return self.meta.get("resourceVersion")


def pod_facts(pod: Mapping[str, Any]) -> PodFacts:
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    containers = status.get("containerStatuses") or []
    restarts = sum(int(c.get("restartCount") or 0) for c in containers)
    last_exit: Mapping[str, Any] = next(
        (
            c["lastState"]["terminated"]
            for c in containers
            if (c.get("lastState") or {}).get("terminated")
        ),
        {},
    )
    return PodFacts(
        name=str(meta.get("name")),
        uid=str(meta.get("uid")),
        config_hash=(meta.get("annotations") or {}).get(ANNOTATION_CONFIG_HASH),
        created_at=parse_time(meta.get("creationTimestamp")),
        deleting=bool(meta.get("deletionTimestamp")),
        deletion_due=parse_time(meta.get("deletionTimestamp")),
        deletion_grace_seconds=meta.get("deletionGracePeriodSeconds"),
        ready=ready,
        terminated=status.get("phase") in ("Succeeded", "Failed"),
        restart_count=restarts,
        node_name=(pod.get("spec") or {}).get("nodeName"),
        last_exit_reason=last_exit.get("reason"),
        last_exit_code=last_exit.get("exitCode"),
    )


def restart_policy(observed: ObservedBot) -> RestartPolicy:
    """The bot's restart policy; for a spec that does not parse, its restartPolicy alone if
    that parses (the running pod is stopped with the grace the user asked for), else the
    defaults."""
    policy = observed.spec.restart_policy if observed.spec else None
    if policy is None:
        try:
            policy = RestartPolicySpec.model_validate(
                observed.stored_spec.get("restartPolicy") or {}
            )
        except ValidationError:
            policy = RestartPolicySpec()
    return RestartPolicy(
        coalesce_seconds=float(policy.coalesce_seconds),
        max_attempts=policy.max_attempts,
        grace_period_seconds=policy.grace_period_seconds,
        max_restarts_per_hour=policy.max_restarts_per_hour,
    )


def spec_changes(
    applied: Mapping[str, Any] | None, spec: Mapping[str, Any]
) -> tuple[FieldChange, ...]:
    """What changed between the spec the live pod was started with and the current one."""
    if applied is None:
        return ()
    return tuple(
        FieldChange(path, value_at(applied, path), value_at(spec, path))
        for path in changed_fields(applied, spec)
    )


def applied_spec(pod: Mapping[str, Any]) -> dict[str, Any] | None:
    """The spec a pod was started with, compacted the same way whichever operator version
    wrote it (earlier ones stored the whole spec)."""
    text = ((pod.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_APPLIED_SPEC)
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return compact_spec(value) if isinstance(value, dict) else None


def bot_facts(
    observed: ObservedBot,
    pods: Sequence[PodFacts],
    raw_pods: Sequence[Mapping[str, Any]],
    policies: PolicyState | None = None,
    fleet_halt: HaltMode | None = None,
) -> BotFacts:
    body, meta, annotations = observed.body, observed.meta, observed.annotations
    spec = observed.stored_spec
    bot_halt = effective_halt(annotations.get(ANNOTATION_HALT))
    halt_mode = effective_halt(bot_halt, fleet_halt)
    desired = config_hash(spec, annotations, SPEC_DEFAULTS)
    status = body.get("status") or {}
    seen = status.get("lastChange") or {}
    newest = StampOrder.of(parse_time(seen.get("stampTime")), seen.get("stampRevision"))
    identity = verified_identity(body, policies or PolicyState(), newest)
    last_change = (
        {
            "by": identity.user,
            "source": identity.source,
            "stampTime": format_time(identity.time),
            "stampRevision": identity.revision,
        }
        if identity.verified and identity.time
        else status.get("lastChange")
    )
    applied = None
    applied_restart = ""
    for raw in raw_pods:
        raw_meta = raw.get("metadata") or {}
        if not raw_meta.get("deletionTimestamp"):
            applied_restart = (raw_meta.get("annotations") or {}).get(
                ANNOTATION_APPLIED_RESTART, ""
            )
            applied = applied_spec(raw) or applied
    reason = annotations.get(ANNOTATION_RESTART_REASON)
    reason = bounded_text(reason) if reason else None
    return BotFacts(
        namespace=str(meta.get("namespace")),
        name=str(meta.get("name")),
        desired_hash=desired,
        status=body.get("status") or {},
        policy=restart_policy(observed),
        generation=int(meta.get("generation") or 1),
        suspend=(observed.spec.suspend if observed.spec else bool(spec.get("suspend")))
        or annotations.get(ANNOTATION_SUSPEND, "").lower() == SUSPEND_VALUE,
        halt_mode=halt_mode,
        halt_source="bot" if halt_mode == bot_halt else "fleet",
        kill_switch=dict(status.get("killSwitch") or {}),
        deleting=bool(meta.get("deletionTimestamp")),
        restart_reason=reason if restart_token(annotations) not in ("", applied_restart) else None,
        action_reason=reason if identity.reason_is_new else None,
        changes=spec_changes(applied, compact_spec(spec)),
        requested_by=identity.user,
        request_source=identity.source,
        last_change=last_change,
    )


def needs_new_config(facts: BotFacts, pods: Sequence[PodFacts]) -> bool:
    """Whether the next step would start a pod with the desired config (so it must be
    runnable): no live pod, or one with another config, and the bot is meant to run."""
    if facts.deleting or facts.halt or facts.suspend:
        return False
    alive = [p for p in pods if not p.deleting]
    return not alive or any(p.config_hash != facts.desired_hash for p in alive)
