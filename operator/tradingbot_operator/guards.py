"""What must hold before the operator runs a new config for a bot.

The admission policies refuse bad input inside the API server; these checks are the
operator's own, for clusters (or moments) without them: a healthy bot is never stopped for a
config that cannot run, and the operator never mounts a Secret into a bot for someone who may
not read it (it is a deputy that can read no Secret itself: the kubelet mounts it).

- `spec_blocker`: the shared validators (the same model the bot parses its spec with).
- `image_blocker`: `spec.image` must be on the operator's allowlist.
- `credentials_blocker`: the Secret was approved before for this bot (an annotation on the
  bot's ServiceAccount, which the bot cannot write), or whoever set the reference, as a
  trusted admission stamp says, passes a SubjectAccessReview for `get` on it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from pydantic import ValidationError

from tradingbot_api.constants import (
    ANNOTATION_CREDENTIALS_APPROVED,
    MUTATING_POLICIES,
    VALIDATING_POLICIES,
    BlockReason,
)
from tradingbot_api.models import TradingBotSpec, validation_messages
from tradingbot_api.times import parse_time
from tradingbot_operator.decide_facts import Blocker
from tradingbot_operator.hashing import bounded_text
from tradingbot_operator.identity import PolicyState, credentials_referrer

log = logging.getLogger(__name__)

# Messages copied into status and Events are bounded; the first problems are the useful ones.
MAX_PROBLEMS_SHOWN = 3
POLICY_CACHE_SECONDS = 10.0


def spec_problems(spec: Mapping[str, Any]) -> tuple[TradingBotSpec | None, tuple[str, ...]]:
    """The spec parsed by the shared model (the same one the bot parses it with), or the
    problems that stop it from parsing."""
    try:
        return TradingBotSpec.from_dict(spec), ()
    except ValidationError as exc:
        return None, tuple(validation_messages(exc))


def spec_blocker(problems: Sequence[str]) -> Blocker | None:
    if not problems:
        return None
    shown = "; ".join(problems[:MAX_PROBLEMS_SHOWN])
    more = len(problems) - MAX_PROBLEMS_SHOWN
    suffix = f" (and {more} more)" if more > 0 else ""
    return Blocker(BlockReason.SPEC_INVALID, bounded_text(f"invalid spec: {shown}{suffix}"))


def image_blocker(image: str | None, allowed: tuple[str, ...]) -> Blocker | None:
    if not image or image in allowed:
        return None
    return Blocker(
        BlockReason.IMAGE_NOT_ALLOWED,
        bounded_text(f"spec.image {image} is not an allowed bot image ({', '.join(allowed)})"),
    )


@dataclass(frozen=True)
class AccessQuery:
    """One SubjectAccessReview question: may `user` (in `groups`) `verb` this resource?"""

    user: str
    groups: tuple[str, ...]
    verb: str
    resource: str
    namespace: str
    name: str = ""
    group: str = ""


class AccessReviewer(Protocol):
    async def may(self, query: AccessQuery) -> tuple[bool, str]: ...


async def credentials_blocker(
    reviewer: AccessReviewer,
    body: Mapping[str, Any],
    secret: str,
    approved: str | None,
    policies: PolicyState,
) -> Blocker | None:
    """None when `secret` may be mounted into this bot; else why not.

    `approved` is the Secret approved for this bot before (from its ServiceAccount)."""
    if secret == approved:
        return None
    referrer, problem = credentials_referrer(body, secret, policies)
    if referrer is None:
        return Blocker(
            BlockReason.SECRET_NOT_ALLOWED,
            f"Secret {secret} is not mounted: {problem}, so the operator cannot check that "
            "whoever referenced it may read it; a user who may read it must set "
            "spec.exchange.credentialsSecretRef again (with the admission policies installed)",
        )
    namespace = str((body.get("metadata") or {}).get("namespace"))
    allowed, why = await reviewer.may(
        AccessQuery(referrer.user, referrer.groups, "get", "secrets", namespace, name=secret)
    )
    if allowed:
        return None
    return Blocker(
        BlockReason.SECRET_NOT_ALLOWED,
        bounded_text(
            f"Secret {secret} is not mounted: {referrer.user}, who referenced it, may not get "
            f"it{f' ({why})' if why else ''}"
        ),
    )


def approved_secret(service_account: Mapping[str, Any] | None) -> str | None:
    annotations = ((service_account or {}).get("metadata") or {}).get("annotations") or {}
    return annotations.get(ANNOTATION_CREDENTIALS_APPROVED)


class ClusterReader(Protocol):
    async def get_cluster_object(
        self, group: str, version: str, plural: str, name: str
    ) -> dict[str, Any] | None: ...


_ADMISSION_GROUP = ("admissionregistration.k8s.io", "v1")


async def read_policy_state(api: ClusterReader) -> PolicyState:
    """Installed (policies and bindings all present) since the newest of them was created."""
    names = [
        (kind, name)
        for kinds, group in (
            (("mutatingadmissionpolicies", "mutatingadmissionpolicybindings"), MUTATING_POLICIES),
            (
                ("validatingadmissionpolicies", "validatingadmissionpolicybindings"),
                VALIDATING_POLICIES,
            ),
        )
        for kind in kinds
        for name in group
    ]
    created: list[datetime] = []
    for plural, name in names:
        obj = await api.get_cluster_object(*_ADMISSION_GROUP, plural, name)
        when = parse_time(((obj or {}).get("metadata") or {}).get("creationTimestamp"))
        if when is None:
            return PolicyState(None)
        created.append(when)
    return PolicyState(max(created))


class PolicyWatch:
    """The policy state, read at most every POLICY_CACHE_SECONDS (it changes rarely; a
    change takes effect within that time), or afresh on request, where "afresh" means read
    within the last FRESH_SECONDS: a thousand bots starting at once share one read."""

    FRESH_SECONDS = 1.0

    def __init__(self, api: ClusterReader, ttl: float = POLICY_CACHE_SECONDS) -> None:
        self.api = api
        self.ttl = ttl
        self._state: PolicyState | None = None
        self._read_at = 0.0
        self._lock = asyncio.Lock()

    async def state(self, fresh: bool = False) -> PolicyState:
        async with self._lock:  # concurrent callers wait for one read, then share it
            return await self._state_locked(fresh)

    async def _state_locked(self, fresh: bool) -> PolicyState:
        now = time.monotonic()
        age = now - self._read_at
        if self._state is None or age >= self.ttl or (fresh and age >= self.FRESH_SECONDS):
            try:
                state = await read_policy_state(self.api)
            except Exception as err:  # unknown is untrusted, never an error of the bot
                log.warning("cannot read the admission policies (%s): stamps untrusted", err)
                state = PolicyState(None)
            if self._state is not None and state.installed != self._state.installed:
                log.warning(
                    "admission policies %s",
                    "installed: change stamps are trusted"
                    if state.installed
                    else "missing: change stamps are untrusted, new credentials refused",
                )
            self._state, self._read_at = state, now
        return self._state
