"""One bot's reconcile loop: gather facts, call `decide`, apply the decision, wait.

Level-triggered: watch events update the fleet cache and wake the loop; a pass decides from
the cache (see `cache` for why a stale picture cannot make it act wrongly: preconditions on
every write, own writes read back at once, a quorum list before a pod is created). Intent
is written to status before it is acted on, so a crash between the two is finished by the
next pass (see `decide`).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tradingbot_api.constants import (
    ANNOTATION_CREDENTIALS_APPROVED,
    API_VERSION,
    KIND,
    SPEC_DEFAULTS,
    BlockReason,
    Phase,
    lease_name,
)
from tradingbot_api.models import TradingBotSpec
from tradingbot_api.times import utc_now
from tradingbot_operator.cache import FleetCache
from tradingbot_operator.decide import Decision, decide
from tradingbot_operator.decide_facts import Blocker, OperatorLimits, PodFacts
from tradingbot_operator.decide_outcome import CreatePod, DeletePod
from tradingbot_operator.failpoints import failpoint
from tradingbot_operator.guards import (
    PolicyWatch,
    approved_secret,
    credentials_blocker,
    image_blocker,
    spec_blocker,
)
from tradingbot_operator.hashing import bounded_text, canonical_json, config_hash, restart_token
from tradingbot_operator.identity import PolicyState, change_stamp
from tradingbot_operator.kubeapi import ApiError, KubeApi, api_message
from tradingbot_operator.metrics import OperatorMetrics
from tradingbot_operator.reconcile_gather import (
    ObservedBot,
    bot_facts,
    needs_new_config,
    pod_facts,
)
from tradingbot_operator.recorder import AuditEvent, AuditRecorder, InvolvedObject
from tradingbot_operator.render import (
    BotRef,
    credentials_secret,
    render_bot_objects,
    render_bot_pod,
    service_account_name,
)
from tradingbot_operator.settings import OperatorSettings
from tradingbot_operator.watches import FleetSwitch, NodeHeartbeats, lease_expired

log = logging.getLogger(__name__)

MAX_OUTBOX = 200
# Passes of the finalizer in one call when its status write meets a newer object.
CONFLICT_ATTEMPTS = 3
ERROR_BACKOFF_SECONDS = (0.5, 1, 2, 5, 10, 30)


class NotLeaderError(Exception):
    """This replica no longer holds its shard's leader Lease (it exits at once)."""


# -- the loop -------------------------------------------------------------------------------


@dataclass
class Fleet:
    """Operator-wide state shared by all bot loops (in memory, rebuilt on start)."""

    settings: OperatorSettings
    api: KubeApi
    recorder: AuditRecorder
    metrics: OperatorMetrics
    policies: PolicyWatch | None = None
    # The watches' picture of bots and pods; None: every pass reads the API server.
    cache: FleetCache | None = None
    nodes: NodeHeartbeats | None = None
    fleet_switch: FleetSwitch | None = None
    restart_slots: set[tuple[str, str]] = field(default_factory=set)
    ensured: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    # Credentials Secret approved per bot uid (mirrors the ServiceAccount annotation).
    approvals: dict[str, str] = field(default_factory=dict)
    # The change stamp last seen per bot uid: a different one makes the policies be re-read.
    stamps_seen: dict[str, str] = field(default_factory=dict)
    # The pod dry run per bot uid: (config hash, what it found).
    pod_checks: dict[str, tuple[str, Blocker | None]] = field(default_factory=dict)
    wakeups: dict[tuple[str, str], asyncio.Event] = field(default_factory=dict)

    # The node each bot's pods were last seen on, to wake the bots of a node that goes quiet.
    pod_nodes: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    # Passes in flight at once (settings.max_concurrent_passes).
    passes: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self.passes = asyncio.Semaphore(self.settings.max_concurrent_passes)

    # False once this replica's leader Lease is past its renew deadline: no pass may act.
    may_act: Callable[[], bool] = field(default=lambda: True)

    def wake(self, namespace: str, name: str) -> None:
        event = self.wakeups.get((namespace, name))
        if event is not None:
            event.set()

    def wake_all(self) -> None:
        for event in self.wakeups.values():
            event.set()

    def wake_nodes(self, nodes: set[str]) -> None:
        for key, seen in self.pod_nodes.items():
            if seen & nodes:
                self.wake(*key)

    def limits_for(self, key: tuple[str, str]) -> OperatorLimits:
        return OperatorLimits(
            restarts_in_flight=len(self.restart_slots - {key}),
            max_concurrent_restarts=self.settings.max_concurrent_restarts,
            ready_timeout_seconds=self.settings.ready_timeout_seconds,
        )


class BotReconciler:
    def __init__(self, fleet: Fleet, namespace: str, name: str) -> None:
        self.fleet = fleet
        self.namespace = namespace
        self.name = name
        self.key = (namespace, name)
        self.wakeup = fleet.wakeups.setdefault(self.key, asyncio.Event())

    async def run(self, stopped: Any) -> None:
        """Reconcile until kopf stops the daemon (object deleted or operator exiting)."""
        failures = 0
        try:
            while not stopped:
                self.wakeup.clear()  # before reading, so a change during the pass wakes us
                try:
                    decision = await self.reconcile_once()
                    failures = 0
                except _Gone:
                    return
                except Exception as err:  # retried with back-off; counted, never fatal
                    if isinstance(err, ApiError) and err.conflict:
                        # Someone wrote the bot between our read and our status write:
                        # expected, not an error; decide again on the fresh object.
                        log.debug("%s/%s changed during reconcile; again", *self.key)
                        try:
                            await self._read_bot(live=True)
                        except _Gone:
                            return
                        except Exception as again:  # the next pass reads it once more
                            log.debug("%s/%s not read again: %s", *self.key, again)
                        continue
                    failures += 1
                    self.fleet.metrics.reconcile_errors.labels(error_type=type(err).__name__).inc()
                    delay = ERROR_BACKOFF_SECONDS[min(failures, len(ERROR_BACKOFF_SECONDS)) - 1]
                    log.warning(
                        "reconcile of %s/%s failed (%s); retrying in %ss", *self.key, err, delay
                    )
                    await self._sleep(delay, stopped)
                    continue
                if decision.requeue_after is None:
                    await self._sleep(None, stopped)
                elif decision.requeue_after > 0:
                    await self._sleep(decision.requeue_after, stopped)
        finally:
            self.fleet.wakeups.pop(self.key, None)

    async def until_cached(
        self, condition: Callable[[Mapping[str, Any]], bool], timeout: float
    ) -> None:
        """Wait (at most `timeout`) until the cached bot meets `condition`; at once without
        a cache or when the cache does not hold the bot."""
        cache = self.fleet.cache
        deadline = time.monotonic() + timeout
        while cache is not None:
            bot = cache.bot(self.key)
            remaining = deadline - time.monotonic()
            if bot is None or condition(bot) or remaining <= 0:
                return
            self.wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wakeup.wait(), remaining)

    async def _sleep(self, seconds: float | None, stopped: Any) -> None:
        """Until woken by a watch event, stopped by kopf, or the requeue time."""
        waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(self.wakeup.wait())]
        if hasattr(stopped, "wait"):
            waiters.append(asyncio.ensure_future(stopped.wait()))
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def reconcile_once(self, *, deleting: bool = False) -> Decision:
        async with self.fleet.passes:
            return await self._reconcile_once(deleting)

    async def _reconcile_once(self, deleting: bool) -> Decision:
        if not self.fleet.may_act():
            raise NotLeaderError(f"{self.namespace}/{self.name}: the leader Lease is not held")
        started = time.perf_counter()
        body = await self._read_bot()
        observed = ObservedBot.parse(body)
        raw_pods = await self._read_pods()
        pods = await self._with_lost_nodes([pod_facts(p) for p in raw_pods])
        policies = await self._policies(body)
        fleet_halt = self.fleet.fleet_switch.mode if self.fleet.fleet_switch else None
        facts = bot_facts(observed, pods, raw_pods, policies, fleet_halt)
        if deleting and not facts.deleting:
            facts = dataclasses.replace(facts, deleting=True)
        # A spec that no longer parses (a stricter operator than the one that started the
        # pod) must block too: no pod is ever made from it.
        if needs_new_config(facts, pods) or observed.spec is None:
            facts = dataclasses.replace(facts, blocker=await self.blocker(observed, policies))
        decision = decide(facts, pods, utc_now(), self.fleet.limits_for(self.key))
        await self.apply(observed, decision)
        self.fleet.metrics.reconcile_duration.observe(time.perf_counter() - started)
        return decision

    async def finalize_once(self) -> bool:
        """One pass of the finalizer; True when the bot has stopped and may go. A refused
        status write (the cache was behind the object) reads it afresh and tries again."""
        for attempt in range(CONFLICT_ATTEMPTS):
            try:
                return (await self.reconcile_once(deleting=True)).finalize
            except ApiError as err:
                if not err.conflict or attempt == CONFLICT_ATTEMPTS - 1:
                    raise
                await self._read_bot(live=True)
        return False

    async def _read_bot(self, *, live: bool = False) -> dict[str, Any]:
        """The TradingBot from the cache; from the API server when asked, without a cache,
        or when the cache has not seen it (yet, or any more); _Gone when it does not exist."""
        cache = self.fleet.cache
        cached = cache.bot(self.key) if cache is not None and not live else None
        if cached is not None:
            return copy.deepcopy(cached)  # a pass never changes what the cache holds
        try:
            body = await self.fleet.api.get_bot(self.namespace, self.name)
        except ApiError as err:
            if err.not_found:
                self.fleet.restart_slots.discard(self.key)
                self.fleet.metrics.set_bot_state(self.namespace, self.name, None, False)
                raise _Gone() from None
            raise
        if cache is not None:
            cache.observe_bot(body)
        return body

    async def _read_pods(self) -> list[dict[str, Any]]:
        cache = self.fleet.cache
        if cache is not None:
            return copy.deepcopy(cache.pods_of(self.key))
        return await self.fleet.api.list_bot_pods(self.namespace, self.name)

    async def _pods_unseen(self) -> bool:
        """Before a pod is created on the cache's word that there is none: a quorum list of
        the bot's pods (served by the API server's watch cache once it confirmed it is
        current). Pods it shows that the cache lacks go into the cache; True if any."""
        cache = self.fleet.cache
        if cache is None:
            return False  # this pass listed them itself
        listed = await self.fleet.api.list_bot_pods(self.namespace, self.name)
        known = {p["metadata"]["uid"] for p in cache.pods_of(self.key)}
        unseen = [p for p in listed if p["metadata"].get("uid") not in known]
        for pod in unseen:
            cache.observe_pod(pod)
        return bool(unseen)

    def _observed(self, obj: Mapping[str, Any]) -> None:
        """Our own write's answer, into the cache at once (read your writes)."""
        cache = self.fleet.cache
        if cache is None or not obj.get("metadata"):
            return
        if obj.get("kind") == "Pod":
            cache.observe_pod(dict(obj))
        elif obj.get("kind") == KIND:
            cache.observe_bot(dict(obj))

    async def _with_lost_nodes(self, pods: list[PodFacts]) -> list[PodFacts]:
        """Mark the pods whose node stopped heartbeating while their bot's Lease expired
        (one Lease read, and only when a node is quiet)."""
        nodes = self.fleet.nodes
        self.fleet.pod_nodes[self.key] = {p.node_name for p in pods if p.node_name}
        if nodes is None or not any(nodes.lost(p.node_name) for p in pods):
            return pods
        try:
            lease = await self.fleet.api.get("Lease", self.namespace, lease_name(self.name))
        except ApiError as err:
            if not err.not_found:
                raise
            lease = None
        if not lease_expired(lease, utc_now()):
            return pods  # the bot still renews its Lease: it is alive somewhere
        return [
            dataclasses.replace(p, node_lost=True) if nodes.lost(p.node_name) else p for p in pods
        ]

    async def _policies(self, body: Mapping[str, Any]) -> PolicyState:
        """The policy state; read afresh when a new change stamp appears, so a stamp written
        while the policies were briefly removed is never believed from a stale cache."""
        if self.fleet.policies is None:
            return PolicyState()
        stamp = change_stamp(body)
        uid = str(body["metadata"].get("uid"))
        fresh = bool(stamp.strip()) and self.fleet.stamps_seen.get(uid) != stamp
        state = await self.fleet.policies.state(fresh=fresh)
        self.fleet.stamps_seen[uid] = stamp
        return state

    async def blocker(self, observed: ObservedBot, policies: PolicyState) -> Blocker | None:
        """Why the desired config must not run, checked before anything is stopped."""
        spec = observed.spec
        if spec is None:
            return spec_blocker(observed.problems)
        found = image_blocker(spec.image, self.fleet.settings.images)
        found = found or await self._pod_blocker(observed, spec)
        secret = credentials_secret(spec)
        if found or not secret:
            return found
        body = observed.body
        uid = observed.uid
        approved = self.fleet.approvals.get(uid)
        if approved != secret:
            account = await self._service_account(service_account_name(self.name))
            approved = approved_secret(account)
        found = await credentials_blocker(self.fleet.api, body, secret, approved, policies)
        if found is None and approved != secret:
            await self._approve(observed, spec, secret)
        if found is None:
            self.fleet.approvals[uid] = secret
        return found

    async def _pod_blocker(self, observed: ObservedBot, spec: TradingBotSpec) -> Blocker | None:
        """The pod this config needs, as a server-side dry run: what the CRD allows but the
        pod API or Pod Security refuses is found before the running pod is stopped (once
        per config)."""
        uid = observed.uid
        desired = config_hash(observed.stored_spec, observed.annotations, SPEC_DEFAULTS)
        checked = self.fleet.pod_checks.get(uid)
        if checked and checked[0] == desired:
            return checked[1]
        bot = BotRef(self.namespace, self.name, uid)
        pod = render_bot_pod(
            bot,
            spec,
            observed.stored_spec,
            desired,
            self.fleet.settings,
            restart_token(observed.annotations),
        )
        await self.ensure_bot_objects(bot, spec)  # admission checks the pod's ServiceAccount
        found: Blocker | None = None
        try:
            await self.fleet.api.create(pod, dry_run=True)
        except ApiError as err:
            if err.status not in (400, 403, 422):
                raise  # unreachable, overloaded or a name clash: not a verdict on the config
            found = Blocker(
                BlockReason.SPEC_INVALID,
                bounded_text(f"the pod for this config is refused: {api_message(err)}"),
            )
        self.fleet.pod_checks[uid] = (desired, found)
        return found

    async def _service_account(self, name: str) -> dict[str, Any] | None:
        try:
            return await self.fleet.api.get("ServiceAccount", self.namespace, name)
        except ApiError as err:
            if err.not_found:
                return None
            raise

    async def _approve(self, observed: ObservedBot, spec: TradingBotSpec, secret: str) -> None:
        """Record the approval where the bot cannot write it: on its ServiceAccount."""
        api = self.fleet.api
        name = service_account_name(self.name)
        patch = {"metadata": {"annotations": {ANNOTATION_CREDENTIALS_APPROVED: secret}}}
        try:
            await api.merge_patch("ServiceAccount", self.namespace, name, patch)
        except ApiError as err:
            if not err.not_found:
                raise
            # First start: the ServiceAccount comes with the bot's other objects.
            bot = BotRef(self.namespace, self.name, observed.uid)
            await self.ensure_bot_objects(bot, spec)
            await api.merge_patch("ServiceAccount", self.namespace, name, patch)

    async def apply(self, observed: ObservedBot, decision: Decision) -> None:
        api, settings = self.fleet.api, self.fleet.settings
        bot = BotRef(self.namespace, self.name, observed.uid)
        phase_before = observed.status.get("phase")
        # Claim or release the restart slot before the first await, so two loops deciding
        # in the same tick cannot both take the last slot.
        phase_after = decision.phase_after(phase_before)
        held = self.key in self.fleet.restart_slots
        if decision.holds_restart_slot(phase_before):
            self.fleet.restart_slots.add(self.key)
        else:
            self.fleet.restart_slots.discard(self.key)
        # The events of this decision are written with the status change they describe (an
        # outbox in status), so a crash cannot separate an action from its audit record.
        now = utc_now()
        events = [
            event.stamped(now, f"{observed.uid}/{observed.resource_version}/{i}")
            for i, event in enumerate(decision.events)
        ]
        outbox = [AuditEvent.from_outbox(e) for e in observed.status.get("auditOutbox") or []]
        if events:
            outbox = (outbox + events)[-MAX_OUTBOX:]
            decision.status["auditOutbox"] = [e.to_outbox() for e in outbox]
        resource_version = observed.resource_version
        try:
            if decision.status:
                patched = await api.patch_bot_status(
                    self.namespace, self.name, decision.status, resource_version
                )
                self._observed(patched)
                resource_version = patched["metadata"]["resourceVersion"]
        except BaseException:
            if held:
                self.fleet.restart_slots.add(self.key)
            else:
                self.fleet.restart_slots.discard(self.key)
            raise
        self.fleet.recorder.decided(events)
        if decision.status.get("phase") == Phase.RESTARTING and decision.actions:
            failpoint("after-restart-recorded")
        elif (decision.status.get("pendingAction") or {}).get(
            "lastRequestedAt"
        ) and not decision.actions:
            failpoint("after-pending-recorded")
        pending = (
            decision.status["pendingAction"] is not None
            if "pendingAction" in decision.status
            else bool(observed.status.get("pendingAction"))
        )
        self.fleet.metrics.set_bot_state(
            self.namespace, self.name, str(phase_after or Phase.PENDING), pending
        )
        for action in decision.actions:
            if isinstance(action, DeletePod):
                deleted = await api.delete_pod(
                    self.namespace, action.name, action.uid, action.grace_period_seconds
                )
                self._observed(deleted)
                failpoint("after-pod-deleted")
            elif isinstance(action, CreatePod):
                spec = observed.spec
                if spec is None:  # decide never asks for a pod while the spec is blocked
                    raise AssertionError("a pod for a spec that does not parse")
                if await self._pods_unseen():
                    decision.requeue_after = 0  # decide again with them in the cache
                    continue
                await self.ensure_bot_objects(bot, spec)
                pod = render_bot_pod(
                    bot,
                    spec,
                    observed.stored_spec,
                    action.config_hash,
                    settings,
                    restart_token(observed.annotations),
                )
                try:
                    self._observed(await api.create(pod))
                except ApiError as err:
                    if not err.conflict:  # same name = same hash: created by an earlier pass
                        # e.g. its ServiceAccount was deleted by hand: re-apply next time
                        self.fleet.ensured.pop(self.key, None)
                        raise
                    if self.fleet.cache is not None:  # one the cache has not seen yet
                        self._observed(
                            await api.get("Pod", self.namespace, pod["metadata"]["name"])
                        )
                failpoint("after-pod-created")
        involved = InvolvedObject(
            API_VERSION,
            KIND,
            self.namespace,
            self.name,
            observed.uid,
            observed.resource_version,
        )
        failpoint("before-audit-delivery")
        if outbox:
            if await self.fleet.recorder.deliver(outbox, involved):
                try:
                    cleared = await api.patch_bot_status(
                        self.namespace, self.name, {"auditOutbox": None}, resource_version
                    )
                    self._observed(cleared)
                except ApiError as err:
                    if not err.conflict:  # changed meanwhile: the next pass delivers again
                        raise
                outbox = []
            else:
                decision.requeue_after = min(decision.requeue_after or 2.0, 2.0)
        if decision.finalize:
            if outbox:  # the object would vanish with its undelivered audit events
                decision.finalize = False
                return
            await self.cleanup(bot)

    async def ensure_bot_objects(self, bot: BotRef, spec: TradingBotSpec) -> None:
        """The bot's identity, Lease and state object, applied once per operator run and
        again only when what they depend on changes (saves API calls on every restart)."""
        objects = render_bot_objects(bot, spec)
        fingerprint = (bot.uid, canonical_json(objects))
        if self.fleet.ensured.get(self.key) == fingerprint:
            return
        for obj in objects:
            if obj["kind"] in ("ConfigMap", "Lease", "PersistentVolumeClaim"):
                await self.fleet.api.create_if_absent(obj)  # never overwrite a bot's state
            else:
                await self.fleet.api.apply(obj)
        self.fleet.ensured[self.key] = fingerprint

    async def cleanup(self, bot: BotRef) -> None:
        """After the bot has stopped: remove its identity; keep its state and Lease."""
        name = service_account_name(bot.name)
        for kind in ("RoleBinding", "Role", "ServiceAccount"):
            await self.fleet.api.delete(kind, bot.namespace, name)
        self.fleet.restart_slots.discard(self.key)
        self.fleet.ensured.pop(self.key, None)
        self.fleet.metrics.set_bot_state(bot.namespace, bot.name, None, False)


class _Gone(Exception):
    """The TradingBot no longer exists."""
