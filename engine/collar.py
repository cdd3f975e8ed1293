"""The price collar's reference prices, re-anchored by the stream daemon as the market's sessions pass.

The gate refuses a trade that adds risk when the last price is further than ``limits.price_collar_pct`` from
the reference price it reads from ``mkt:{m}:reference`` (logic/checks.py). The warm-up writes the first
reference; from then on the stream daemon calls :meth:`CollarAnchor.on_bar` for every bar it writes, in the
bar's transaction, and writes the prices it returns:

- ``limits.collar_reference = "session_open"``: at the first bar of each session (``market.calendar``,
  engine/sessions.py) the reference becomes the previous session's close: each ticker's last accepted price
  at or before that session's close. A reset bar (a replay's first bar, a reloaded market) anchors the
  reference at its own prices: there is no previous close in the new data.
- ``"rolling:N"``: as above, and within a session the reference follows the price N bars earlier (the
  previous close until the session has N bars).

The global ``[limits]`` value is the market's (a reference is one per ticker, not per portfolio). With
``market.calendar = "24/7"`` the sessions are the days of ``monitor.day_reset_hour``. Times outside the
calendar's range (before 1990) never re-anchor: the reference stays as it was.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np

from engine.records import Float64Array
from engine.sessions import MarketCalendar

log = logging.getLogger("riskdesk.collar")

SESSION_OPEN = "session_open"
ROLLING_PREFIX = "rolling:"


def rolling_bars(collar_reference: str) -> int | None:
    """N of ``rolling:N``; None for ``session_open``."""
    if collar_reference.startswith(ROLLING_PREFIX):
        return int(collar_reference.removeprefix(ROLLING_PREFIX))
    return None


@dataclass(frozen=True)
class AnchorState:
    """What :class:`CollarAnchor` remembers between bars."""

    session: str | None = None
    """The session of the last bar."""
    close: Float64Array | None = None
    """Last prices at or before that session's close: the next session's reference."""
    window: tuple[Float64Array, ...] = ()
    """``rolling:N``: the anchor then the session's bars, at most N + 1 entries."""
    seeded_at: float | None = None
    """Set by :meth:`CollarAnchor.seed`: the stored snapshot's time the state was rebuilt from."""


class CollarAnchor:
    """Decides, bar by bar, the reference prices to write (see the module docstring).

    The daemon calls :meth:`propose` while it builds a bar's transaction and :meth:`commit` once it is
    written, so a bar retried after a conflict is counted once.

    Parameters
    ----------
    calendar:
        The market's sessions.
    collar_reference:
        ``session_open`` or ``rolling:N`` (validated by the settings).
    """

    def __init__(self, calendar: MarketCalendar, collar_reference: str = SESSION_OPEN) -> None:
        self.calendar = calendar
        self.rolling = rolling_bars(collar_reference)
        self.state = AnchorState()
        self._warned = False

    def reset(self) -> None:
        """Forget what was seen (the daemon reloaded another universe)."""
        self.state = AnchorState()

    def commit(self, state: AnchorState) -> None:
        self.state = state

    def restate(self, factor: Float64Array) -> None:
        """Prices restated in the store without a bar (a split, a dividend: engine/corporate_actions.py,
        engine/dividends.py), ``factor`` the stored price over the one this process wrote (1 where unchanged):
        the remembered close and window are restated alike, so the next open re-anchors at the restated close
        instead of writing the old one back (the reference the restatement wrote stays)."""
        state = self.state
        if state.close is None or state.close.shape != factor.shape:
            return
        window = tuple(w * factor if w.shape == factor.shape else w for w in state.window)
        self.state = replace(state, close=state.close * factor, window=window)

    def seed(self, t: float, prices: Float64Array, price_ts: Float64Array) -> None:
        """Rebuild the memory of a fresh process (or one reset) from the stored market snapshot of time ``t``.

        The daemon calls it when it loads the market, so that a restart between two sessions does not skip the
        next open's re-anchoring (the reference would stay the one of two or more sessions back). The session is
        the one ``t`` belongs to; its close is the stored prices: each ticker's last accepted price at or before
        ``t``. When ``t`` is after that session's close a ticker printed after the close (its ``price_ts``) has
        no stored close: its last price stands in for it (logged). A state this process already holds is kept
        (it saw the bars); a time outside the calendar leaves it empty.
        """
        if self.state.session is not None:
            return
        try:
            session = self.calendar.session_id(t)
            sessions = self.calendar.sessions
            closed_at = None if sessions is None or self.calendar.is_open(t) else sessions.session_at(t).close
        except ValueError:
            return
        close = np.asarray(prices, dtype=np.float64).copy()
        if closed_at is not None:
            late = np.asarray(price_ts, dtype=np.float64) > closed_at
            if late.any():
                log.warning(
                    "collar reference: %d price(s) of the stored market were printed after the %s close; "
                    "their last price stands in for the close at the next open",
                    int(late.sum()),
                    session,
                )
        self.state = AnchorState(session, close, (), seeded_at=float(t))  # rolling: no bar of the session known

    def propose(
        self, t: float, prices: Float64Array, *, reset: bool = False
    ) -> tuple[Float64Array | None, AnchorState]:
        """The reference prices to write with the bar at ``t`` whose accepted prices (after the bar) are
        ``prices`` (None: leave the stored reference as it is), and the state after that bar."""
        try:
            session = self.calendar.session_id(t)
            in_session = self.calendar.is_open(t)
        except ValueError as exc:  # outside the calendar's range: keep the stored reference
            if not self._warned:
                self._warned = True
                log.warning("collar reference not re-anchored: %s", exc)
            return None, self.state
        prev = self.state
        if prev.close is not None and prev.close.shape != prices.shape:
            prev = AnchorState()
        elif prev.seeded_at is not None and t < prev.seeded_at:  # a bar older than the snapshot seeded from
            prev = AnchorState()
        out: Float64Array | None = None
        close = prev.close
        window = list(prev.window)
        if reset:
            out, close, window = prices.copy(), prices.copy(), [prices.copy()]
        elif session != prev.session:
            out = None if close is None or prev.session is None else close.copy()  # the previous close
            window = [] if close is None else [close]
        if in_session:
            close = prices.copy()
            if self.rolling is not None and not reset:
                window = (window + [close])[-(self.rolling + 1) :]
                if len(window) == self.rolling + 1:  # N bars back (the anchor is bar 0)
                    out = np.where(np.isfinite(window[0]), window[0], prices)
        return out, AnchorState(session, close, tuple(window))
