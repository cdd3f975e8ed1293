"""CSV exports of the dashboard's tables, safe to open in a spreadsheet.

A text cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is read by Excel, LibreOffice
and Google Sheets as a formula (``=HYPERLINK(...)``, ``@SUM(...)``, DDE payloads): text from the store (rule
descriptions, names, reasons) could run in the reader's spreadsheet. Following the OWASP CSV injection guidance,
such a cell is written with a leading single quote, which the spreadsheet shows as text. Numbers are not text:
a numeric column (a negative P&L) is written as it is, and so is a text cell that is only a formatted number
(``-1,234.50``, ``-3%``), which no spreadsheet evaluates as a formula.

Every export says when its figures were read (an ``as of`` column, UTC, on every row, so a filtered or sorted
sheet keeps it) and is rounded to the unit the screen shows (:func:`logic.views.fmt.rounded`); a screen's totals
row travels with it when the page passes one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import pandas as pd

from logic.views import fmt

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
"""First characters that make a spreadsheet read a cell as a formula (OWASP)."""
_PLAIN_NUMBER = re.compile(r"[-+]?(\d[\d,]*)?\.?\d+([eE][-+]?\d+)?%?")


def neutralise_cell(value: Any) -> Any:
    """``value`` with a leading ``'`` when it is text a spreadsheet would read as a formula; else unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_START) and not _PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    return value


def csv_safe(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` with every text cell passed through :func:`neutralise_cell` (numeric columns untouched);
    column names too."""
    out = df.copy()
    for column in out.columns:
        if not (pd.api.types.is_numeric_dtype(out[column]) or pd.api.types.is_bool_dtype(out[column])):
            out[column] = out[column].map(neutralise_cell)
    out.columns = [neutralise_cell(c) for c in out.columns]
    return out


AS_OF_COLUMN = "as of (UTC)"


def csv_bytes(df: pd.DataFrame, *, kinds: Mapping[str, str] | None = None, as_of: float | None = None) -> bytes:
    """``df`` as UTF-8 CSV without the index, formula cells neutralised (:func:`csv_safe`); rows end in CRLF
    (RFC 4180), so a cell holding a bare CR or LF is quoted and stays one cell. With ``kinds`` (column -> kind
    of :mod:`logic.views.fmt`) numbers are rounded to the unit shown; with ``as_of`` (epoch seconds) every row
    starts with the time the figures were read. An empty table with ``as_of`` is one row of that time and blank
    cells: "nothing, as of then" is a reading too, and a header alone would not say when it was taken."""
    out = fmt.rounded(df, kinds) if kinds else df.copy()
    for column in out.columns:
        if pd.api.types.is_datetime64_any_dtype(out[column]):
            out[column] = out[column].dt.strftime("%Y-%m-%d %H:%M:%S")
    if as_of is not None:
        if out.empty:  # inserting a column into no rows writes no time at all
            out = pd.DataFrame([[None] * len(out.columns)], columns=out.columns)
        out.insert(0, AS_OF_COLUMN, fmt.when(as_of).removesuffix(" UTC"))
    return csv_safe(out).to_csv(index=False, lineterminator="\r\n").encode("utf-8")
