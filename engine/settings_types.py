"""Value types of the settings (engine/settings.py, the one settings object): exact money, strict numbers and
text, durations, read-only tables, the validator helper every section uses, and the checks of identifiers (ticker
and portfolio ids, the keys of an environment override) that engine/settings.py calls."""

from __future__ import annotations

import math
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import is_dataclass
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, AllowInfNan, BeforeValidator, ConfigDict, Strict

CONFIG = ConfigDict(extra="forbid")
"""Every settings section: an unknown key is an error, not silently ignored."""

T = TypeVar("T")

MAX_MONEY = Decimal(10**15)
"""Largest amount of money (in absolute value) the settings and the book file take: a thousand trillion, far
above any desk's cash or limit. Past it a figure is a typo (an exponent, digits pasted twice): a VaR limit of
``1e999`` never refuses, and cash of ``1e400`` overflows every float figure computed from it."""
MAX_QUANTITY = 10**12
"""Largest position (in absolute shares) the settings' holdings and the book file take: within int64 with room to
spare, and ``qty x price`` stays exact enough in a float for any real price. A quantity of ``1e30`` shares makes
the equity and the VaR meaningless (a trade of a few shares then moves them by less than the float resolution)."""
SYMBOL = re.compile(r"[A-Za-z0-9._-]{1,32}")
"""A ticker or portfolio id: ASCII letters, digits and ``._-``, 1 to 32 characters. ASCII only: ``main`` with a
Cyrillic ``а`` or a full-width ``ＡＡＡ`` look like ``main`` and ``AAA`` but would be other portfolios and tickers."""

# -- value types -------------------------------------------------------------------------------------------------


def _money(value: Any) -> Any:
    # str() first: Decimal(0.1) would carry the binary float's error into money
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise ValueError(f"expected a number, got {value!r}")
    try:
        result = Decimal(value) if isinstance(value, Decimal) else Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"{value!r} is not a number") from None
    if not result.is_finite():
        raise ValueError(f"must be finite, got {value!r}")
    if abs(result) > MAX_MONEY:
        raise ValueError(f"must be at most {MAX_MONEY:,} in absolute value, got {value!r}")
    return result


def _seconds(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"must be a finite number >= 0, got {value!r}")
    return float(value)


def at_least(minimum: int) -> BeforeValidator:
    """A strict integer >= ``minimum``: ``Annotated[int, at_least(1)]``."""

    def check(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {value!r}")
        if value < minimum:
            raise ValueError(f"must be >= {minimum}, got {value}")
        return value

    return BeforeValidator(check)


def _read_only(value: Mapping[str, T]) -> Mapping[str, T]:
    return types.MappingProxyType(dict(value))


def _collar_reference(value: Any) -> Any:
    if value == "session_open":
        return value
    if isinstance(value, str) and value.startswith("rolling:"):
        n = value.removeprefix("rolling:")
        if n.isdigit() and int(n) >= 1:
            return value
    raise ValueError(f'must be "session_open" or "rolling:N" with N a whole number of bars >= 1, got {value!r}')


Money = Annotated[Decimal, BeforeValidator(_money)]
"""Exact money: a number or a numeric string, finite, at most :data:`MAX_MONEY` in absolute value; never a bool."""
Number = Annotated[float, Strict(), AllowInfNan(False)]
"""A finite number (an integer is accepted); a string or a bool is not."""
Integer = Annotated[int, Strict()]
Seconds = Annotated[float, BeforeValidator(_seconds)]
"""A duration: a finite number >= 0."""
Text = Annotated[str, Strict()]
Flag = Annotated[bool, Strict()]
CollarReference = Annotated[str, BeforeValidator(_collar_reference)]
"""``session_open`` or ``rolling:N`` (N >= 1 bars)."""
Table = Annotated[Mapping[str, T], AfterValidator(_read_only)]
"""A read-only table (``types.MappingProxyType``): a frozen settings object has no mutable parts."""


def _require(condition: bool, message: str) -> None:
    """Inside a validator: a ``ValueError`` that :func:`validate_config` reports with the setting's path."""
    if not condition:
        raise ValueError(message)


# -- identifiers -------------------------------------------------------------------------------------------------


def valid_id(symbol: str) -> bool:
    """True for a syntactically valid ticker or portfolio id (:data:`SYMBOL`)."""
    return SYMBOL.fullmatch(symbol) is not None


def _distinct(what: str, names: Sequence[str]) -> None:
    """Refuse two names equal but for case (``main`` and ``MAIN``): one thing to a person reading a page or a
    log, two to the store."""
    seen: dict[str, str] = {}
    for name in names:
        other = seen.get(name.lower())
        _require(other is None, f"{what} must be unique (case aside): {other!r} and {name!r}")
        seen[name.lower()] = name


def check_identifiers(settings: Any) -> None:
    """The settings' identifiers, checked across sections (called by ``Settings.__post_init__``): portfolio ids
    and tickers unique case aside; every ``position_limits`` key (the global ``[limits]`` and each portfolio's) a
    ticker of the universe, exactly: a cap on ``aaa`` or on a ticker not traded caps nothing, so the limit the desk
    believes in would silently fail open; every holding at most :data:`MAX_QUANTITY` shares."""
    _distinct("portfolio ids", [p.id for p in settings.portfolios])
    tickers = list(settings.universe.assets)
    _distinct("tickers", tickers)
    tables = [("limits", settings.limits)] + [(f"portfolios {p.id}: limits", p.limits) for p in settings.portfolios]
    for where, limits in tables:
        unknown = sorted(set(limits.position_limits) - set(tickers))
        near = {k: t for k in unknown for t in tickers if t.lower() == k.lower()}
        hint = f" (did you mean {', '.join(f'{t!r} for {k!r}' for k, t in near.items())}?)" if near else ""
        _require(not unknown, f"{where}.position_limits: {unknown} not in the universe{hint}: such a cap caps nothing")
    for p in settings.portfolios:
        for ticker, qty in p.holdings.items():
            _require(abs(qty) <= MAX_QUANTITY, f"portfolio {p.id}: holding {ticker} {qty} over {MAX_QUANTITY:,} shares")


def unwrap_type(tp: Any) -> Any:
    """``Annotated[X, ...]`` -> X, ``X | None`` -> X."""
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            non_none = [a for a in typing.get_args(tp) if a is not type(None)]
            tp = non_none[0] if len(non_none) == 1 else Any
        else:
            return tp


TICKER_KEYED_TABLES = frozenset({"assets", "position_limits", "holdings", "shocks"})
"""The settings tables keyed by ticker (``universe.assets``, ``limits.position_limits`` and each portfolio's,
``[[portfolios]] holdings``, a stress scenario's ``shocks``): an environment override keeps the case of their keys
(tickers are case-sensitive: ``AAA`` is not ``aaa``). Every other table (``stress_scenarios``, ``access.users``,
``access.groups``, the sections kept in ``extra``) is keyed by names written in lower case by convention:
their keys are lower-cased, as every part of an override's name was before tickers kept their case."""


def env_path(tp: Any, data: Mapping[str, Any], parts: Sequence[str]) -> list[str]:
    """The settings path an environment override's name parts (``LIMITS``, ``POSITION_LIMITS``, ``AAA``) set in
    ``data`` (the file's settings, of type ``tp``).

    A field name is lower-cased (environment names are upper-case by convention; every field is lower-case). A
    key of a table takes the case of the one key of the table equal to it but for case, when there is one: the
    file's ``crash`` scenario, ``Traders`` group or ``AAA`` cap. Otherwise a new key of a ticker-keyed table
    (:data:`TICKER_KEYED_TABLES`) keeps its case: ``RISKDESK__LIMITS__POSITION_LIMITS__AAA`` caps ``AAA``
    (lower-cased it was a cap on ``aaa``, a ticker that does not exist: the cap silently did nothing); a new key
    of any other table is lower-cased: ``RISKDESK__ACCESS__GROUPS__TRADERS__ROLES`` grants the identity
    provider's group ``traders`` (kept upper-case it granted a group ``TRADERS`` that no token names, and the
    desk's traders got no role)."""
    out: list[str] = []
    node: Any = data
    field_name = ""
    for part in parts:
        tp = unwrap_type(tp)
        if is_dataclass(tp) and isinstance(tp, type):
            key = field_name = part.lower()
            tp = typing.get_type_hints(tp, include_extras=True).get(key, Any)
        elif typing.get_origin(tp) in (Mapping, dict):
            keys = [k for k in node if isinstance(k, str)] if isinstance(node, Mapping) else []
            same = [k for k in keys if k.lower() == part.lower()]
            if part in keys:
                key = part
            elif len(same) == 1:
                key = same[0]
            else:
                key = part if field_name in TICKER_KEYED_TABLES else part.lower()
            tp, field_name = typing.get_args(tp)[-1], ""
        else:
            key, tp, field_name = part.lower(), Any, ""
        out.append(key)
        node = node.get(key) if isinstance(node, Mapping) else None
    return out
