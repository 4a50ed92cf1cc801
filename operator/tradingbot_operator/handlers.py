"""kopf wiring only: kopf runs one loop per TradingBot of this shard (and its finalizer); the
fleet cache's watches wake the loops; the loops and `decide` do the work. With leader
election the loops wait until this replica leads its shard (`leadership`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import kopf

from tradingbot_api.constants import (
    API_GROUP,
    FINALIZER,
    PLURAL,
    VERSION,
    Phase,
)
from tradingbot_api.kubeclient import KubeClient
from tradingbot_operator.cache import FleetCache
from tradingbot_operator.guards import PolicyWatch
from tradingbot_operator.kubeapi import KubeApi
from tradingbot_operator.leadership import exit_now, lead, leader_fence
from tradingbot_operator.metrics import OperatorMetrics
from tradingbot_operator.reconcile import BotReconciler, Fleet
from tradingbot_operator.recorder import AuditRecorder
from tradingbot_operator.settings import OperatorSettings
from tradingbot_operator.sharding import foreign_finalizers
from tradingbot_operator.sinks import audit_log_sink, kube_event_sink
from tradingbot_operator.watches import FleetSwitch, NodeHeartbeats, cancel

log = logging.getLogger(__name__)

STARTUP_BACKOFF_SECONDS = 2.0
CACHE_SYNC_SECONDS = 60.0
# How long a new loop waits for kopf's finalizer to reach the cache (normally milliseconds).
FINALIZER_WAIT_SECONDS = 2.0


class NoDiffBase(kopf.DiffBaseStorage):
    """No diff for kopf: no handler of ours reacts to a change (the loops decide from the
    whole object). With a stored diff base kopf would write each bot's whole spec into an
    annotation once, a second write per bot at a cold start (and a status write refused
    for it), and a field in every GitOps diff. Here the essence kopf compares is empty
    (not a copy of each object on every event) and never changes."""

    def build(self, *, body: Any, extra_fields: Any = None) -> Any:
        return {}

    def fetch(self, *, body: Any) -> Any:
        return {}

    def store(self, *, body: Any, patch: Any, essence: Any) -> None:
        return None


def configure_kopf(kopf_settings: kopf.OperatorSettings, settings: OperatorSettings) -> None:
    persistence = kopf_settings.persistence
    persistence.finalizer = settings.shard_rule.finalizer(FINALIZER)
    persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
    persistence.diffbase_storage = NoDiffBase()
    # Watches can silently stall without these (kopf issues 585, 614, 957).
    kopf_settings.watching.server_timeout = settings.watch_server_timeout
    kopf_settings.watching.client_timeout = settings.watch_client_timeout
    kopf_settings.watching.connect_timeout = 30
    kopf_settings.networking.request_timeout = 60
    # Replicas elect a leader with a Lease of ours (leadership.py): kopf peering is not
    # leader election. No peering objects, no cluster-wide discovery.
    kopf_settings.peering.standalone = True
    kopf_settings.scanning.disabled = True
    kopf_settings.posting.level = logging.WARNING
    kopf_settings.posting.reporting_component = "tradingbot-operator"


def configure_webhook_server(
    kopf_settings: kopf.OperatorSettings, settings: OperatorSettings
) -> None:
    if not settings.webhook_listen:
        return
    host, _, port = settings.webhook_listen.rpartition(":")
    kopf_settings.admission.server = kopf.WebhookServer(
        addr=host or "0.0.0.0",
        port=int(port),
        certfile=settings.webhook_cert_file,
        pkeyfile=settings.webhook_key_file,
    )
    # The configurations come from the chart (or localkube): our own timeouts and
    # failurePolicy, no cluster-wide write permission for the operator.
    kopf_settings.admission.managed = None


# kopf runs a failed start-up again after `backoff` seconds (60 by default): the API server may
# answer "not ready yet" for a moment after a CRD is installed, so try again soon. Every step
# below may run twice: the metrics server is started once, a failed attempt's client closed.
@kopf.on.startup(backoff=STARTUP_BACKOFF_SECONDS)
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    operator_settings: OperatorSettings = memo.get("settings") or OperatorSettings.from_env()
    memo["settings"] = operator_settings
    configure_kopf(settings, operator_settings)
    configure_webhook_server(settings, operator_settings)
    metrics: OperatorMetrics = memo.get("metrics") or OperatorMetrics()
    memo["metrics"] = metrics
    metrics.serve(operator_settings.metrics_port, operator_settings.metrics_host)
    api = KubeApi.from_environment()
    # Every replica records what its admission webhook sees (a standby's too: the webhook
    # Service reaches any replica); the dedup keys make two records of one deletion one line.
    memo["recorder"] = audit_recorder(operator_settings, api, metrics)
    # kopf gives each object a shallow copy of the memo: the fleet that a leader builds later
    # reaches the loops through this one shared future.
    memo["ready"] = asyncio.get_running_loop().create_future()
    if not operator_settings.leader_election:
        try:
            await _start_fleet(memo, operator_settings, api, metrics)
        except BaseException:
            await api.close()
            raise
        return
    # The standby serves the deletion webhook at once and builds nothing until it leads.
    # The Lease has a connection pool of its own: renewals never queue behind the fleet's
    # requests (a cold start of a large shard would otherwise starve them).
    lease_client = KubeClient.from_environment(user_agent="tradingbot-operator-leader")
    fence = leader_fence(
        lease_client,
        operator_settings.leader_namespace or "default",
        operator_settings.shard_rule,
    )
    memo["lease_client"] = lease_client
    memo["fence"] = fence
    memo["standby_api"] = api  # closed on stop when this replica never led
    memo["leaving"] = asyncio.Event()

    async def start_leading() -> None:
        await _start_fleet(memo, operator_settings, api, metrics, may_act=lambda: fence.held)

    memo["leading"] = asyncio.create_task(
        lead(fence, start_leading, memo["leaving"], exit_now), name="leader-election"
    )


def audit_recorder(
    operator_settings: OperatorSettings, api: KubeApi, metrics: OperatorMetrics
) -> AuditRecorder:
    if not operator_settings.audit_url:
        log.warning(
            "no audit log configured (TRADINGBOT_OPERATOR_AUDIT_URL): actions are "
            "recorded as Kubernetes Events only"
        )
    return AuditRecorder(
        durable=[audit_log_sink(operator_settings.audit_url, operator_settings.audit_token_file)]
        if operator_settings.audit_url
        else [],
        best_effort=[kube_event_sink(api)],
        on_event=metrics.observe_event,
        on_error=metrics.observe_audit_error,
    )


async def _start_fleet(
    memo: kopf.Memo,
    operator_settings: OperatorSettings,
    api: KubeApi,
    metrics: OperatorMetrics,
    may_act: Callable[[], bool] | None = None,
) -> None:
    fleet = Fleet(
        settings=operator_settings,
        api=api,
        recorder=memo["recorder"],
        metrics=metrics,
        policies=PolicyWatch(api),
    )
    if may_act is not None:
        fleet.may_act = may_act
    shard = operator_settings.shard_rule
    fleet.cache = FleetCache(
        api.client,
        operator_settings.namespace,
        lambda key: fleet.wake(*key),
        owns=shard.owns if shard.count > 1 else None,
    )
    tasks = fleet.cache.start()
    try:
        # Nothing is decided before both lists are in: a pod missing from the cache must
        # mean a pod that does not exist.
        await asyncio.wait_for(fleet.cache.synced(), CACHE_SYNC_SECONDS)
    except BaseException:
        await cancel(tasks)
        raise
    # Bots caught mid-restart by an operator restart still hold their restart slots.
    for bot in fleet.cache.bots.store.values():
        if (bot.get("status") or {}).get("phase") == Phase.RESTARTING:
            fleet.restart_slots.add((bot["metadata"]["namespace"], bot["metadata"]["name"]))
    memo["fleet"] = fleet
    memo["tasks"] = tasks + start_watches(fleet, operator_settings)
    memo["ready"].set_result(fleet)
    log.info(
        "tradingbot operator started (namespace: %s, shard %s, max concurrent restarts: %s)",
        operator_settings.namespace or "all",
        shard,
        operator_settings.max_concurrent_restarts or "unlimited",
    )


def start_watches(fleet: Fleet, settings: OperatorSettings) -> list[asyncio.Task[None]]:
    """The operator-wide polls: node heartbeats and the fleet-wide kill switch."""
    tasks: list[asyncio.Task[None]] = []
    if settings.node_heartbeats:
        fleet.nodes = NodeHeartbeats(fleet.api.client, settings.node_poll_seconds)
        tasks.append(asyncio.create_task(fleet.nodes.run(fleet.wake_nodes)))
    if settings.fleet_switch:
        namespace, _, name = settings.fleet_switch.partition("/")
        fleet.fleet_switch = FleetSwitch(fleet.api.client, namespace, name)
        tasks.append(asyncio.create_task(fleet.fleet_switch.run(fleet.wake_all)))
    return tasks


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    if "leaving" in memo:
        memo["leaving"].set()
        await cancel([memo["leading"]])
    await cancel(memo.get("tasks") or [])
    if "fence" in memo:
        await memo["fence"].release()  # the standby takes over now, not after expiry
        await memo["lease_client"].close()
    fleet: Fleet | None = memo.get("fleet")
    if fleet is not None:
        await fleet.api.close()  # after the daemons: kopf stops them before cleanup
    elif "standby_api" in memo:
        await memo["standby_api"].close()


def in_shard(namespace: str | None, name: str | None, memo: Any, **_: Any) -> bool:
    settings: OperatorSettings = memo["settings"]
    return settings.shard_rule.owns(str(namespace), str(name))


async def _led_fleet(memo: Any) -> Fleet:
    """The fleet once this replica leads (at once without leader election)."""
    fleet: Fleet = await asyncio.shield(memo["ready"])
    return fleet


@kopf.daemon(API_GROUP, VERSION, PLURAL, cancellation_timeout=10.0, when=in_shard)
async def bot_loop(
    namespace: str | None,
    name: str,
    stopped: kopf.DaemonStopped,
    memo: Any,
    **_: Any,
) -> None:
    led = asyncio.ensure_future(_led_fleet(memo))
    stopping = asyncio.ensure_future(stopped.wait())
    await asyncio.wait({led, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not led.done():  # a standby being stopped
        led.cancel()
        return
    fleet = led.result()
    reconciler = BotReconciler(fleet, str(namespace), name)
    # kopf starts the loop as it sends the patch adding its finalizer: a first status write
    # made before our watch brings that change would be refused (at a cold start, a refused
    # write and a read more per bot).
    own = fleet.settings.shard_rule.finalizer(FINALIZER)
    await reconciler.until_cached(
        lambda bot: own in ((bot.get("metadata") or {}).get("finalizers") or []),
        FINALIZER_WAIT_SECONDS,
    )
    await reconciler.run(stopped)


@kopf.on.delete(API_GROUP, VERSION, PLURAL, when=in_shard)
async def bot_deleted(
    namespace: str | None, name: str, memo: Any, patch: kopf.Patch, **_: Any
) -> None:
    """The finalizer: stop the bot gracefully, keep its state, then let the object go. A
    standby waits here (writing nothing) until it leads or the leader removes the finalizer."""
    fleet = await _led_fleet(memo)
    if not await BotReconciler(fleet, str(namespace), name).finalize_once():
        raise kopf.TemporaryError("waiting for the bot to stop gracefully", delay=1)
    own = fleet.settings.shard_rule.finalizer(FINALIZER)
    # Applied by kopf to the freshest body, with the removal of its own finalizer.
    patch.fns.append(lambda body: _drop_foreign_finalizers(body, own))


def _drop_foreign_finalizers(body: Any, own: str) -> None:
    meta = body.get("metadata") or {}
    for stale in foreign_finalizers(list(meta.get("finalizers") or []), FINALIZER, own):
        meta["finalizers"].remove(stale)
