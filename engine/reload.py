"""Loading a market into a store that already holds one, and resetting a store, without destroying or faking
anything (``python warmup.py --history FILE`` on a seeded store, ``--reset [--wipe-audit]``).

A reload replaces the market (prices, the EWMA matrix re-estimated from the history, the stressed matrix, the
reference prices) in ONE transaction that also starts a new market epoch (:meth:`Store.bump_market_epoch`)
and appends an audit record. Books, trades, orders, alerts, audit trails and every portfolio's P&L references
and drawdown record (``pf:{id}:peaks``: day open, day / week / all-time peaks, the worst drawdown; and the
position excursions ``pf:{id}:marks``) are kept: refreshing the risk model is not a new book. The market
version goes on from the stored one (+1), so every reader reloads its cached matrix; the stream daemon sees
the new epoch and writes its next bar as a ``reset`` bar (no return across the two markets).

Each ticker's count of bars since its last print (``print_gaps``, kept with the snapshot for a thin ticker's next
return) is written as 0 under the new version, deliberately: the reloaded prices are the history file's last
row, in which every ticker has a close (engine/history.py refuses a missing one), stamped with when that row was
printed (``price_ts``: ``history.printed_at``, never later than the reload), and the next bar is a reset bar: no
return is measured across the reload. The
old counts belong to the prices the reload replaces; carried onto the new ones they would shrink a thin
ticker's next return by ``sqrt`` of bars it does not span.

Prices that the reload changes are a re-mark, and a re-mark shows as P&L: the next snapshot values the book at
the reloaded prices against the references kept, as it would a price correction from the feed. We chose this
over shifting the references by the revaluation (as a capital flow is, engine/book.py) because the marks are
the desk's valuation: a shift would hide a real change of value from the daily P&L and the drawdown breakers
for good, and a tick of the old market processed after the reload would then be measured against shifted
references (a fake gain, then a fake loss). Reloading the prices the store already holds moves nothing.
``--reset`` (:func:`reset_store`) deletes the references with everything else: a reset starts afresh.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import redis

from engine import math_logic
from engine.errors import RiskdeskError
from engine.market_model import stressed_meta
from engine.records import Float64Array, MarketSnapshot
from engine.settings import Settings
from engine.store import EPOCH_KEY, GLOBAL_AUDIT_KEY, MARKET_KEY, REFERENCE_KEY, STRESSED_KEY, Store
from engine.store.slots import slot_transaction

WATCH_RETRIES = 5
"""A reload that loses its WATCH this many times in a row (the stream daemon keeps writing) gives up."""


class ReloadError(RiskdeskError):
    code = "RELOAD_REFUSED"
    fix = "see `python warmup.py --help`"


def reload_market(
    store: Store,
    settings: Settings,
    tickers: Sequence[str],
    prices: Float64Array,
    cov: Float64Array,
    *,
    now: float,
    actor: str,
    detail: dict[str, object],
    standardized: Float64Array | None = None,
    observed: npt.NDArray[np.bool_] | None = None,
    printed: float | None = None,
) -> int:
    """Replace the stored market by ``tickers, prices, cov`` (one model bar); returns the new version.

    ``standardized``: the history's window of standardized returns (T, N), written in the same transaction
    (stamped with the new version), so no reader sees the new market with the old window; ``observed`` (bool,
    same shape; None: all) marks its missing entries (``warmup.standardized_history``). ``printed``: when the
    prices were printed (``history.printed_at``: the stream counts the nights since), never later than ``now``;
    None: ``now``.
    Refused (nothing written) when the store's universe holds a ticker that ``tickers`` does not cover.
    """
    for _ in range(WATCH_RETRIES):
        with slot_transaction(store.client) as pipe:  # on a Redis Cluster: one MULTI per slot, market first
            try:
                pipe.watch(MARKET_KEY, STRESSED_KEY, REFERENCE_KEY, EPOCH_KEY)
                header = store.read_market_header(pipe)
                missing = sorted(set(header.tickers) - set(tickers))
                if missing:
                    raise ReloadError(
                        f"the store's universe holds {missing}, which the history does not cover; add their "
                        "columns to the file (or re-seed with --reset)"
                    )
                epoch = store.read_market_epoch(pipe) + 1
                pids = store.portfolio_ids(pipe)
                snap = MarketSnapshot(
                    version=header.version + 1, ts=now, tickers=tuple(tickers), prices=np.asarray(prices),
                    price_ts=np.full(len(tickers), now if printed is None else min(printed, now)), cov=cov,
                )  # fmt: skip
                stressed = math_logic.build_stressed_covariance(
                    cov,
                    vol_multiplier=settings.model.stress_vol_multiplier,
                    correlation_floor=settings.model.stress_correlation_floor,
                )
                pipe.multi()
                store.write_market(snap, pipe)
                store.write_print_gaps(snap.version, np.zeros(len(snap.tickers)), pipe)  # module docstring
                cfg = settings.model
                meta = stressed_meta(
                    source="history reload: the covariance estimated from the history (EWMA, one model bar)",
                    market_version=snap.version, bars_per_day=cfg.bars_per_day, bar_seconds=cfg.bar_seconds,
                    vol_multiplier=cfg.stress_vol_multiplier, correlation_floor=cfg.stress_correlation_floor,
                    written_at=now, actor=actor, detail=detail,
                )  # fmt: skip
                store.write_stressed(snap.version, snap.tickers, stressed, pipe, meta=meta)
                store.write_reference_prices(snap.tickers, snap.prices, now, pipe)
                store.bump_market_epoch(pipe)  # the P&L references and drawdowns are kept (module docstring)
                if standardized is not None:
                    store.write_standardized_window(
                        snap.tickers, np.full(len(standardized), snap.version, dtype=np.int64), standardized,
                        settings.model.fhs_window, pipe, observed=observed,
                    )  # fmt: skip
                record = {"ts": now, "actor": actor, "action": "load_history", "version": snap.version,
                          "epoch": epoch, "portfolios": len(pids), "peaks": "kept", **detail}  # fmt: skip
                store.append_audit(GLOBAL_AUDIT_KEY, record, pipe)
                pipe.execute()
                return snap.version
            except redis.WatchError:
                continue
    raise ReloadError(f"the market kept changing during {WATCH_RETRIES} attempts; stop the stream daemon and retry")


def reset_store(store: Store, *, keep_audit: bool, now: float, actor: str) -> int:
    """Delete every Riskdesk key but the market epoch (bumped) and, with ``keep_audit``, the audit trail
    (:meth:`Store.audit_trail_keys`); one transaction, which also audits the reset. Returns keys deleted."""
    keys = store.reset_keys(keep_audit=keep_audit)
    pipe = slot_transaction(store.client)
    for key in keys:  # one DEL per key: a multi-key DEL would span slots on a Redis Cluster
        pipe.delete(key)
    store.bump_market_epoch(pipe)
    record = {"ts": now, "actor": actor, "action": "reset", "keys_deleted": len(keys), "audit_kept": keep_audit}
    store.append_audit(GLOBAL_AUDIT_KEY, record, pipe)
    pipe.execute()
    return len(keys)
