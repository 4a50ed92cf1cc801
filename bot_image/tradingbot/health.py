"""`/metrics`, `/healthz` and `/readyz` on the pod IP.

Ready means: this process holds the trader Lease, has restored its state and is trading, and
no kill switch or suspension is in force (`/readyz` then says why in `reason`).
Healthy means: the event loop answers and, while trading, the loop has ticked recently (a
wedged loop gets the container restarted; a process waiting for the Lease is healthy).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tradingbot.metrics import BotMetrics


@dataclass
class HealthState:
    ready: bool = False
    phase: str = "starting"  # starting | waiting-for-lease | restoring | trading | stopping
    detail: dict[str, Any] = field(default_factory=dict)
    last_tick: float = 0.0
    stale_after: float = 60.0
    clock: Callable[[], float] = time.monotonic

    def tick(self) -> None:
        self.last_tick = self.clock()

    @property
    def healthy(self) -> bool:
        if self.phase != "trading" or not self.last_tick:
            return True
        return self.clock() - self.last_tick < self.stale_after


class HealthServer:
    def __init__(
        self, health: HealthState, metrics: BotMetrics, host: str, port: int, pod: str = ""
    ) -> None:
        self.health = health
        self.metrics = metrics
        self.host = host
        self.port = port
        # Which pod answers: a probe reaching another pod's process (an address two clusters
        # share) is then visible instead of passing for this one.
        self.pod = pod
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        return app

    def _json(self, ok: bool) -> web.Response:
        body = {"ok": ok, "phase": self.health.phase, "pod": self.pod, **self.health.detail}
        return web.Response(
            status=200 if ok else 503,
            text=json.dumps(body, default=str),
            content_type="application/json",
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self.metrics.render(), headers={"Content-Type": self.metrics.content_type}
        )

    async def _healthz(self, request: web.Request) -> web.Response:
        return self._json(self.health.healthy)

    async def _readyz(self, request: web.Request) -> web.Response:
        return self._json(self.health.ready)

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0 and site._server is not None:  # ephemeral port, for tests
            sockets = getattr(site._server, "sockets", None) or []
            if sockets:
                self.port = sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
