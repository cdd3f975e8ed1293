"""Value types of the settings (engine/settings.py, the one settings object): exact money, strict numbers and
text, durations, read-only tables, and the validator helper every section uses."""

from __future__ import annotations

import math
import types
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, AllowInfNan, BeforeValidator, ConfigDict, Strict

CONFIG = ConfigDict(extra="forbid")
"""Every settings section: an unknown key is an error, not silently ignored."""

T = TypeVar("T")

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
"""Exact money: a number or a numeric string, finite; never a bool."""
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
