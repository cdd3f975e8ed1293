"""A small process-wide memo for what pages recompute on every run although its inputs have not changed.

A page script reruns on every widget change and every live-refresh tick, in every browser session; between two
market bars most of what it computes is the same. :class:`Memo` keeps the last results keyed by *everything*
they depend on (a market version, the bytes of an input array, a limit), so a hit is exact, never stale: a new
market version or a changed limit is a new key, computed on the next run. Bounded (least recently used out),
thread-safe (Streamlit runs sessions on threads).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np

MEMO_SIZE = 64
"""Results kept per memo: a few portfolios times a few windows, pages and sessions on one tick."""


class Memo:
    """``get(key, compute)``: the stored result for ``key``, else ``compute()`` stored under it.

    ``hits`` and ``misses`` count lookups (tests read them to show that a changed input recomputes).
    """

    def __init__(self, size: int = MEMO_SIZE) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size = size
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
            self.misses += 1
        value = compute()  # outside the lock: two sessions may compute the same key once each, never wrongly
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


def array_key(*arrays: Any) -> tuple[Any, ...]:
    """A hashable key of arrays' dtypes, shapes and bytes (exact: any changed element is another key)."""
    out: list[Any] = []
    for a in arrays:
        arr = np.ascontiguousarray(a)
        out += [arr.dtype.str, arr.shape, arr.tobytes()]
    return tuple(out)
