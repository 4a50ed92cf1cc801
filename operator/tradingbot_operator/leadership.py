"""Leader election per shard: replicas of one shard contend for its Lease; only the holder
builds the fleet cache and reconciles, the others serve the deletion webhook and wait.

kopf's peering only pauses operators that see each other; it is not leader election. Here
the holder is fenced the way a bot is (`tradingbot_api.lease`): every pass first asks
whether the Lease is still valid by this process's clock, and a replica that loses it, or
cannot renew it before the deadline, exits at once (a fresh process starts as a standby), so
two replicas of a shard never act at once. A replica stopped normally releases the Lease,
so its successor takes over without waiting for expiry.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable

from tradingbot_api.kubeclient import KubeClient
from tradingbot_api.lease import LeaseFence
from tradingbot_operator.sharding import Shard

log = logging.getLogger(__name__)

# Takeover after the leader's death: at most the duration (the standby must see the Lease
# unchanged that long) plus one retry interval, then the cache sync.
LEASE_DURATION_SECONDS = 10
RENEW_INTERVAL_SECONDS = 2.0
RENEW_DEADLINE_SECONDS = 7.0
RETRY_INTERVAL_SECONDS = 1.0
EXIT_LEADERSHIP_LOST = 3


def replica_identity() -> str:
    """The pod (downward API POD_NAME, else the host) and a nonce drawn per process."""
    pod = os.environ.get("POD_NAME") or socket.gethostname()
    return f"{pod}_{uuid.uuid4().hex[:12]}"


def leader_fence(client: KubeClient, namespace: str, shard: Shard) -> LeaseFence:
    return LeaseFence(
        client,
        namespace,
        shard.lease_name,
        replica_identity(),
        labels={
            "app.kubernetes.io/name": "tradingbot-operator",
            "trading.r7.dev/shard": str(shard.index),
        },
        purpose=f"leader lease of shard {shard}",
        duration_seconds=LEASE_DURATION_SECONDS,
        renew_interval=RENEW_INTERVAL_SECONDS,
        renew_deadline=RENEW_DEADLINE_SECONDS,
        retry_interval=RETRY_INTERVAL_SECONDS,
    )


async def lead(
    fence: LeaseFence,
    start: Callable[[], Awaitable[None]],
    stop: asyncio.Event,
    on_lost: Callable[[], None],
) -> None:
    """Wait for the Lease, `start` the fleet, keep the Lease; `on_lost` when it goes."""
    if not await fence.acquire(stop):
        return
    try:
        await start()
    except Exception:
        # Holding the Lease with nothing running would keep the standby waiting forever.
        log.exception("the fleet did not start under the leader lease")
        on_lost()
        return
    renewing = asyncio.create_task(fence.keep_renewed(), name="leader-lease-renewal")
    try:
        # A renewal stuck behind a slow API server must not keep a stale leader alive: the
        # deadline is judged here too, between renewals, by this process's clock.
        while not renewing.done() and fence.held:
            await asyncio.wait({renewing}, timeout=fence.renew_interval)
    finally:
        renewing.cancel()
    if not stop.is_set():
        on_lost()


def exit_now() -> None:
    """The Lease is gone: no further pass may run, so leave without a graceful stop."""
    log.critical("leader lease lost: exiting so that the new leader acts alone")
    logging.shutdown()
    os._exit(EXIT_LEADERSHIP_LOST)
