"""Credentials never reach the log: message, arguments, extra fields, tracebacks."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from tradingbot.credentials import Credentials
from tradingbot.logsetup import (
    JsonFormatter,
    SecretRedactingFilter,
    SecretRedactor,
    configure_logging,
)

API_KEY = "vmPUZE6mv9SD5VNHk4HlWFsOr6aKE2zvsw0MuIgwCIPy6utIco14y7Ju91duEh8A"
SECRET = "NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j"


@pytest.fixture
def capture() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    redactor = SecretRedactor()
    redactor.add(API_KEY, SECRET, "short", None)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(SecretRedactingFilter(redactor))
    handler.setFormatter(JsonFormatter({"bot": "alpha"}, redactor.redact))
    logger = logging.getLogger("test.redaction")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_secrets_are_masked_everywhere(capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = capture
    logger.info("connecting with key %s", API_KEY)
    logger.info(f"inline {SECRET}")
    logger.warning(
        "request failed",
        extra={
            "url": f"https://x/api?k={API_KEY}",
            "headers": {"X-MBX-APIKEY": "anything", "nested": [SECRET]},
            "apiKey": "not-even-the-real-one",
        },
    )
    try:
        raise RuntimeError(f"exchange said: bad secret {SECRET}")
    except RuntimeError:
        logger.exception("boom")
    text = stream.getvalue()
    assert API_KEY not in text and SECRET not in text
    assert "not-even-the-real-one" not in text
    records = lines(stream)
    assert records[0]["message"] == "connecting with key ***"
    assert records[2]["headers"]["X-MBX-APIKEY"] == "***"
    assert records[2]["headers"]["nested"] == ["***"]
    assert records[2]["apiKey"] == "***"
    assert "***" in records[3]["exception"]


def test_json_lines_carry_level_logger_and_static_fields(
    capture: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = capture
    logger.info("fill", extra={"symbol": "BTC/USDT", "amount": 0.5})
    (record,) = lines(stream)
    assert record["level"] == "info" and record["logger"] == "test.redaction"
    assert record["bot"] == "alpha" and record["symbol"] == "BTC/USDT"
    assert record["time"].endswith("Z")


def test_short_values_are_not_treated_as_secrets(
    capture: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = capture
    logger.info("a short word stays")
    assert lines(stream)[0]["message"] == "a short word stays"


def test_credentials_repr_hides_values() -> None:
    creds = Credentials(api_key=API_KEY, secret=SECRET)
    assert API_KEY not in repr(creds) and SECRET not in repr(creds)


def test_configure_logging_routes_library_loggers_through_the_filter() -> None:
    from tradingbot.logsetup import REDACTOR

    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure_logging("DEBUG", stream=stream)
        REDACTOR.add(SECRET)
        logging.getLogger("ccxt.base.exchange").warning("signed with %s", SECRET)
        assert SECRET not in stream.getvalue() and "***" in stream.getvalue()
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
