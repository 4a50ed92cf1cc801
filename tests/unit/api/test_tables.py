from __future__ import annotations

import pytest

from tradingbot_api.tables import render_table


@pytest.mark.parametrize(
    ("headers", "rows", "text"),
    [
        (("NAME",), [], "NAME"),
        (("NAME", "N"), [["a", "10"], ["bbbb", "2"]], "NAME   N\na      10\nbbbb   2"),
        (("A", "B"), [["long value", ""]], "A            B\nlong value"),
        (("X", "Y"), [["0012", "1e3"]], "X      Y\n0012   1e3"),  # numbers stay as written
        (("NAME", "N"), [["héllo…", "x"]], "NAME     N\nhéllo…   x"),
    ],
)
def test_kubectl_style_tables(headers: tuple[str, ...], rows: list[list[str]], text: str) -> None:
    assert render_table(headers, rows) == text
