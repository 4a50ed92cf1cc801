"""Start-up: the bot's TradingBot and credentials read from the API and the Secret volume,
and what they configure (strategy, audit reporting, state store, the trader Lease, the
exchange), with start-up reads retried until they succeed or a stop is requested.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final, TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_not_exception_type, wait_fixed

from tradingbot.config import ConfigError, parse_tradingbot
from tradingbot.credentials import read_credentials
from tradingbot.kube import EventRecorder, KubeApi, KubeError, tradingbot_path
from tradingbot.logsetup import REDACTOR
from tradingbot.orders import STARTUP_RETRY_SECONDS
from tradingbot.parts import RuntimeParts
from tradingbot.state.model import StateCorruptError
from tradingbot.state.stores import ConfigMapStateStore, FileStateStore
from tradingbot.strategy import Strategy
from tradingbot_api.constants import LABEL_BOT, ExchangeMode, StateBackend, lease_name
from tradingbot_api.lease import LeaseFence

log = logging.getLogger("tradingbot")

T = TypeVar("T")

# What no retry can fix: the bot stops with a configuration or state error instead.
NOT_RETRIED: Final = (ConfigError, ValueError, StateCorruptError)


def _log_retry(attempt: RetryCallState) -> None:
    exc = attempt.outcome.exception() if attempt.outcome else None
    log.warning("start-up request failed; retrying", extra={"error": str(exc)})


class StartupPart(RuntimeParts):
    async def _configure(self) -> None:
        s = self.settings
        if self.api is None:
            try:
                self.api = KubeApi.from_environment(s.kubeconfig)
            except Exception as exc:
                raise ConfigError(f"cannot load Kubernetes credentials: {exc}") from exc
        obj = await self._retry_api(lambda: self._read_tradingbot())
        if obj is None:
            return
        self._initial_object = obj
        self.events = EventRecorder(
            self.api,
            s.namespace,
            s.bot_name,
            bot_uid=str((obj.get("metadata") or {}).get("uid", "")),
            pod_name=s.pod_name,
        )
        config = parse_tradingbot(obj)
        self.config = config
        self.strategy = Strategy(config.profile, config.params)
        credentials = None
        if config.mode != ExchangeMode.PAPER:
            # Mounted before the container starts: a missing file is a broken pod template,
            # not something to wait for.
            credentials = await asyncio.to_thread(
                read_credentials, Path(s.credentials_dir), config.mode
            )
            REDACTOR.add(credentials.api_key, credentials.secret)
            self.credentials = credentials
        self._configure_audit()
        if self.store is None:
            if config.state_backend == StateBackend.PVC:
                self.store = FileStateStore(Path(s.state_dir))
            else:
                self.store = ConfigMapStateStore(self._api(), s.namespace, s.bot_name)
        duration = s.lease_duration_seconds
        self.fence = LeaseFence(
            self._api().transport,
            s.namespace,
            lease_name(s.bot_name),
            s.identity,
            labels={LABEL_BOT: s.bot_name},
            duration_seconds=duration,
            renew_interval=duration / 3,
            renew_deadline=duration * 2 / 3,
            retry_interval=min(1.0, duration / 5),
        )
        if self._exchange_factory is not None:
            self.exchange = self._exchange_factory(config)
        elif config.mode != ExchangeMode.PAPER:
            from tradingbot.exchange.live import LiveExchange

            assert credentials is not None
            self.exchange = LiveExchange(
                config.exchange_id,
                config.mode,
                api_key=credentials.api_key,
                secret=credentials.secret,
                sink=self.metrics,
            )
        if self.exchange is not None:
            try:
                await self._retry_api(self.exchange.open)
            except ValueError as exc:  # e.g. an exchange id ccxt does not know
                raise ConfigError(f"spec.exchange.id: {exc}") from exc
        log.info(
            "configured",
            extra={
                "bot": s.bot_name,
                "profile": config.profile,
                "exchange": config.exchange_id,
                "mode": config.mode,
                "symbols": list(config.symbols),
                "state_backend": self.store.backend,
                "identity": s.identity,
            },
        )

    def _api(self) -> KubeApi:
        assert self.api is not None
        return self.api

    async def _read_tradingbot(self) -> dict[str, Any]:
        s = self.settings
        try:
            return await self._api().get(tradingbot_path(s.namespace, s.bot_name))
        except KubeError as exc:
            if exc.not_found:
                raise ConfigError(f"TradingBot {s.namespace}/{s.bot_name} not found") from exc
            raise

    async def _retry_api(self, call: Callable[[], Awaitable[T]]) -> T | None:
        """Retry start-up reads until they succeed or a stop is requested (None then)."""
        policy = AsyncRetrying(
            retry=retry_if_not_exception_type(NOT_RETRIED),
            wait=wait_fixed(STARTUP_RETRY_SECONDS),
            stop=lambda _: self.stopping,
            sleep=self._sleep,
            before_sleep=_log_retry,
            retry_error_callback=lambda _: None,
        )
        async for attempt in policy:
            with attempt:
                if self.stopping:  # requested during the pause: no further attempt
                    return None
                return await call()
        return None
