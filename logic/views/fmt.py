"""How every page writes a number: one rule per kind of figure, used by the tables, the metrics, the gauges and
the CSV exports alike.

Rules (``CUR`` is ``dashboard.currency`` of the settings, ``USD`` by default)::

    money       CUR 1,234,568        whole units: equity, P&L, VaR, exposure, notional (signed: CUR +1,234)
    price       CUR 1,234.57         cents: prices, fees, per-share figures
    ratio       20.22%               fractions of equity / of a limit / of a total
    bps         39.7 bps             per-unit sensitivities and spreads (1 bp = 0.0001)
    qty         1,000                shares, counts, versions
    number      1,234.57             anything else numeric
    time        2026-11-30 05:20:00  UTC
    missing     —                    with the reason in the column's help (never "None" or "nan")

A table column's kind comes from its name (:data:`COLUMN_KINDS`, or a page's explicit choice); the dashboard's
:func:`dashboard.components.table` turns kinds into Streamlit column configurations (format, width that fits the
longest value, the ``—`` placeholder) and :mod:`logic.views.export` rounds a CSV to the same unit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

import pandas as pd

MONEY: Final = "money"
PRICE: Final = "price"
RATIO: Final = "ratio"
BPS: Final = "bps"
QTY: Final = "qty"
NUMBER: Final = "number"
SECONDS: Final = "seconds"
TIME: Final = "time"
TEXT: Final = "text"
BOOL: Final = "bool"

DASH = "—"
"""What a missing figure shows (with the reason in the help beside it)."""
DEFAULT_CURRENCY = "USD"

DECIMALS: Mapping[str, int] = {MONEY: 0, PRICE: 2, RATIO: 4, BPS: 1, QTY: 0, NUMBER: 2, SECONDS: 1}
"""Decimals a CSV keeps per kind: the unit the screen shows (a ratio keeps 4: 20.22% is 0.2022)."""

COLUMN_KINDS: Mapping[str, str] = {
    # money, whole units
    **dict.fromkeys(
        (
            "market_value", "unrealized_pnl", "realized_pnl", "mfe", "mae", "component_var", "pnl", "equity_after",
            "delta_var", "var_after", "var_before", "notional", "equity", "cash", "gross", "net", "long", "short",
            "VaR (stand-alone)", "cost", "var95", "var99", "limit_var", "loss", "exposure",
        ),
        MONEY,
    ),
    # money with cents
    **dict.fromkeys(("avg_price", "last", "price", "fees", "reference_price"), PRICE),
    # fractions shown as %
    **dict.fromkeys(
        ("weight", "component_share", "pnl_pct", "daily_vol", "daily drawdown", "max drawdown", "utilization"),
        RATIO,
    ),
    "marginal_var": BPS,
    **dict.fromkeys(("qty", "level", "version", "escalation_level", "observations", "exceedances"), QTY),
    **dict.fromkeys(
        ("pending_seconds", "clear_seconds", "stale_after_seconds", "after (s)", "heartbeat age (s)"), SECONDS
    ),
}  # fmt: skip
"""The kind of every column name the views use (a page may override one)."""

LABELS: Mapping[str, str] = {
    "market_value": "market value",
    "avg_price": "avg price",
    "unrealized_pnl": "unrealized P&L",
    "realized_pnl": "realized P&L",
    "mfe": "MFE",
    "mae": "MAE",
    "daily_vol": "daily vol",
    "marginal_var": "marginal VaR",
    "component_var": "component VaR",
    "component_share": "share of VaR",
    "pnl": "P&L",
    "pnl_pct": "P&L % equity",
    "equity_after": "equity after",
    "delta_var": "VaR change",
    "var_after": "VaR after",
    "client_order_id": "client order id",
    "trade_id": "trade id",
    "portfolio_id": "portfolio",
    "rule_id": "rule",
}
"""Column headers a desk reads (the data keeps its field names, so exports and tests stay stable)."""

MISSING_REASONS: Mapping[str, str] = {
    "qty": "no quantity: the order was refused before it had one",
    "price": "no price: the order was refused before it was priced",
    "notional": "not filled: a refused order has no notional",
    "fees": "not filled: a refused order pays no fees",
    "realized_pnl": "not filled, or the fill opened a position",
    "trade_id": "not filled: only a fill has a trade id",
    "mfe": "the monitor has not tracked this position yet",
    "mae": "the monitor has not tracked this position yet",
    "acknowledged_by": "not acknowledged",
    "acknowledged_at": "not acknowledged",
    "resolved_by": "not resolved",
    "resolved_at": "not resolved",
    "next_escalation_at": "no further escalation due",
    "margin level (%)": "a cash account has no margin level",
}
"""Why a column may show the dash (the column's help says so)."""

CHAR_PX = 10
"""Width of one character in a table cell, rounded up (capitals and digits of the 14 px sans font)."""
CELL_PAD_PX = 40
"""Cell padding both sides plus the header's sort and menu icons."""
ROW_PX = 35
"""Streamlit's row height (the header row too)."""
TABLE_BORDER_PX = 3
MAX_TABLE_ROWS = 10
"""A taller table scrolls inside this many rows (what st.dataframe's ``auto`` height shows)."""


# -- single figures -------------------------------------------------------------------------------------------


def finite(value: Any) -> float | None:
    """``value`` as a finite float, or None (missing, text, NaN or infinite)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def money(value: Any, currency: str = DEFAULT_CURRENCY, *, signed: bool = False, cents: bool = False) -> str:
    """``USD 1,234,568`` (``signed``: ``USD +1,234``; ``cents``: two decimals); the dash when missing."""
    number = finite(value)
    if number is None:
        return DASH
    digits = 2 if cents else 0
    if round(number, digits) == 0:
        number = 0.0  # no "-0"
    return f"{currency} {number:{'+' if signed else ''},.{digits}f}"


def pct(value: Any, digits: int = 2) -> str:
    """A fraction as a percentage: ``0.2022`` -> ``20.22%``; the dash when missing."""
    number = finite(value)
    return DASH if number is None else f"{number * 100:,.{digits}f}%"


def bps(value: Any, digits: int = 1) -> str:
    """A fraction in basis points: ``0.003972`` -> ``39.7 bps``; the dash when missing."""
    number = finite(value)
    return DASH if number is None else f"{number * 10_000:,.{digits}f} bps"


def qty(value: Any) -> str:
    number = finite(value)
    return DASH if number is None else f"{number:,.0f}"


def number(value: Any, digits: int = 2) -> str:
    number_ = finite(value)
    return DASH if number_ is None else f"{number_:,.{digits}f}"


def when(ts: Any) -> str:
    """An epoch time as ``2026-11-30 05:20:00 UTC``; the dash when missing."""
    number_ = finite(ts)
    if not number_:
        return DASH
    return datetime.fromtimestamp(number_, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def figure(value: Any, kind: str, currency: str = DEFAULT_CURRENCY, *, signed: bool = False) -> str:
    """``value`` written by its kind's rule."""
    if kind == MONEY:
        return money(value, currency, signed=signed)
    if kind == PRICE:
        return money(value, currency, signed=signed, cents=True)
    if kind == RATIO:
        return pct(value)
    if kind == BPS:
        return bps(value)
    if kind == QTY:
        return qty(value)
    if kind == SECONDS:
        return DASH if finite(value) is None else f"{finite(value):,.1f} s"
    if kind == NUMBER:
        return number(value)
    if kind == TIME:
        return when(value)
    return DASH if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


# -- table columns --------------------------------------------------------------------------------------------


def column_kind(name: str, series: pd.Series | None = None, overrides: Mapping[str, str] | None = None) -> str:
    """The kind of a table column: the page's override, else :data:`COLUMN_KINDS`, else from its values."""
    if overrides and name in overrides:
        return overrides[name]
    if name in COLUMN_KINDS:
        return COLUMN_KINDS[name]
    if series is None:
        return TEXT
    if pd.api.types.is_bool_dtype(series):
        return BOOL
    if pd.api.types.is_datetime64_any_dtype(series):
        return TIME
    if pd.api.types.is_numeric_dtype(series):
        values = series.dropna()
        return QTY if all(float(v).is_integer() for v in values) else NUMBER
    return TEXT


def printf_format(kind: str, currency: str = DEFAULT_CURRENCY) -> str | None:
    """The Streamlit NumberColumn format of a numeric kind (None: not a number column)."""
    return {
        MONEY: f"{currency} %,.0f",
        PRICE: f"{currency} %,.2f",
        RATIO: "percent",
        BPS: "%,.1f bps",
        QTY: "%,d",
        NUMBER: "%,.2f",
        SECONDS: "%,.1f s",
    }.get(kind)


def longest_text(label: str, series: pd.Series, kind: str, currency: str = DEFAULT_CURRENCY) -> int:
    """Characters of the longest thing the column shows: its header or one of its values."""
    if kind == TIME:
        widest = len("2026-11-30 05:20:00 UTC")
        return max(len(label), widest if len(series) else 0)
    cells = (figure(v, kind, currency, signed=kind in (MONEY, PRICE)) for v in series.tolist())
    return max([len(label), len(DASH)] + [len(c) for c in cells])


def column_width(chars: int) -> int:
    """Pixels a column needs to show ``chars`` characters without cutting them."""
    return CHAR_PX * chars + CELL_PAD_PX


def table_height(rows: int, max_rows: int = MAX_TABLE_ROWS) -> int:
    """Pixels of a table showing ``rows`` rows (at most ``max_rows``, then it scrolls): no empty padding rows."""
    return (min(max(rows, 1), max_rows) + 1) * ROW_PX + TABLE_BORDER_PX


def rows_for_height(height_px: int) -> int:
    """How many data rows a table of ``height_px`` pixels shows."""
    return max(1, (height_px - TABLE_BORDER_PX) // ROW_PX - 1)


# -- CSV ------------------------------------------------------------------------------------------------------


def rounded(df: pd.DataFrame, kinds: Mapping[str, str]) -> pd.DataFrame:
    """A copy of ``df`` with every numeric column rounded to the unit its kind shows (:data:`DECIMALS`)."""
    out = df.copy()
    for column, kind in kinds.items():
        if column in out and kind in DECIMALS and pd.api.types.is_numeric_dtype(out[column]):
            if pd.api.types.is_bool_dtype(out[column]):
                continue
            values = out[column].round(DECIMALS[kind])
            if DECIMALS[kind] == 0 and values.dropna().map(math.isfinite).all():
                values = values.astype("Int64")  # whole units written as 80000, not 80000.0
            out[column] = values
    return out


def with_totals(df: pd.DataFrame, columns: Iterable[str], label_column: str, label: str = "TOTAL") -> pd.DataFrame:
    """``df`` with a last row summing ``columns`` (the screen's totals), ``label`` in ``label_column``."""
    if df.empty:
        return df
    total: dict[str, Any] = {c: df[c].sum(min_count=1) for c in columns if c in df}
    total[label_column] = label
    return pd.concat([df, pd.DataFrame([total])], ignore_index=True)
