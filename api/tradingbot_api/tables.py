"""Plain-text tables as kubectl prints them: left-aligned columns three spaces apart, a header
row of capitals, no borders and no trailing whitespace (rendering by tabulate)."""

from __future__ import annotations

from collections.abc import Sequence

from tabulate import DataRow, TableFormat, tabulate

_KUBECTL = TableFormat(
    lineabove=None,
    linebelowheader=None,
    linebetweenrows=None,
    linebelow=None,
    headerrow=DataRow("", "   ", ""),
    datarow=DataRow("", "   ", ""),
    padding=0,
    with_header_hide=None,
)


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    # The header goes in as a row: as `headers`, tabulate would pad it by two more spaces.
    table = [list(headers), *(list(row) for row in rows)]
    text = tabulate(table, tablefmt=_KUBECTL, disable_numparse=True, stralign="left")
    return "\n".join(line.rstrip() for line in text.splitlines())
