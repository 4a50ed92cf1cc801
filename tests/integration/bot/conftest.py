"""The real bot process (`python -m tradingbot`) against the real API server: the harness.

Each bot runs as a subprocess under its own ServiceAccount (TokenRequest kubeconfig), with the
Role, Lease and state ConfigMap the operator would create for it, so RBAC is the production
one. Paper mode on the seeded price feed; only 127.0.0.1 is contacted. No operator runs.

Also here: the fleet switch ConfigMap with the read access the chart grants every
ServiceAccount, and a proxy in front of the API server that can cut the bot's watches while
every other request goes through.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web
from kubernetes import client

from localkube.cluster import LocalCluster, write_kubeconfig
from tests import kube
from tests.integration.conftest import SidecarProcess
from tradingbot.state import Fill, StateCheckpoint, decode_state

GROUP, VERSION, PLURAL = "trading.r7.dev", "v1alpha1", "tradingbots"
BOT = "alpha"
LEASE_SECONDS = 6
GRACE_SECONDS = 15

# Momentum with a hair trigger so that fills come within a few seconds.
PARAMS = {
    "lookback": 2,
    "entryThresholdPct": 0.05,
    "exitThresholdPct": 0.0,
    "priceFeed": "seeded",
    "seed": 11,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class BotProcess:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    started: float = field(default_factory=time.monotonic)

    def get(self, path: str) -> tuple[int, dict[str, Any] | str]:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.port}{path}", timeout=2
            ) as response:
                body = response.read().decode()
                status = response.status
        except urllib.error.HTTPError as exc:
            body, status = exc.read().decode(), exc.code
        except OSError:
            return 0, ""
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body

    @property
    def ready(self) -> bool:
        return self.get("/readyz")[0] == 200

    def logs(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.logs().splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue
        return lines

    def wait_exit(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def logged(self, message: str) -> list[dict[str, Any]]:
        return [line for line in self.log_lines() if line.get("message") == message]

    def metric(self, name: str) -> float | None:
        """A sample of this bot's /metrics (`name` with its labels, as exposed)."""
        status, text = self.get("/metrics")
        if status != 200:
            return None
        for line in str(text).splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        return None


@dataclass
class BotEnv:
    namespace: str
    kubeconfig: Path
    core: client.CoreV1Api
    custom: client.CustomObjectsApi
    coordination: client.CoordinationV1Api
    tmp: Path
    processes: list[BotProcess] = field(default_factory=list)

    def start(self, pod: str, **env: str) -> BotProcess:
        port = free_port()
        # One file per process: two processes may share a pod name.
        log_path = self.tmp / f"{pod}-{len(self.processes)}.log"
        environment = {
            **{k: v for k, v in os.environ.items() if k not in ("KUBECONFIG",)},
            "BOT_NAME": BOT,
            "POD_NAMESPACE": self.namespace,
            "POD_NAME": pod,
            "POD_UID": f"uid-{pod}",
            "POD_IP": "127.0.0.1",
            "METRICS_PORT": str(port),
            "KUBECONFIG": str(self.kubeconfig),
            "TICK_SECONDS": "0.05",
            "CHECKPOINT_INTERVAL_SECONDS": "1",
            "LEASE_DURATION_SECONDS": str(LEASE_SECONDS),
            "GRACE_PERIOD_SECONDS": str(GRACE_SECONDS),
            "LOG_LEVEL": "INFO",
            **env,
        }
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tradingbot"],
                env=environment,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        bot = BotProcess(pod, proc, port, log_path)
        self.processes.append(bot)
        return bot

    def state(self) -> StateCheckpoint | None:
        cm = self.core.read_namespaced_config_map(f"{BOT}-state", self.namespace)
        text = (cm.data or {}).get("state.json")
        return decode_state(text) if text else None

    def lease_holder(self) -> str | None:
        lease = self.coordination.read_namespaced_lease(f"{BOT}-trader", self.namespace)
        return lease.spec.holder_identity if lease.spec else None

    def events(self, reason: str) -> list[Any]:
        items = self.core.list_namespaced_event(self.namespace).items
        return [e for e in items if e.reason == reason]

    def status(self) -> dict[str, Any]:
        obj = cast(
            dict[str, Any],
            self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, BOT),
        )
        return dict(obj.get("status") or {})

    def kill_switch(self) -> tuple[str, bool] | None:
        """(mode, flat) as the bot reports them in status.killSwitch."""
        report = self.status().get("killSwitch")
        return None if report is None else (report.get("mode", ""), bool(report.get("flat")))

    def annotate(self, **values: str | None) -> datetime:
        """Set (None: remove) annotations on the TradingBot as an admin; returns a moment
        no later than when the API server stored the change."""
        before = datetime.now(UTC)
        body = {"metadata": {"annotations": values}}
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, BOT, body
        )
        return before

    def patch_spec(self, spec: dict[str, Any]) -> None:
        body = {"spec": spec}
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, BOT, body
        )


def fill_time(fill: Fill) -> datetime:
    return datetime.fromisoformat(fill.time.replace("Z", "+00:00"))


def log_time(line: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(str(line["time"]).replace("Z", "+00:00"))


def fills_after(state: StateCheckpoint | None, moment: datetime) -> list[Fill]:
    return [] if state is None else [f for f in state.journal if fill_time(f) > moment]


def tradingbot_manifest(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TradingBot",
        "metadata": {"name": BOT, "namespace": namespace},
        "spec": {
            "profile": "volatile",
            "exchange": {"id": "binance", "mode": "paper"},
            "symbols": ["BTC/USDT", "ETH/USDT"],
            "strategy": {"params": PARAMS},
        },
    }


@pytest.fixture
def bot_env(
    apply_crds: list[str],
    namespace: str,
    api_client: client.ApiClient,
    custom_api: client.CustomObjectsApi,
    core_api: client.CoreV1Api,
    apply_yaml: Callable[..., list[Any]],
    sa_kubeconfig: Callable[[str, str], Path],
    tmp_path: Path,
) -> Iterator[BotEnv]:
    from tradingbot_api.models import TradingBotSpec
    from tradingbot_operator.render import BotRef, render_bot_objects, service_account_name

    created = cast(
        dict[str, Any],
        custom_api.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, tradingbot_manifest(namespace)
        ),
    )
    ref = BotRef(namespace=namespace, name=BOT, uid=created["metadata"]["uid"])
    # What the operator creates before the pod: ServiceAccount, least-privilege Role and its
    # binding, the unheld Lease and the empty state ConfigMap.
    apply_yaml(render_bot_objects(ref, TradingBotSpec.model_validate(created["spec"])), namespace)
    env = BotEnv(
        namespace=namespace,
        kubeconfig=sa_kubeconfig(namespace, service_account_name(BOT)),
        core=core_api,
        custom=custom_api,
        coordination=client.CoordinationV1Api(api_client),
        tmp=tmp_path,
    )
    yield env
    for bot in env.processes:
        if bot.proc.poll() is None:
            bot.proc.kill()
            bot.proc.wait(timeout=10)


@pytest.fixture
def audit_sidecars(
    start_sidecar: Callable[..., SidecarProcess], tmp_path: Path
) -> Callable[[], SidecarProcess]:
    """Starts the audit sidecar as a process, every one on the same log directory, under a
    ServiceAccount bound to `system:auth-delegator` only (as the chart does)."""
    return lambda: start_sidecar(tmp_path / "audit")


FLEET_SWITCH = "fleet-switch"


@dataclass
class FleetSwitch:
    core: client.CoreV1Api
    namespace: str
    name: str = FLEET_SWITCH

    @property
    def env(self) -> str:
        return f"{self.namespace}/{self.name}"

    def set(self, mode: str | None) -> datetime:
        """Set (None: clear) the fleet-wide halt; returns a moment no later than the write."""
        before = datetime.now(UTC)
        self.core.patch_namespaced_config_map(self.name, self.namespace, {"data": {"halt": mode}})
        return before


@pytest.fixture
def fleet_switch(bot_env: BotEnv, apply_yaml: Callable[..., list[Any]]) -> FleetSwitch:
    """The fleet switch ConfigMap, readable (get/list/watch, this one object) by every
    ServiceAccount, as the chart grants it."""
    ns = bot_env.namespace
    apply_yaml(
        [
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": FLEET_SWITCH, "namespace": ns},
                "data": {},
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": "fleet-switch-reader", "namespace": ns},
                "rules": [
                    {
                        "apiGroups": [""],
                        "resources": ["configmaps"],
                        "resourceNames": [FLEET_SWITCH],
                        "verbs": ["get", "list", "watch"],
                    }
                ],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": "fleet-switch-reader", "namespace": ns},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": "fleet-switch-reader",
                },
                "subjects": [
                    {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "Group",
                        "name": "system:serviceaccounts",
                    }
                ],
            },
        ],
        ns,
    )
    return FleetSwitch(bot_env.core, ns)


# Headers that belong to one connection, not to the request or response forwarded.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "content-length",
        "content-encoding",
        "accept-encoding",
        "host",
        "upgrade",
    }
)


class WatchCutProxy:
    """Plain HTTP on loopback in front of the API server (TLS upstream, the cluster's CA).

    `cut()` stops every byte on watches, like a connection that died without a reset: open
    streams stall and new watch requests get no answer. Lists, Lease renewals, state writes,
    status and Events keep flowing, so only the control watch is what fails. `mend()` lets
    the watches flow again."""

    def __init__(self, upstream: str, ca_cert: Path) -> None:
        self.upstream = upstream.rstrip("/")
        self.ca_cert = ca_cert
        self.port = 0
        self.watch_requests = 0
        self._loop = asyncio.new_event_loop()
        self._flowing = asyncio.Event()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="watch-cut-proxy", daemon=True)
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("proxy did not start")

    def cut(self) -> None:
        self._loop.call_soon_threadsafe(self._flowing.clear)

    def mend(self) -> None:
        self._loop.call_soon_threadsafe(self._flowing.set)

    def stop(self) -> None:
        async def shutdown() -> None:
            self._flowing.set()
            if self._runner is not None:
                await self._runner.cleanup()
            if self._session is not None:
                await self._session.close()

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._setup())
        self._started.set()
        self._loop.run_forever()

    async def _setup(self) -> None:
        self._flowing.set()
        context = ssl.create_default_context(cafile=str(self.ca_cert))
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context))
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        watch = request.query.get("watch") in ("true", "1")
        if watch:
            self.watch_requests += 1
            await self._flowing.wait()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        body = await request.read()
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            headers=headers,
            data=body or None,
            timeout=aiohttp.ClientTimeout(total=None),
        ) as upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for key, value in upstream.headers.items():
                if key.lower() not in HOP_BY_HOP:
                    response.headers[key] = value
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                if watch:
                    await self._flowing.wait()
                await response.write(chunk)
            await response.write_eof()
            return response


@pytest.fixture
def watch_cut_proxy(
    cluster: LocalCluster, api_client: client.ApiClient, bot_env: BotEnv
) -> Iterator[tuple[WatchCutProxy, Path]]:
    """The proxy, and a kubeconfig for the bot's ServiceAccount that goes through it."""
    from tradingbot_operator.render import service_account_name

    proxy = WatchCutProxy(cluster.server, cluster.pki.ca_cert)
    proxy.start()
    account = service_account_name(BOT)
    token = kube.service_account_token(api_client, bot_env.namespace, account)
    path = write_kubeconfig(
        bot_env.tmp / "through-proxy.kubeconfig",
        proxy.url,
        cluster.pki.ca_cert,
        f"system:serviceaccount:{bot_env.namespace}:{account}",
        token=token,
        namespace=bot_env.namespace,
    )
    yield proxy, path
    proxy.stop()
