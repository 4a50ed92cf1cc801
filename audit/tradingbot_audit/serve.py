"""The audit sidecar process: `python -m tradingbot_audit --log-dir DIR serve`.

The chart runs it as a StatefulSet of one, its own pod and ServiceAccount, with the log
directory on a PersistentVolume. It is the only process that writes the log (the writer's
flock enforces that, and a StatefulSet never runs two pods of one identity), so every event
reaches the chain through here, whichever operator replica leads. This module opens the
listeners (the main one with bearer tokens; an unauthenticated loopback ingest for an operator
in the same pod, when asked for; see handlers.py),
optionally with TLS, runs hourly retention, and on SIGTERM or SIGINT stops accepting,
finishes in-flight writes and closes the writer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import signal
import ssl
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Final

from aiohttp import web

from .auth import AUTH_CACHE_SECONDS, CachingAuthorizer, KubeAuthorizer
from .head import DEFAULT_MIN_INTERVAL, ConfigMapHeadStore, parse_configmap_ref
from .ingest import SerialWriter
from .server import ACCEPT_MISMATCH_FLAG, AuditServer, HeadSettings
from .writer import DEFAULT_MAX_FILE_BYTES

log = logging.getLogger(__name__)

DEFAULT_INGEST_LISTEN: Final = "127.0.0.1:8900"
DEFAULT_LISTEN: Final = "0.0.0.0:8901"
DEFAULT_SHUTDOWN_TIMEOUT: Final = 20.0
RETENTION_INTERVAL_SECONDS: Final = 3600.0


def parse_listen(value: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or `:port` (all interfaces) → (host, port)."""
    host, sep, port_text = value.rpartition(":")
    if not sep:
        raise ValueError(f"listen address {value!r} must be HOST:PORT")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"listen address {value!r}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"listen address {value!r}: port {port} is out of range")
    return host or "0.0.0.0", port


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServeOptions:
    log_dir: Path
    ingest_listen: str = DEFAULT_INGEST_LISTEN
    listen: str = DEFAULT_LISTEN
    kubeconfig: str | None = None
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    retention_days: int | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    auth_cache_seconds: float = AUTH_CACHE_SECONDS
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT
    head_configmap: str | None = None
    head_interval: float = DEFAULT_MIN_INTERVAL
    accept_head_mismatch: bool = False
    operator_user: tuple[str, ...] = ()

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ServeOptions:
        """The options of `serve`, named alike on the command line (`--head-interval`)."""
        values = {f.name: getattr(args, f.name) for f in fields(cls)}
        values["operator_user"] = tuple(values["operator_user"] or ())
        return cls(**values)


@dataclass
class RunningServer:
    """A started sidecar: its listeners' actual addresses, and how to stop it.

    `ingest_address` is None when the sidecar refuses to append (see AuditServer.refusal).
    """

    server: AuditServer
    runners: list[web.AppRunner]
    ingest_address: tuple[str, int] | None
    api_address: tuple[str, int]
    timers: list[asyncio.Task[None]]

    async def stop(self) -> None:
        """Stop accepting, finish in-flight requests (and so their writes), close the writer."""
        for timer in self.timers:
            timer.cancel()
        for timer in self.timers:
            with contextlib.suppress(asyncio.CancelledError):
                await timer
        # Both listeners stop accepting at once; each then waits for its in-flight handlers.
        await asyncio.gather(*(runner.cleanup() for runner in self.runners))
        await self.server.close()


async def _retention_loop(writer: SerialWriter, interval: float) -> None:
    # The writer applies retention on open and on day rotation; this covers a log that stays
    # idle for days.
    while True:
        await asyncio.sleep(interval)
        await writer.apply_retention()


def _address(runner: web.AppRunner) -> tuple[str, int]:
    address = runner.addresses[0]
    return str(address[0]), int(address[1])


async def start_server(
    server: AuditServer,
    *,
    ingest_listen: str = DEFAULT_INGEST_LISTEN,
    listen: str = DEFAULT_LISTEN,
    ssl_context: ssl.SSLContext | None = None,
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
    retention_interval: float | None = None,
) -> RunningServer:
    """Open the writer and the listeners (port 0 picks a free port; see the result); an
    empty `ingest_listen` opens no loopback ingest."""
    ingest_at = parse_listen(ingest_listen) if ingest_listen else None
    api_host, api_port = parse_listen(listen)
    if ingest_at is not None and not is_loopback(ingest_at[0]):
        log.warning(
            "the ingest listener %s is not a loopback address: anyone who can reach it can "
            "write audit events without authentication",
            ingest_listen,
        )
    await server.start()
    runners: list[web.AppRunner] = []
    ingest: web.AppRunner | None = None
    try:
        if server.refusal is None and ingest_at is not None:
            # No access log on ingest: one line per operator batch is noise; errors are logged.
            ingest = web.AppRunner(
                server.ingest_app(), access_log=None, shutdown_timeout=shutdown_timeout
            )
            await ingest.setup()
            runners.append(ingest)
            await web.TCPSite(ingest, *ingest_at).start()
        api = web.AppRunner(server.api_app(), shutdown_timeout=shutdown_timeout)
        await api.setup()
        runners.append(api)
        await web.TCPSite(api, api_host, api_port, ssl_context=ssl_context).start()
    except BaseException:
        for runner in runners:
            await runner.cleanup()
        await server.close()
        raise
    timers: list[asyncio.Task[None]] = []
    if retention_interval and server.refusal is None:
        timers.append(asyncio.create_task(_retention_loop(server.writer, retention_interval)))
    ingest_address = None if ingest is None else _address(ingest)
    return RunningServer(server, runners, ingest_address, _address(api), timers)


def _where(address: tuple[str, int] | None) -> str:
    return "off" if address is None else f"on {address[0]}:{address[1]}"


def _tls_context(options: ServeOptions) -> ssl.SSLContext | None:
    if not options.tls_cert_file and not options.tls_key_file:
        return None
    if not (options.tls_cert_file and options.tls_key_file):
        raise ValueError("--tls-cert-file and --tls-key-file go together")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(options.tls_cert_file, options.tls_key_file)
    return context


async def run(options: ServeOptions, stop: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM or SIGINT (or `stop` is set), then shut down gracefully."""
    stop = stop or asyncio.Event()
    if options.accept_head_mismatch and not options.head_configmap:
        raise ValueError(f"{ACCEPT_MISMATCH_FLAG} goes with --head-configmap")
    head_ref = (
        None if options.head_configmap is None else parse_configmap_ref(options.head_configmap)
    )
    kube = KubeAuthorizer.from_kubeconfig(options.kubeconfig)
    authorizer = CachingAuthorizer(kube, ttl=options.auth_cache_seconds)
    head = None
    if head_ref is not None:
        head = HeadSettings(
            ConfigMapHeadStore(kube.api, *head_ref),
            min_interval=options.head_interval,
            accept_mismatch=options.accept_head_mismatch,
        )
    server = AuditServer.create(
        options.log_dir,
        authorizer,
        max_file_bytes=options.max_file_bytes,
        retention_days=options.retention_days,
        head=head,
        operator_users=options.operator_user,
    )
    try:
        running = await start_server(
            server,
            ingest_listen=options.ingest_listen,
            listen=options.listen,
            ssl_context=_tls_context(options),
            shutdown_timeout=options.shutdown_timeout,
            retention_interval=RETENTION_INTERVAL_SECONDS if options.retention_days else None,
        )
    except BaseException:
        await kube.close()
        raise
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if server.refusal is None:
        log.info(
            "audit sidecar writing %s; ingest %s, API on %s:%d (operators: %s)",
            options.log_dir,
            _where(running.ingest_address),
            *running.api_address,
            ", ".join(options.operator_user) or "none",
        )
    else:
        log.error(
            "audit sidecar NOT writing %s (%s); no ingest; API on %s:%d",
            options.log_dir,
            server.refusal,
            *running.api_address,
        )
    try:
        await stop.wait()
        log.info("stopping: no new requests; finishing in-flight writes")
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await running.stop()
        await kube.close()
    log.info("audit sidecar stopped")
