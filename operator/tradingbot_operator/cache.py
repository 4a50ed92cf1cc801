"""What the controller decides from: the TradingBots and the bot pods its watches deliver,
the pods indexed by the bot they belong to (label `trading.r7.dev/bot`).

A pass reads the cache, not the API server. That is safe because every write the
controller makes carries a precondition (resourceVersion on status, uid on delete, a name
derived from the config hash on create), so a stale cache can only cost a refused write and
another pass; and the controller reads its own writes: what a status patch, a pod create
or a pod delete answers goes into the cache at once (see `tradingbot_api.informer.Store`),
so the next pass never misses a pod it made. A pod missing from a synced cache was made by
someone else (a user, another process); it is seen when its watch event arrives, and before
any pod is created a quorum list of the bot's pods looks for exactly such a pod.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from tradingbot_api.constants import API_GROUP, LABEL_BOT, PLURAL, VERSION
from tradingbot_api.informer import Informer, Key, Object, object_key, without_managed_fields
from tradingbot_api.kubeclient import KubeClient

BotKey = tuple[str, str]  # (namespace, name) of a TradingBot


def _collection(prefix: str, namespace: str | None, plural: str) -> str:
    return f"{prefix}/namespaces/{namespace}/{plural}" if namespace else f"{prefix}/{plural}"


def bot_of(pod: Mapping[str, Any]) -> BotKey | None:
    meta = pod.get("metadata") or {}
    bot = (meta.get("labels") or {}).get(LABEL_BOT)
    return (str(meta.get("namespace") or ""), str(bot)) if bot else None


class FleetCache:
    """The bots and their pods, kept by two informers; `on_bot(key)` hears of every change
    to a bot or to one of its pods (the controller wakes that bot's loop)."""

    def __init__(
        self,
        client: KubeClient,
        namespace: str | None,
        on_bot: Callable[[BotKey], None],
        owns: Callable[[str, str], bool] | None = None,
        **informer_options: Any,
    ) -> None:
        self.on_bot = on_bot
        self.owns = owns
        self.bots = Informer(
            client,
            _collection(f"/apis/{API_GROUP}/{VERSION}", namespace, PLURAL),
            on_change=lambda key, _: on_bot(key),
            transform=without_managed_fields,
            keep=self._owned_bot if owns else None,
            **informer_options,
        )
        self.pods = Informer(
            client,
            _collection("/api/v1", namespace, "pods"),
            query={"labelSelector": LABEL_BOT},
            on_change=self._pod_changed,
            transform=without_managed_fields,
            keep=self._owned_pod if owns else None,
            **informer_options,
        )
        self._pods_of: dict[BotKey, set[Key]] = {}
        self._bot_of_pod: dict[Key, BotKey] = {}

    def _owned_bot(self, bot: Mapping[str, Any]) -> bool:
        meta = bot.get("metadata") or {}
        return self.owns is None or self.owns(str(meta.get("namespace")), str(meta.get("name")))

    def _owned_pod(self, pod: Mapping[str, Any]) -> bool:
        key = bot_of(pod)
        return key is not None and (self.owns is None or self.owns(*key))

    def start(self) -> list[asyncio.Task[None]]:
        return [
            asyncio.create_task(self.bots.run(), name="bots-informer"),
            asyncio.create_task(self.pods.run(), name="pods-informer"),
        ]

    async def synced(self) -> None:
        await asyncio.gather(self.bots.synced.wait(), self.pods.synced.wait())

    def bot(self, key: BotKey) -> Object | None:
        return self.bots.store.get(key)

    def pods_of(self, key: BotKey) -> list[Object]:
        """The bot's pods, sorted by name as a list from the API server is."""
        found = (self.pods.store.get(k) for k in sorted(self._pods_of.get(key, ())))
        return [pod for pod in found if pod is not None]

    def observe_bot(self, bot: Object) -> None:
        self.bots.store.observe(bot)

    def observe_pod(self, pod: Object) -> None:
        """A pod an API call answered with (created, or deleted with a grace period)."""
        if self.pods.store.observe(pod):
            self._index(object_key(pod))

    def _pod_changed(self, key: Key, pod: Object | None) -> None:
        bot = self._index(key)
        if bot is not None:
            self.on_bot(bot)

    def _index(self, key: Key) -> BotKey | None:
        """Keep the bot-to-pods index in step with the store for one pod; its bot."""
        before = self._bot_of_pod.pop(key, None)
        if before is not None:
            siblings = self._pods_of.get(before, set())
            siblings.discard(key)
            if not siblings:
                self._pods_of.pop(before, None)
        pod = self.pods.store.get(key)
        after = bot_of(pod) if pod is not None else None
        if after is not None:
            self._bot_of_pod[key] = after
            self._pods_of.setdefault(after, set()).add(key)
        return after or before
