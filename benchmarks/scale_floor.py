"""The floor of a fleet's cold start: a plain async script that makes exactly the objects the
operator makes for N stored TradingBots (each bot's ServiceAccount, Role, RoleBinding,
Lease, state ConfigMap and pod, rendered by the operator's own `render`, and one status
write), with no decisions, no checks and no audit. The stand-in kubelet of the scale
benchmark marks the pods Ready; the floor ends when every pod is. What the operator takes
beyond it is the operator's; the floor itself is the API server's (and the machine's).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from tradingbot_api.constants import API_GROUP, PLURAL, SPEC_DEFAULTS, VERSION
from tradingbot_api.kubeclient import KubeClient
from tradingbot_api.models import TradingBotSpec
from tradingbot_operator.hashing import config_hash
from tradingbot_operator.kubeapi import KubeApi
from tradingbot_operator.render import BotRef, render_bot_objects, render_bot_pod
from tradingbot_operator.settings import OperatorSettings

# Requests in flight at once (the operator's loops are not bounded either; the API server's
# max-in-flight limits both alike).
CONCURRENCY = 64


async def _one(api: KubeApi, body: dict[str, Any], settings: OperatorSettings) -> None:
    meta = body["metadata"]
    bot = BotRef(meta["namespace"], meta["name"], meta["uid"])
    spec = TradingBotSpec.from_dict(body["spec"])
    for obj in render_bot_objects(bot, spec):
        await api.create(obj)
    desired = config_hash(body["spec"], meta.get("annotations") or {}, SPEC_DEFAULTS)
    await api.create(render_bot_pod(bot, spec, body["spec"], desired, settings))
    await api.patch_bot_status(bot.namespace, bot.name, {"phase": "Starting"}, None)


def poll_seconds(bots: int) -> float:
    """How often to list a fleet to see whether it is done: a LIST of thousands of objects
    is itself work for the API server, so larger fleets are looked at less often."""
    return max(0.5, bots / 1000)


async def _all_ready(client: KubeClient, namespace: str, bots: int) -> None:
    while True:
        listed = await client.request("GET", f"/api/v1/namespaces/{namespace}/pods")
        ready = sum(
            any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in (p.get("status") or {}).get("conditions") or []
            )
            for p in listed.get("items") or []
        )
        if ready >= bots:
            return
        await asyncio.sleep(poll_seconds(bots))


async def _floor(kubeconfig: Path, namespace: str, bots: int) -> float:
    client = KubeClient.from_environment(str(kubeconfig))
    api = KubeApi(client)
    settings = OperatorSettings(node_heartbeats=False)
    try:
        listed = await client.request(
            "GET", f"/apis/{API_GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
        )
        items = list(listed.get("items") or [])
        gate = asyncio.Semaphore(CONCURRENCY)

        async def bounded(body: dict[str, Any]) -> None:
            async with gate:
                await _one(api, body, settings)

        started = time.perf_counter()
        await asyncio.gather(*(bounded(b) for b in items))
        await _all_ready(client, namespace, len(items))
        return time.perf_counter() - started
    finally:
        await client.close()


def floor_seconds(kubeconfig: Path, namespace: str, bots: int) -> float:
    """Seconds from nothing made to every pod Ready, for the bots stored in `namespace`."""
    return asyncio.run(_floor(kubeconfig, namespace, bots))
