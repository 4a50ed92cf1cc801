"""LiveExchange against a loopback server speaking the Binance spot REST subset it needs.

The real `ccxt.async_support.binance` class does the work: request building, HMAC-SHA256
signing, response parsing and error mapping. The server checks every signed request's
`signature` with the test secret and its `X-MBX-APIKEY` header, so a passing test proves
real signing happened. Only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest
from aiohttp import web

from tradingbot.exchange import CANCELED, FILLED, OPEN, REJECTED, ExchangeCallError
from tradingbot.exchange.live import LiveExchange
from tradingbot.kube import KubeApi
from tradingbot.metrics import BotMetrics

API_KEY = "loopback-api-key-0123456789abcdef"
SECRET = "loopback-secret-fedcba9876543210"
PRICE = 60_000.0


@dataclass
class FakeBinance:
    """Just enough of https://api.binance.com/api/v3 for a spot market-order bot."""

    api_key: str = API_KEY
    secret: str = SECRET
    price: float = PRICE
    fill_market_orders: bool = True
    balances: dict[str, float] = field(default_factory=lambda: {"USDT": 10_000.0, "BTC": 0.0})
    orders: dict[int, dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    signed_ok: int = 0
    # path -> statuses to answer with before behaving (e.g. [503] = one outage)
    outages: dict[str, list[int]] = field(default_factory=dict)
    # order POSTs that are executed but answered with 504, like a lost response
    lose_order_responses: int = 0
    _ids: Any = field(default_factory=lambda: itertools.count(1001))

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/api/v3/exchangeInfo", self.exchange_info)
        app.router.add_get("/api/v3/time", self.time)
        app.router.add_get("/api/v3/ticker/24hr", self.ticker_24hr)
        app.router.add_get("/api/v3/ticker/price", self.ticker_price)
        app.router.add_get("/api/v3/klines", self.klines)
        app.router.add_post("/api/v3/order", self.new_order)
        app.router.add_get("/api/v3/order", self.query_order)
        app.router.add_delete("/api/v3/order", self.cancel_order)
        app.router.add_get("/api/v3/account", self.account)
        return app

    # -- shared responses and checks
    @staticmethod
    def error(status: int, code: int, msg: str) -> web.Response:
        return web.json_response({"code": code, "msg": msg}, status=status)

    async def signed_params(self, request: web.Request) -> dict[str, str] | web.Response:
        """Verify the signature exactly as Binance does; return the parameters."""
        if request.headers.get("X-MBX-APIKEY") != self.api_key:
            return self.error(401, -2015, "Invalid API-key, IP, or permissions for action.")
        payload = (
            request.query_string if request.method in ("GET", "DELETE") else (await request.text())
        )
        signed, sep, signature = payload.rpartition("&signature=")
        expected = hmac.new(self.secret.encode(), signed.encode(), hashlib.sha256).hexdigest()
        if not sep or not hmac.compare_digest(signature, expected):
            return self.error(400, -1022, "Signature for this request is not valid.")
        params = dict(parse_qsl(signed))
        if abs(int(params["timestamp"]) - time.time() * 1000) > 60_000:
            return self.error(
                400, -1021, "Timestamp for this request is outside of the recvWindow."
            )
        self.signed_ok += 1
        return params

    def outage(self, request: web.Request) -> web.Response | None:
        self.requests.append((request.method, request.path))
        pending = self.outages.get(request.path)
        if pending:
            return web.Response(status=pending.pop(0), text="upstream unavailable")
        return None

    def order_json(self, order: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in order.items() if not k.startswith("_")}

    # -- public
    async def exchange_info(self, request: web.Request) -> web.Response:
        if (early := self.outage(request)) is not None:
            return early
        return web.json_response(
            {
                "timezone": "UTC",
                "serverTime": int(time.time() * 1000),
                "rateLimits": [],
                "exchangeFilters": [],
                "symbols": [
                    {
                        "symbol": "BTCUSDT",
                        "status": "TRADING",
                        "baseAsset": "BTC",
                        "baseAssetPrecision": 8,
                        "quoteAsset": "USDT",
                        "quotePrecision": 8,
                        "quoteAssetPrecision": 8,
                        "baseCommissionPrecision": 8,
                        "quoteCommissionPrecision": 8,
                        "orderTypes": ["LIMIT", "MARKET"],
                        "icebergAllowed": True,
                        "ocoAllowed": True,
                        "quoteOrderQtyMarketAllowed": True,
                        "allowTrailingStop": False,
                        "cancelReplaceAllowed": True,
                        "isSpotTradingAllowed": True,
                        "isMarginTradingAllowed": False,
                        "filters": [
                            {
                                "filterType": "PRICE_FILTER",
                                "minPrice": "0.01000000",
                                "maxPrice": "1000000.00000000",
                                "tickSize": "0.01000000",
                            },
                            {
                                "filterType": "LOT_SIZE",
                                "minQty": "0.00001000",
                                "maxQty": "9000.00000000",
                                "stepSize": "0.00001000",
                            },
                            {
                                "filterType": "NOTIONAL",
                                "minNotional": "5.00000000",
                                "applyMinToMarket": True,
                                "maxNotional": "9000000.00000000",
                                "applyMaxToMarket": False,
                                "avgPriceMins": 5,
                            },
                        ],
                        "permissions": [],
                        "permissionSets": [["SPOT"]],
                        "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
                        "allowedSelfTradePreventionModes": ["EXPIRE_MAKER"],
                    }
                ],
            }
        )

    async def time(self, request: web.Request) -> web.Response:
        self.outage(request)
        return web.json_response({"serverTime": int(time.time() * 1000)})

    def ticker(self) -> dict[str, Any]:
        now = int(time.time() * 1000)
        p = f"{self.price:.2f}"
        return {
            "symbol": "BTCUSDT",
            "priceChange": "0.00",
            "priceChangePercent": "0.000",
            "weightedAvgPrice": p,
            "prevClosePrice": p,
            "lastPrice": p,
            "lastQty": "0.1",
            "bidPrice": p,
            "bidQty": "1.0",
            "askPrice": p,
            "askQty": "1.0",
            "openPrice": p,
            "highPrice": p,
            "lowPrice": p,
            "volume": "100.0",
            "quoteVolume": "6000000.0",
            "openTime": now - 86_400_000,
            "closeTime": now,
            "firstId": 1,
            "lastId": 2,
            "count": 2,
        }

    async def ticker_24hr(self, request: web.Request) -> web.Response:
        if (early := self.outage(request)) is not None:
            return early
        return web.json_response(self.ticker())

    async def ticker_price(self, request: web.Request) -> web.Response:
        if (early := self.outage(request)) is not None:
            return early
        return web.json_response({"symbol": "BTCUSDT", "price": f"{self.price:.2f}"})

    async def klines(self, request: web.Request) -> web.Response:
        if (early := self.outage(request)) is not None:
            return early
        limit = int(request.query.get("limit", "500"))
        now = int(time.time() // 60 * 60_000)
        rows = []
        for i in range(limit):
            opened = now - (limit - i) * 60_000
            close = self.price * (1 + 0.001 * (i - limit + 1))
            rows.append(
                [
                    opened,
                    f"{close:.2f}",
                    f"{close:.2f}",
                    f"{close:.2f}",
                    f"{close:.2f}",
                    "1.0",
                    opened + 59_999,
                    "1.0",
                    1,
                    "0.5",
                    "0.5",
                    "0",
                ]
            )
        return web.json_response(rows)

    # -- signed
    async def new_order(self, request: web.Request) -> web.Response:
        if (early := self.outage(request)) is not None:
            return early
        params = await self.signed_params(request)
        if isinstance(params, web.Response):
            return params
        if params.get("symbol") != "BTCUSDT" or params.get("type") != "MARKET":
            return self.error(400, -1013, "Invalid order.")
        qty = float(params["quantity"])
        side = params["side"]
        cost = qty * self.price
        fee = cost * 0.001
        if side == "BUY" and cost + fee > self.balances["USDT"]:
            return self.error(400, -2010, "Account has insufficient balance for requested action.")
        order_id = next(self._ids)
        now = int(time.time() * 1000)
        filled = self.fill_market_orders
        order = {
            "symbol": "BTCUSDT",
            "orderId": order_id,
            "orderListId": -1,
            "clientOrderId": params.get("newClientOrderId", f"x-{order_id}"),
            "transactTime": now,
            "time": now,
            "updateTime": now,
            "price": "0.00000000",
            "origQty": f"{qty:.8f}",
            "executedQty": f"{qty if filled else 0:.8f}",
            "cummulativeQuoteQty": f"{cost if filled else 0:.8f}",
            "status": "FILLED" if filled else "NEW",
            "timeInForce": "GTC",
            "type": "MARKET",
            "side": side,
            "workingTime": now,
            "selfTradePreventionMode": "NONE",
            "_fills": [
                {
                    "price": f"{self.price:.2f}",
                    "qty": f"{qty:.8f}",
                    "commission": f"{fee:.8f}",
                    "commissionAsset": "USDT",
                    "tradeId": order_id,
                }
            ]
            if filled
            else [],
        }
        if filled:
            sign = 1 if side == "BUY" else -1
            self.balances["BTC"] += sign * qty
            self.balances["USDT"] -= sign * cost + fee
        self.orders[order_id] = order
        if self.lose_order_responses > 0:
            self.lose_order_responses -= 1
            return web.Response(status=504, text="Gateway Timeout")
        return web.json_response({**self.order_json(order), "fills": order["_fills"]})

    def find(self, params: dict[str, str]) -> dict[str, Any] | None:
        if "orderId" in params:
            return self.orders.get(int(params["orderId"]))
        coid = params.get("origClientOrderId")
        return next((o for o in self.orders.values() if o["clientOrderId"] == coid), None)

    async def query_order(self, request: web.Request) -> web.Response:
        if (early := self.outage(request)) is not None:
            return early
        params = await self.signed_params(request)
        if isinstance(params, web.Response):
            return params
        order = self.find(params)
        if order is None:
            return self.error(400, -2013, "Order does not exist.")
        return web.json_response(self.order_json(order))

    async def cancel_order(self, request: web.Request) -> web.Response:
        if (early := self.outage(request)) is not None:
            return early
        params = await self.signed_params(request)
        if isinstance(params, web.Response):
            return params
        order = self.find(params)
        if order is None or order["status"] != "NEW":
            return self.error(400, -2011, "Unknown order sent.")
        order["status"] = "CANCELED"
        return web.json_response(
            {**self.order_json(order), "origClientOrderId": order["clientOrderId"]}
        )

    async def account(self, request: web.Request) -> web.Response:
        if (early := self.outage(request)) is not None:
            return early
        params = await self.signed_params(request)
        if isinstance(params, web.Response):
            return params
        return web.json_response(
            {
                "makerCommission": 10,
                "takerCommission": 10,
                "buyerCommission": 0,
                "sellerCommission": 0,
                "canTrade": True,
                "canWithdraw": False,
                "canDeposit": False,
                "brokered": False,
                "requireSelfTradePrevention": False,
                "preventSor": False,
                "updateTime": int(time.time() * 1000),
                "accountType": "SPOT",
                "permissions": ["SPOT"],
                "uid": 1,
                "balances": [
                    {"asset": a, "free": f"{v:.8f}", "locked": "0.00000000"}
                    for a, v in self.balances.items()
                ],
            }
        )


@pytest.fixture
async def binance() -> AsyncIterator[tuple[FakeBinance, str]]:
    fake = FakeBinance()
    runner = web.AppRunner(fake.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield fake, f"http://127.0.0.1:{port}"
    await runner.cleanup()


@functools.cache
def api_families() -> tuple[str, ...]:
    import ccxt.async_support as ccxt

    return tuple(ccxt.binance().urls["api"])


def urls(base: str) -> dict[str, str]:
    # Every API family the binance class knows, so a stray call hits the loopback (and 404s)
    # instead of the internet.
    families = api_families()
    mapped = {name: f"{base}/api/v3" for name in families}
    mapped["v1"] = f"{base}/api/v1"
    return mapped


async def live(
    base: str, *, mode: str = "sandbox", secret: str = SECRET, metrics: BotMetrics | None = None
) -> LiveExchange:
    exchange = LiveExchange(
        "binance",
        mode,
        api_key=API_KEY,
        secret=secret,
        sink=metrics or BotMetrics("loopback"),
        api_urls=urls(base),
        base_delay=0.01,
        timeout_ms=5_000,
    )
    await exchange.open()
    return exchange


def metric(metrics: BotMetrics, name: str, labels: dict[str, str]) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return value or 0.0


async def test_places_fetches_and_cancels_orders_with_real_signing(
    binance: tuple[FakeBinance, str],
) -> None:
    fake, base = binance
    metrics = BotMetrics("loopback")
    exchange = await live(base, metrics=metrics)
    try:
        assert exchange.client.isSandboxModeEnabled
        assert exchange.client.options["defaultType"] == "spot"
        assert ("GET", "/api/v3/exchangeInfo") in fake.requests
        assert exchange.amount_to_precision("BTC/USDT", 0.0012345) == 0.00123
        assert await exchange.fetch_price("BTC/USDT") == PRICE

        bought = await exchange.market_order("BTC/USDT", "buy", 0.01, "tbclientorder1")
        assert bought.status == FILLED and bought.execution is not None
        assert bought.client_order_id == "tbclientorder1"
        assert bought.execution.amount == pytest.approx(0.01)
        assert bought.execution.price == pytest.approx(PRICE)
        assert bought.execution.fee == pytest.approx(0.6)
        assert bought.execution.fee_currency == "USDT"
        assert fake.orders[int(bought.order_id)]["clientOrderId"] == "tbclientorder1"

        fake.fill_market_orders = False
        resting = await exchange.market_order("BTC/USDT", "sell", 0.005, "tbclientorder2")
        assert resting.status == OPEN and resting.order_id
        fetched = await exchange.fetch_order("BTC/USDT", resting.order_id)
        assert fetched is not None and fetched.status == OPEN
        by_coid = await exchange.fetch_order("BTC/USDT", client_order_id="tbclientorder2")
        assert by_coid is not None and by_coid.order_id == resting.order_id
        canceled = await exchange.cancel_order("BTC/USDT", resting.order_id)
        assert canceled.status == CANCELED
        after = await exchange.fetch_order("BTC/USDT", resting.order_id)
        assert after is not None and after.status == CANCELED
        assert fake.orders[int(resting.order_id)]["status"] == "CANCELED"

        assert await exchange.fetch_order("BTC/USDT", "999999") is None
        balances = await exchange.fetch_balances()
        assert balances["BTC"] == pytest.approx(0.01)
        assert fake.signed_ok >= 7
        assert (
            metric(
                metrics,
                "tradingbot_exchange_request_duration_seconds_count",
                {"method": "create_order"},
            )
            == 2
        )
    finally:
        await exchange.close()


async def test_insufficient_funds_is_a_recorded_refusal(binance: tuple[FakeBinance, str]) -> None:
    fake, base = binance
    exchange = await live(base)
    try:
        result = await exchange.market_order("BTC/USDT", "buy", 10.0, "tbtoomuch")
        assert result.status == REJECTED
        assert result.error_type == "InsufficientFunds"
        assert fake.orders == {}
    finally:
        await exchange.close()


async def test_network_errors_are_retried_with_backoff(binance: tuple[FakeBinance, str]) -> None:
    fake, base = binance
    metrics = BotMetrics("loopback")
    exchange = await live(base, metrics=metrics)
    try:
        fake.outages["/api/v3/ticker/24hr"] = [503, 502]
        assert await exchange.fetch_price("BTC/USDT") == PRICE
        errors = sum(
            metric(metrics, "tradingbot_exchange_errors_total", {"error_type": t})
            for t in ("ExchangeNotAvailable", "NetworkError", "RequestTimeout")
        )
        assert errors == 2
        fake.outages["/api/v3/ticker/24hr"] = [503] * 10
        with pytest.raises(ExchangeCallError) as failed:
            await exchange.fetch_price("BTC/USDT")
        assert failed.value.error_type == "ExchangeNotAvailable"
    finally:
        await exchange.close()


async def test_failed_opens_leave_no_client_session_open(
    binance: tuple[FakeBinance, str],
) -> None:
    import asyncio
    import gc
    import warnings

    fake, base = binance
    exchange = LiveExchange(
        "binance",
        "sandbox",
        api_key=API_KEY,
        secret=SECRET,
        sink=BotMetrics("loopback"),
        api_urls=urls(base),
        attempts=2,
        base_delay=0.01,
        timeout_ms=5_000,
    )
    loop = asyncio.get_running_loop()
    reported: list[str] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: reported.append(str(context.get("message"))))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # Each open fails after its retries, as the runtime's start-up loop sees it.
            fake.outages["/api/v3/exchangeInfo"] = [503] * 10
            for _ in range(5):
                with pytest.raises(ExchangeCallError):
                    await exchange.open()
                assert exchange.client is None
            await exchange.open()  # the exchange is back
            assert exchange.amount_to_precision("BTC/USDT", 0.0012345) == 0.00123
            await exchange.open()  # opening again replaces the client, closing the old one
            await exchange.close()
            gc.collect()
            await asyncio.sleep(0)
        unclosed = [str(w.message) for w in caught if "Unclosed" in str(w.message)]
        assert unclosed == [] and [m for m in reported if "Unclosed" in m] == []
        assert fake.requests.count(("GET", "/api/v3/exchangeInfo")) >= 10
    finally:
        loop.set_exception_handler(previous)


async def test_an_order_whose_response_was_lost_is_not_sent_twice(
    binance: tuple[FakeBinance, str],
) -> None:
    fake, base = binance
    exchange = await live(base)
    try:
        fake.lose_order_responses = 1
        result = await exchange.market_order("BTC/USDT", "buy", 0.01, "tbambiguous1")
        assert result.status == FILLED
        assert len(fake.orders) == 1  # found by clientOrderId, not re-sent
        assert [r for r in fake.requests if r == ("POST", "/api/v3/order")] == [
            ("POST", "/api/v3/order")
        ]
    finally:
        await exchange.close()


async def test_a_retry_is_not_sent_once_the_bot_may_no_longer_order(
    binance: tuple[FakeBinance, str],
) -> None:
    fake, base = binance
    exchange = await live(base)
    try:
        fake.outages["/api/v3/order"] = [503]  # the first attempt fails before the exchange
        allowed = iter([False])  # ... and a halt arrives before the retry
        with pytest.raises(ExchangeCallError) as held:
            await exchange.market_order(
                "BTC/USDT", "buy", 0.01, "tbheldback1", may_send=lambda: next(allowed)
            )
        assert held.value.error_type == "OrderHeldBack"
        assert fake.requests.count(("POST", "/api/v3/order")) == 1  # never sent again
        assert fake.orders == {}
    finally:
        await exchange.close()


async def test_a_wrong_secret_fails_fast_without_retries(binance: tuple[FakeBinance, str]) -> None:
    fake, base = binance
    exchange = await live(base, secret="not-the-secret-at-all")
    try:
        with pytest.raises(ExchangeCallError) as failed:
            await exchange.fetch_balances()
        assert failed.value.error_type == "AuthenticationError"
        assert fake.requests.count(("GET", "/api/v3/account")) == 1
        assert fake.signed_ok == 0
    finally:
        await exchange.close()


# ------------------------------------------------------------------ the runtime, live mode


def sandbox_runtime(base: str, store: Any, credentials_dir: Path, pod: str = "pod-a") -> Any:
    """BotRuntime in sandbox mode, credentials from the files of a mounted Secret volume (as
    the kubelet writes them, newline-terminated), exchange on the loopback."""
    from tests.fakeapi import FakeApiServer
    from tradingbot.config import Settings
    from tradingbot.exchange import SeededPriceFeed
    from tradingbot.runtime import BotRuntime

    credentials_dir.mkdir(parents=True, exist_ok=True)
    for name, value in (("apiKey", API_KEY), ("secret", SECRET)):
        path = credentials_dir / name
        if not path.exists():
            path.write_text(value + "\n")
            path.chmod(0o440)
    kube = FakeApiServer()
    kube.put(
        {
            "apiVersion": "trading.r7.dev/v1alpha1",
            "kind": "TradingBot",
            "metadata": {"name": "alpha", "namespace": "bots"},
            "spec": {
                "profile": "volatile",
                "symbols": ["BTC/USDT"],
                "exchange": {
                    "id": "binance",
                    "mode": "sandbox",
                    "credentialsSecretRef": {"name": "keys"},
                },
                "strategy": {
                    "params": {
                        "lookback": 2,
                        "entryThresholdPct": 0.05,
                        "exitThresholdPct": 0.0,
                        "seed": 5,
                    }
                },
            },
        },
    )
    settings = Settings(
        bot_name="alpha",
        namespace="bots",
        pod_name=pod,
        metrics_port=0,
        tick_seconds=0.02,
        checkpoint_interval_seconds=0.5,
        lease_duration_seconds=3,
        grace_period_seconds=10,
        credentials_dir=str(credentials_dir),
    )

    def exchange(config: Any) -> LiveExchange:
        # Signs with what the runtime read from the files: the fake checks every signature.
        assert runtime.credentials is not None
        return LiveExchange(
            "binance",
            "sandbox",
            api_key=runtime.credentials.api_key,
            secret=runtime.credentials.secret,
            sink=runtime.metrics,
            api_urls=urls(base),
            base_delay=0.01,
            timeout_ms=5_000,
        )

    runtime = BotRuntime(
        settings,
        api=KubeApi(kube),
        store=store,
        exchange_factory=exchange,
        feed_factory=lambda config, state: SeededPriceFeed("volatile", 5),
    )
    return runtime


async def until(predicate: Any, limit: float = 15.0) -> Any:
    import asyncio

    deadline = asyncio.get_running_loop().time() + limit
    while asyncio.get_running_loop().time() < deadline:
        if value := predicate():
            return value
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


async def test_live_orders_are_recorded_before_they_are_sent(
    binance: tuple[FakeBinance, str], tmp_path: Path
) -> None:
    import asyncio

    from tradingbot.state import MemoryStateStore

    fake, base = binance
    store = MemoryStateStore()
    runtime = sandbox_runtime(base, store, tmp_path / "credentials")
    task = asyncio.create_task(runtime.run())
    await until(lambda: runtime.state.stats.total_trades >= 2)
    runtime.request_stop()
    assert await asyncio.wait_for(task, 10) == 0
    reasons = [s.reason for s in store.saved]
    first_order = reasons.index("order")
    assert "fill" in reasons[first_order:]  # intent stored, then the fill
    intent = store.saved[first_order].open_orders[0]
    assert intent.status == "submitting" and intent.client_order_id.startswith("tb")
    sent = {o["clientOrderId"] for o in fake.orders.values()}
    recorded = {f.client_order_id for f in store.saved[-1].journal}
    assert recorded == sent  # every order the exchange filled is in the state, and only those
    assert store.saved[-1].reason == "shutdown" and store.saved[-1].open_orders == ()
    assert store.saved[-1].balances["USDT"] == pytest.approx(fake.balances["USDT"])
    assert fake.signed_ok >= 2  # signed with the key and secret from the mounted files


async def test_an_order_filled_while_the_bot_was_down_is_applied_on_restore(
    binance: tuple[FakeBinance, str], tmp_path: Path
) -> None:
    import asyncio

    from tradingbot.state import MemoryStateStore

    fake, base = binance
    fake.fill_market_orders = False  # orders rest on the book
    store = MemoryStateStore()
    first = sandbox_runtime(base, store, tmp_path / "credentials")
    task = asyncio.create_task(first.run())
    await until(lambda: any(o.status == "open" for o in first.state.open_orders))
    first.request_stop()
    await asyncio.wait_for(task, 10)
    (pending,) = store.saved[-1].open_orders
    assert store.saved[-1].stats.total_trades == 0

    # The exchange fills it while no bot runs.
    order = next(o for o in fake.orders.values() if o["clientOrderId"] == pending.client_order_id)
    qty = float(order["origQty"])
    order.update(
        status="FILLED", executedQty=f"{qty:.8f}", cummulativeQuoteQty=f"{qty * PRICE:.8f}"
    )

    second = sandbox_runtime(base, store, tmp_path / "credentials", pod="pod-b")
    task = asyncio.create_task(second.run())
    await until(lambda: second.health.ready)
    assert second.state.stats.total_trades >= 1
    fill = second.state.journal[0]
    assert fill.client_order_id == pending.client_order_id
    assert fill.amount == pytest.approx(qty) and fill.price == pytest.approx(PRICE)
    assert not any(o.client_order_id == pending.client_order_id for o in second.state.open_orders)
    second.request_stop()
    assert await asyncio.wait_for(task, 10) == 0


async def test_live_ticker_feed_warms_up_from_candles_and_reads_tickers(
    binance: tuple[FakeBinance, str],
) -> None:
    from tradingbot.exchange import CcxtTickerFeed

    fake, base = binance
    exchange = await live(base)
    feed = CcxtTickerFeed("binance", "1m", exchange=exchange.client)
    try:
        history = await feed.warmup(["BTC/USDT"], 30)
        assert len(history["BTC/USDT"]) == 30
        assert history["BTC/USDT"][-1] == pytest.approx(PRICE)
        fake.price = 61_000.0
        assert await feed.next_prices(["BTC/USDT"]) == {"BTC/USDT": 61_000.0}
        await feed.close()  # a shared client stays open for its owner
        assert await exchange.fetch_price("BTC/USDT") == 61_000.0
    finally:
        await exchange.close()


async def test_a_halt_cancels_the_bots_resting_entry_orders_on_the_exchange(
    binance: tuple[FakeBinance, str], tmp_path: Path
) -> None:
    import asyncio

    from tests.fakeapi import FakeApiServer
    from tradingbot.state import MemoryStateStore

    fake, base = binance
    fake.fill_market_orders = False  # orders rest on the book
    store = MemoryStateStore()
    runtime = sandbox_runtime(base, store, tmp_path / "credentials")
    task = asyncio.create_task(runtime.run())
    resting = await until(
        lambda: [o for o in runtime.state.open_orders if o.status == "open" and o.side == "buy"]
    )
    placed = len(fake.orders)
    assert runtime.api is not None
    kube = runtime.api.transport
    assert isinstance(kube, FakeApiServer)
    kube.annotate("TradingBot", "bots", "alpha", **{"trading.r7.dev/halt": "true"})
    await until(lambda: not runtime.state.open_orders)
    by_coid = {o["clientOrderId"]: o for o in fake.orders.values()}
    assert all(by_coid[o.client_order_id]["status"] == "CANCELED" for o in resting)
    assert ("DELETE", "/api/v3/order") in fake.requests
    await asyncio.sleep(0.3)
    assert len(fake.orders) == placed  # nothing new once halted
    assert runtime.state.stats.total_trades == 0  # the positions (none) are kept as they were
    halt = [s for s in store.saved if s.reason == "halt"]
    assert halt and halt[-1].open_orders == ()
    runtime.request_stop()
    assert await asyncio.wait_for(task, 10) == 0
