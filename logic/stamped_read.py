"""When a monitor tick reads its clock: after what guards its books (a WATCH, or the owner stamps its write checks),
so a history point's time and its valuation agree about every capital flow.

A book sync (engine/book.py) books a capital flow at its own time ``f`` (read before it commits) in the flow ledger
``pf:{id}:flows``, in the MULTI that changes the book and shifts the peaks (``MonitoringStore.shift_peaks``). The
Performance page puts the flow in the step of the first point stamped after it (logic/performance.py
``step_flows``: ``t_{k-1} <= f < t_k``), so a point stamped ``ts`` must value the book with every flow stamped
before ``ts`` and with none stamped at or after it. A monitor that read its clock *before* guarding its book read
could break that both ways: a sync committing between its clock read and its book read gives a point stamped
before the flow that values the book after it (a phantom loss for a withdrawal, then a phantom gain of the same
size the next step), and a sync stamped before the clock read that commits after the book read gives the opposite.

Hence the order: WATCH the keys every flow writes, *then* read the clock, then read the books, and write the point
in a MULTI on the WATCHed connection. A flow committed before the WATCH was stamped before its commit, so before
the clock read (``f < ts``) and it is in the books read; a flow committed after the WATCH aborts the EXEC (nothing
of the tick is written) and the tick is redone at once with a new clock read (logic/monitor.py ``_on_conflict``:
the redo calls the clock again). The vectorised path does the same per portfolio without a WATCH
(logic/batch_tick.py): it reads the owner stamp of every peaks key before the clock (a flow shifts the peaks of a
portfolio with an observation and stamps them, and every portfolio with a history point has one), and its lane
script writes a portfolio only where that stamp is still there: one a flow stamped after the read is left out of
the attempt (the rest is written) and written by the redo, with a new clock read. The per-portfolio path
(:func:`stamped_read`) WATCHes the flow ledgers, because its own peak merges write the peaks keys outside its
transaction (a WATCH on them would abort every one of its ticks). Keys first seen by a read (the first tick, a
portfolio added) were not guarded before it: the read is done once more with them guarded, the clock read
again.

On a Redis Cluster the per-portfolio path does not WATCH (a WATCH per slot is one round trip and one held
connection per portfolio every tick: a 200-portfolio tick took 4x as long, 500 never finished); there the race is
left as before (a flow committed between the clock read and the book read shows as a phantom step). The vectorised
path, the one the daemons run, checks the owner stamps on both.

This relies on the sync and the monitor reading one clock (both the host's wall clock live: hosts are assumed
NTP-synchronised to well under a tick's spacing). In a replay the monitor dates a tick by its bar
(engine/clocks.py ``tick_time``) while the sync stamps its flow with the wall clock (``warmup.py --sync``): the
flow is then after every replayed point (the bars' times are past), so it is never placed in a step the points
straddle and there is no phantom pair: it shows as a return of the step where the books changed, as
logic/performance.py documents for a replay.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from engine.records import Clock
from engine.store import PortfolioBundle, PortfolioKeys
from engine.store.slots import SlotTransaction

READ_PASSES = 2
"""Reads of one tick at most: a second one only when the first met portfolios whose keys were not WATCHed."""


def stamped_read(
    tx: Any,
    clock: Clock,
    read: Callable[[], Mapping[str, PortfolioBundle]],
    known: Callable[[], Sequence[str] | None],
) -> tuple[float, Mapping[str, PortfolioBundle]]:
    """The per-portfolio path's tick time and books (module docstring): WATCH in ``tx`` the flow ledgers of the
    ``known`` portfolios (those of the last read), then read ``clock``, then ``read`` the books; if the read
    returned a portfolio not WATCHed, unwatch and do it once more. The caller writes the tick in ``tx`` (its EXEC
    fails with :class:`redis.WatchError` when a flow was booked after the WATCH) and resets it."""
    if isinstance(tx, SlotTransaction):  # a cluster: a WATCH per slot is a round trip and a connection each
        now = clock()
        return now, read()
    for attempt in range(READ_PASSES):
        watched = {PortfolioKeys(pid).flows for pid in known() or ()}
        if watched:
            tx.watch(*sorted(watched))
        now = clock()  # after the WATCH: any flow committed before it is in the books read below
        bundles = read()
        late = sorted({PortfolioKeys(pid).flows for pid in bundles} - watched)
        if not late:
            return now, bundles
        if attempt == READ_PASSES - 1:  # the registry changed again meanwhile: guard what is left from now on
            tx.watch(*late)
            return now, bundles
        tx.reset()  # unwatch; the next pass WATCHes every key the read returned
    raise AssertionError("unreachable")  # pragma: no cover
