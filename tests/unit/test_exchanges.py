"""The static exchange list (used by the CRD and the operator without ccxt) is ccxt's own."""

from __future__ import annotations

import ccxt

from tradingbot_api.exchanges import CCXT_VERSION, EXCHANGE_IDS


def test_the_static_list_is_the_installed_ccxt_list() -> None:
    assert list(EXCHANGE_IDS) == list(ccxt.exchanges), (
        f"ccxt {ccxt.__version__} (list made from {CCXT_VERSION}) has other exchanges; "
        f"EXCHANGE_IDS should be {tuple(ccxt.exchanges)!r}"
    )


def test_every_id_can_be_constructed_by_the_live_exchange_class_lookup() -> None:
    import ccxt.async_support as ccxt_async

    assert all(hasattr(ccxt_async, exchange_id) for exchange_id in EXCHANGE_IDS)
