"""Seed (or re-seed, or grow) the Riskdesk store from the settings.

Usage::

    python warmup.py                       # seed an empty store; on a seeded one add only what is new
    python warmup.py --history prices.csv  # estimate the EWMA covariance from a price history instead
    python warmup.py --reset [--yes]       # wipe every Riskdesk key and seed again
    python warmup.py --add-ticker IBM --price 180 --vol 0.22   # grow the universe, keep holdings and history
    python warmup.py --positions book.csv  # seed portfolios from the desk's book, with their cost basis
    python warmup.py --sync [--positions book.csv] [--dry-run] [--create]   # reconcile seeded portfolios
    python warmup.py --split AAA 2 [--reason TEXT] [--split-id ID] [--force]   # a 2-for-1 split (1/10: 1-for-10)
    python warmup.py --dividend AAA 0.25 [--reason TEXT] [--dividend-id ID] [--force]   # AAA goes ex 0.25 a share

Idempotent: running it twice changes nothing the second time and says so. Exit status 0 on success, 2 on bad
input or an unreachable store, with the reason on stderr.

The window of standardized returns (``mkt:{m}:stdret``, the scenarios of ``model.var_method = "fhs"`` and the
sample of the Student-t fit) is filled the way the stream daemon fills it, bar by bar
``z_t = r_t / sqrt(diag S_{t-1})`` then ``S_t = lam S_{t-1} + (1 - lam) r_t r_t'``
(:func:`standardized_history`): from ``--history`` after the rows that seed the matrix, or, without a history,
from ``model.fhs_window`` returns simulated from the settings' matrix (seed ``stream.seed``, else 0), which
leaves the seeded matrix itself unchanged. A history with a missing close (NaN: ``engine.history`` refuses
one in a file today, so only a caller's array can hold it) is a missing entry, marked as the daemon marks a
ticker without a new price: return 0 in the matrix, missing in the window (not a 0 observation of the
Student-t fit). ``--add-ticker`` gives the new ticker's column of the existing rows
standard normal draws (it has no history; real rows replace them as bars arrive). Standardized returns have no
unit, so a daily file's fill the window of a one-minute model as they are.

The history CSV (engine/history.py) is wide (``date`` then one close column per ticker) or long
(``date,ticker,close``); its bar length (minute, hourly, daily, weekly) is read from its timestamps and the
covariance scaled to one model bar. On a seeded store ``--history`` reloads the market (new epoch, books,
trades and audit kept, engine/reload.py); ``--reset`` keeps the audit trail unless ``--wipe-audit``. The book
CSV and ``--sync`` are described in engine/book.py. ``--split`` restates a ticker's price, collar reference,
every book and the live position limits on it for a stock split before its first post-split print, with the
stream daemon stopped (engine/corporate_actions.py: what changes, the cash in lieu of fractions, a second split
refused while the ticker has not printed, what to edit by hand in the settings file, the operating procedure).
``--dividend`` books a cash dividend on its ex-date the same way (engine/dividends.py): the price and collar
reference lowered by the amount, each holder's cash credited (a short debited), so the ex-date is no loss.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import numpy as np
import redis

from engine import book, corporate_actions, dividends, history, math_logic, reload
from engine.errors import RiskdeskError
from engine.market_model import stressed_meta
from engine.records import MarketSnapshot, PortfolioState, Position, TradingState, TradingStatus
from engine.redis_server import connect
from engine.sessions import market_calendar
from engine.settings import Settings, load_settings, valid_symbol
from engine.store import (
    GLOBAL_AUDIT_KEY,
    MARKET_KEY,
    REFERENCE_KEY,
    STDRET_META_KEY,
    STRESSED_KEY,
    PortfolioKeys,
    StandardizedWindow,
    Store,
)
from engine.store.slots import slot_transaction
from logic.access import os_user

ACTOR = f"warmup:local:{os_user()}"
"""The audit actor of every change this script makes (seed, reset, book sync, capital flows, limits sync): the
tool and the OS account that ran it, as the dashboard's local operator is ``local:<os user>`` (from the password
database, not ``$USER``): a $250k withdrawal by ``--sync`` names who ran it."""


class WarmupError(RiskdeskError):
    code = "WARMUP_INPUT"
    fix = "see `python warmup.py --help`"


SIM_WINDOW_SEED = 0
"""Random seed of the simulated warm-up window when ``stream.seed`` is unset (reproducible seeds)."""
HISTORY_SEED_ROWS = 30
"""Rows of ``--history`` whose second moment seeds the EWMA matrix (``ewma_covariance_from_returns``)."""


@dataclass(frozen=True)
class SeedMarket:
    tickers: tuple[str, ...]
    prices: np.ndarray
    cov: np.ndarray
    standardized: np.ndarray | None = None
    """Standardized one-bar returns, oldest first, shape (T, N); None: simulate them from ``cov``."""
    observed: np.ndarray | None = None
    """Which entries of ``standardized`` are observations (bool, same shape); None: all."""
    printed: float | None = None
    """When ``prices`` were printed (``history.printed_at``), the stored price time of every ticker (never later
    than the warm-up); None: the warm-up's time (prices typed in the settings)."""


def standardized_history(
    returns: np.ndarray,
    decay: float,
    *,
    initial: np.ndarray | None = None,
    seed_rows: int = HISTORY_SEED_ROWS,
    gaps: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The EWMA matrix after ``returns`` and the standardized returns seen on the way, as the daemon sees them.

    Without ``initial`` the first ``m = min(T, seed_rows)`` rows seed the matrix and give no standardized row
    (there is no forecast before them), exactly as :func:`engine.math_logic.ewma_covariance_from_returns`, whose
    matrix this returns bit for bit. Returns ``(cov, z, observed)`` with ``z`` of shape (T - m, N) (T rows with
    ``initial``) and ``observed`` which of its entries are observations
    (:func:`engine.math_logic.standardize_observed`). A NaN return (no price on one side of it) is a missing
    entry, as the daemon treats a ticker without a new price: 0 in the matrix's update, missing in ``z``.
    ``gaps`` (same shape, >= 1; None: all 1): the bars each return spans since its ticker's previous price, as the
    daemon counts them; every row, seed rows included, enters as ``r / sqrt(g)`` (``math_logic.per_bar_returns``).
    A history file has a close for every ticker in every row: its returns span one bar each.
    """
    history = np.asarray(returns, dtype=np.float64)
    present = ~np.isnan(history)
    if not present.all():
        history = np.where(present, history, 0.0)
    if gaps is not None:
        spans = np.asarray(gaps, dtype=np.float64)
        if spans.shape != history.shape or not np.isfinite(spans).all() or (spans < 1.0).any():
            raise ValueError(f"gaps must be finite and >= 1, shape {history.shape}")
        history = history / np.sqrt(spans)  # math_logic.per_bar_returns, row by row: the same bits
    if initial is None:
        m = min(len(history), seed_rows)
        cov = math_logic.ewma_covariance_from_returns(history[:m], decay, seed_rows=seed_rows)
        rest, rest_present = history[m:], present[m:]
    else:
        cov = np.array(initial, dtype=np.float64, order="C", copy=True)
        rest, rest_present = history, present
    z = np.empty_like(rest)
    observed = np.empty(rest.shape, dtype=bool)
    for t, row in enumerate(rest):
        vols = np.sqrt(np.clip(np.diagonal(cov), 0.0, None))
        z[t], observed[t] = math_logic.standardize_observed(row, vols, rest_present[t])
        math_logic.update_covariance_ewma(cov, row, decay, validate=False)
    return cov, z, observed


def simulated_window(settings: Settings, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``model.fhs_window`` standardized returns of normal returns simulated from ``cov`` (seeded), with which
    are observations (all but a ticker of volatility 0)."""
    seed = settings.stream.seed if settings.stream.seed is not None else SIM_WINDOW_SEED
    rng = np.random.default_rng(seed)
    values, vectors = np.linalg.eigh(cov)
    factor = vectors * np.sqrt(np.clip(values, 0.0, None))
    returns = rng.standard_normal((settings.model.fhs_window, cov.shape[0])) @ factor.T
    _, z, observed = standardized_history(returns, settings.model.ewma_decay, initial=cov)
    return z, observed


def per_bar_vols(settings: Settings, annual_vols: Sequence[float]) -> np.ndarray:
    """Annual volatility -> one-bar (one-minute) volatility."""
    return np.asarray(annual_vols, dtype=float) / math.sqrt(settings.model.bars_per_year)


def market_from_settings(settings: Settings) -> SeedMarket:
    assets = settings.universe.assets
    tickers = tuple(assets)
    vols = per_bar_vols(settings, [a.annual_vol for a in assets.values()])
    cov = math_logic.covariance_from_vols_and_correlation(vols, settings.universe.correlation)
    prices = np.array([a.price for a in assets.values()], dtype=float)
    return SeedMarket(tickers, prices, cov)


def read_history(path: Path, settings: Settings) -> SeedMarket:
    """Estimate the seed covariance from a CSV of closes (engine/history.py): the EWMA covariance of the file's
    own returns, scaled from the file's bar (read from its timestamps) to one model bar."""
    hist = history.read_history(path, settings.universe.assets)
    missing = sorted(set(settings.universe.assets) - set(hist.tickers))
    if missing:
        raise history.HistoryError(f"{path}:1: no price column for {missing}")
    hist = hist.reordered(tuple(settings.universe.assets))
    model = settings.model
    sessions = market_calendar(settings).sessions  # heavy: built on first use
    spans = history.night_spans(
        hist, None if sessions is None else sessions.opens, model.night_variance_share, model.bars_per_day,
        model.bar_seconds,
    )  # fmt: skip
    cov = history.model_covariance(hist, model.ewma_decay, model.bars_per_day, model.bar_seconds, spans=spans)
    _, z, observed = standardized_history(history.model_returns(hist, spans), settings.model.ewma_decay)
    printed = history.printed_at(hist, sessions)
    return SeedMarket(hist.tickers, hist.closes[-1].copy(), cov, z, observed, printed)


def _initial_portfolio(settings: Settings, portfolio_id: str, prices: dict[str, float], now: float) -> PortfolioState:
    cfg = settings.portfolio(portfolio_id)
    positions = {
        ticker: Position(qty=qty, avg_price=Decimal(str(prices[ticker])))
        for ticker, qty in cfg.holdings.items()
        if qty != 0
    }
    return PortfolioState(
        portfolio_id=cfg.id,
        account_type=cfg.account_type,
        cash=cfg.cash,
        positions=positions,
        initial_margin=cfg.initial_margin,
        maintenance_margin=cfg.maintenance_margin,
        updated_at=now,
    )


def seed(store: Store, settings: Settings, *, history: SeedMarket | None = None, now: float | None = None) -> list[str]:
    """Seed what is missing and return a list of what changed (empty when nothing did).

    An empty store gets the market snapshot (version 0), the stressed matrix, the reference prices, every
    configured portfolio with trading state ACTIVE, and the schema key, in one transaction. A seeded store
    gets only the configured portfolios and universe tickers it does not have yet.
    """
    now = time.time() if now is None else now
    if store.schema_version() is not None:
        store.require_schema()
        return _grow(store, settings, now)
    market = history or market_from_settings(settings)
    snap = MarketSnapshot(
        version=0,
        ts=now,
        tickers=market.tickers,
        prices=market.prices,
        price_ts=np.full(len(market.tickers), now if market.printed is None else min(market.printed, now)),
        cov=market.cov,
    )
    prices = dict(zip(market.tickers, market.prices.tolist(), strict=True))
    pipe = slot_transaction(store.client)  # one MULTI; on a Redis Cluster one per slot (engine/store/slots.py)
    store.write_market(snap, pipe)
    source = (
        "seed: the covariance estimated from the history file (EWMA, scaled to one model bar)"
        if history is not None
        else "seed: the settings' annual volatilities and correlation, per model bar"
    )
    _write_stressed(store, settings, snap, pipe, source)
    store.write_reference_prices(market.tickers, market.prices, now, pipe)
    if market.standardized is not None:
        window, observed = market.standardized, market.observed
    else:
        window, observed = simulated_window(settings, market.cov)
    store.write_standardized_window(
        market.tickers, np.zeros(len(window), dtype=np.int64), window, settings.model.fhs_window, pipe,
        observed=observed,
    )  # fmt: skip
    for pid in settings.portfolio_ids:
        _write_new_portfolio(store, settings, pid, prices, now, pipe)
    store.write_schema(pipe)
    store.append_audit(GLOBAL_AUDIT_KEY, {"ts": now, "actor": ACTOR, "action": "seed"}, pipe)
    pipe.execute()
    changed = [f"market: {len(market.tickers)} tickers, covariance {'from history' if history else 'from settings'}"]
    changed += [f"portfolio {pid}" for pid in settings.portfolio_ids]
    return changed


def _write_stressed(store: Store, settings: Settings, snap: MarketSnapshot, pipe: object, source: str) -> None:
    """The stressed matrix of ``snap``'s covariance, stamped with what it is computed from and when
    (``engine.market_model.stressed_meta``: the Stress tab shows it)."""
    cfg = settings.model
    stressed = math_logic.build_stressed_covariance(
        snap.cov,
        vol_multiplier=cfg.stress_vol_multiplier,
        correlation_floor=cfg.stress_correlation_floor,
    )
    meta = stressed_meta(
        source=source, market_version=snap.version, bars_per_day=cfg.bars_per_day, bar_seconds=cfg.bar_seconds,
        vol_multiplier=cfg.stress_vol_multiplier, correlation_floor=cfg.stress_correlation_floor,
        written_at=snap.ts, actor=ACTOR,
    )  # fmt: skip
    store.write_stressed(snap.version, snap.tickers, stressed, pipe, meta=meta)


def _write_new_portfolio(
    store: Store, settings: Settings, pid: str, prices: dict[str, float], now: float, pipe: object
) -> None:
    store.write_portfolio(_initial_portfolio(settings, pid, prices, now), pipe)
    state = TradingStatus(state=TradingState.ACTIVE, reason="seeded by warm-up", actor=ACTOR, ts=now)
    store.write_trading_state(pid, state, pipe)
    seed = {"ts": now, "actor": ACTOR, "action": "seed", "state": TradingState.ACTIVE}
    store.append_audit(PortfolioKeys(pid).audit, seed, pipe)


def _grow(store: Store, settings: Settings, now: float) -> list[str]:
    changed: list[str] = []
    header = store.read_market_header()
    for ticker, asset in settings.universe.assets.items():
        if ticker not in header.tickers:
            add_ticker(store, settings, ticker, asset.price, asset.annual_vol, now=now)
            changed.append(f"ticker {ticker}")
    existing = set(store.portfolio_ids())
    header = store.read_market_header()
    prices = dict(zip(header.tickers, header.prices.tolist(), strict=True))
    for pid in settings.portfolio_ids:
        if pid not in existing:
            pipe = slot_transaction(store.client)
            _write_new_portfolio(store, settings, pid, prices, now, pipe)
            pipe.execute()
            changed.append(f"portfolio {pid}")
    return changed


def add_ticker(
    store: Store, settings: Settings, symbol: str, price: float, annual_vol: float, *, now: float | None = None
) -> int:
    """Grow the universe by one ticker without touching holdings or history; returns the new version.

    The new row of the covariance uses the settings' target correlation with every existing ticker. The
    snapshot version is bumped so that cached matrices are reloaded and the stream daemon picks the ticker up.
    """
    now = time.time() if now is None else now
    if not valid_symbol(symbol):
        raise WarmupError(f"invalid ticker symbol {symbol!r}")
    if not (math.isfinite(price) and price > 0):
        raise WarmupError(f"price for {symbol} must be positive and finite, got {price}")
    if not (math.isfinite(annual_vol) and annual_vol > 0):
        raise WarmupError(f"annual vol for {symbol} must be positive and finite, got {annual_vol}")
    vol = float(per_bar_vols(settings, [annual_vol])[0])
    while True:
        with slot_transaction(store.client) as pipe:  # on a Redis Cluster the global audit commits last
            try:
                pipe.watch(MARKET_KEY, STRESSED_KEY, REFERENCE_KEY, STDRET_META_KEY)
                snap, since = store.read_market_state(pipe)  # the bars since each ticker's print go on
                if symbol in snap.tickers:
                    raise WarmupError(f"{symbol} is already in the universe")
                window = store.read_standardized()
                if window.tickers != snap.tickers:  # none stored, or stale: the daemon starts an empty one
                    window = StandardizedWindow.empty(snap.tickers)
                rng = np.random.default_rng(zlib.crc32(symbol.encode("utf-8")))
                grown_window = np.column_stack((window.values, rng.standard_normal(window.rows)))
                # the existing entries keep their marks; the new column's draws stand in as observations (as
                # before entries were marked: a column of missing entries would give the ticker no FHS risk)
                grown_observed = np.column_stack((window.observed, np.ones(window.rows, dtype=bool)))
                cov = _grown_covariance(snap.cov, vol, settings.universe.correlation)
                grown = MarketSnapshot(
                    version=snap.version + 1,
                    ts=now,
                    tickers=(*snap.tickers, symbol),
                    prices=np.append(snap.prices, price),
                    price_ts=np.append(snap.price_ts, now),
                    cov=cov,
                )
                try:
                    reference = store.read_reference_prices(pipe)
                except RiskdeskError:
                    reference = {}
                reference[symbol] = price
                pipe.multi()
                store.write_market(grown, pipe)
                store.write_print_gaps(grown.version, np.append(since, 0.0), pipe)  # the new ticker: priced now
                _write_stressed(
                    store, settings, grown, pipe,
                    f"add_ticker {symbol}: the market covariance of version {snap.version} grown by one ticker",
                )  # fmt: skip
                store.write_standardized_window(
                    grown.tickers, window.versions, grown_window, settings.model.fhs_window, pipe,
                    observed=grown_observed,
                )  # fmt: skip
                store.write_reference_prices(
                    tuple(reference), np.array(list(reference.values()), dtype=float), now, pipe
                )
                store.append_audit(
                    GLOBAL_AUDIT_KEY,
                    {"ts": now, "actor": ACTOR, "action": "add_ticker", "ticker": symbol, "price": price,
                     "annual_vol": annual_vol},
                    pipe,
                )  # fmt: skip
                pipe.execute()
                return grown.version
            except redis.WatchError:
                continue  # the daemon wrote a bar meanwhile: grow the newer snapshot


def _grown_covariance(cov: np.ndarray, vol: float, rho: float) -> np.ndarray:
    """Append one asset of one-bar volatility ``vol`` to ``cov``, keeping the matrix PSD.

    First choice: correlation ``rho`` with every existing asset, as the seed matrix has. When the existing
    assets have drifted apart (say two became strongly anti-correlated) that matrix can be indefinite; then the
    new asset is built as ``rho`` times the equal-risk factor of the existing assets plus independent noise,
    ``r_new = beta * a'r + e``, whose covariance is PSD by construction.
    """
    n = cov.shape[0]
    old_vols = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    grown = np.zeros((n + 1, n + 1))
    grown[:n, :n] = cov
    grown[n, n] = vol * vol
    cross = rho * old_vols * vol
    grown[n, :n] = cross
    grown[:n, n] = cross
    if np.linalg.eigvalsh(grown).min() >= -1e-12 * np.trace(grown):
        return grown
    a = np.divide(1.0, old_vols, out=np.zeros(n), where=old_vols > 0)
    factor_var = float(a @ cov @ a)
    cross = rho * vol / np.sqrt(factor_var) * (cov @ a) if factor_var > 0 else np.zeros(n)
    grown[n, :n] = cross
    grown[:n, n] = cross
    return grown


def reset(store: Store) -> int:
    """Delete every Riskdesk key; returns how many were deleted."""
    keys = store.all_keys()
    if keys:
        store.client.delete(*keys)
    return len(keys)


def _alone(args: argparse.Namespace, action: str, *others: object) -> None:
    """Refuse a corporate action (``action``) given with another action or an option it does not take
    (``others``: the other action's own): it would be ignored, and the operator would believe it done."""
    given = (args.history, args.reset, args.yes, args.add_ticker, args.price is not None, args.vol is not None,
             args.positions, args.sync, args.dry_run, args.create, args.wipe_audit, *others)  # fmt: skip
    if any(given):
        raise WarmupError(f"{action} runs alone: run the other actions separately")


def _split(store: Store, settings: Settings, args: argparse.Namespace) -> int:
    """``--split TICKER RATIO``: alone (no other action in the same run), audited as :data:`ACTOR`; its output
    lists what must be restated by hand (the settings file, ``max_order_qty`` / ``max_position_qty``)."""
    _alone(args, "--split", args.dividend, args.dividend_id)
    symbol, text = args.split
    if not valid_symbol(symbol):
        raise corporate_actions.SplitError(f"invalid ticker symbol {symbol!r}")
    ratio = corporate_actions.parse_ratio(text)
    result = corporate_actions.apply_split(
        store, symbol, ratio, settings=settings, actor=ACTOR, reason=args.reason, split_id=args.split_id,
        force=args.force, now=time.time(),
    )  # fmt: skip
    print("\n".join(f"warmup: {line}" for line in result.lines()))
    return 0


def _dividend(store: Store, settings: Settings, args: argparse.Namespace) -> int:
    """``--dividend TICKER AMOUNT``: alone (no other action in the same run), audited as :data:`ACTOR`; its
    output names the settings file's cash to edit by hand."""
    _alone(args, "--dividend", args.split_id)
    symbol, text = args.dividend
    if not valid_symbol(symbol):
        raise dividends.DividendError(f"invalid ticker symbol {symbol!r}")
    result = dividends.apply_dividend(
        store, symbol, dividends.parse_amount(text), settings=settings, actor=ACTOR, reason=args.reason,
        dividend_id=args.dividend_id, force=args.force, now=time.time(),
    )  # fmt: skip
    print("\n".join(f"warmup: {line}" for line in result.lines()))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="settings file (default: $RISKDESK_CONFIG or riskdesk.toml)")
    parser.add_argument("--history", type=Path, help="wide CSV of closes to estimate the covariance from")
    parser.add_argument("--reset", action="store_true", help="wipe every Riskdesk key and seed again")
    parser.add_argument("--yes", action="store_true", help="do not ask for confirmation with --reset")
    parser.add_argument("--add-ticker", metavar="SYMBOL", help="add one ticker to the universe")
    parser.add_argument("--price", type=float, help="initial price of --add-ticker")
    parser.add_argument("--vol", type=float, help="annual volatility of --add-ticker, e.g. 0.25")
    parser.add_argument("--wipe-audit", action="store_true", help="with --reset: delete the audit trail too")
    parser.add_argument("--positions", type=Path, help="book CSV (format in engine/book.py)")
    parser.add_argument("--sync", action="store_true", help="reconcile seeded portfolios with settings or --positions")
    parser.add_argument("--dry-run", action="store_true", help="with --sync: print the diff, change nothing")
    parser.add_argument("--create", action="store_true", help="with --sync: create portfolios not in the store")
    parser.add_argument("--split", nargs=2, metavar=("TICKER", "RATIO"),
                        help="restate for a stock split: RATIO new shares per old, e.g. 2, 3/2, 1/10 or 0.1; run it "
                             "before the first post-split print with the stream daemon stopped")  # fmt: skip
    parser.add_argument("--dividend", nargs=2, metavar=("TICKER", "AMOUNT"),
                        help="book a cash dividend of AMOUNT a share (e.g. 0.25) on its ex-date; run it before the "
                             "ex-date's first print with the stream daemon stopped")  # fmt: skip
    parser.add_argument("--dividend-id", help="with --dividend: its id (default TICKER-div-AMOUNT-<UTC date>); a "
                                              "rerun of the same id changes nothing")  # fmt: skip
    parser.add_argument("--reason", default="", help="with --split or --dividend: why (kept in the audit records)")
    parser.add_argument("--split-id", help="with --split: its id (default TICKER-N-for-M-<UTC date>); a rerun of "
                                           "the same id changes nothing; a new split of a ticker split before needs "
                                           "its own id")  # fmt: skip
    parser.add_argument("--force", action="store_true",
                        help="with --split (--dividend): split a ticker (book a dividend) again although it has "
                             "not printed since the last one (refused SPLIT_REPEATED / DIVIDEND_REPEATED "
                             "otherwise)")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
        store = Store(connect(settings))
        store.ping()
        if args.split:
            return _split(store, settings, args)
        if args.dividend:
            return _dividend(store, settings, args)
        if args.reason or args.split_id or args.dividend_id or args.force:
            raise WarmupError("--reason, --split-id, --dividend-id and --force go with --split or --dividend")
        if (args.price is not None or args.vol is not None) and not args.add_ticker:
            raise WarmupError("--price and --vol go with --add-ticker")
        if args.add_ticker:
            if args.price is None or args.vol is None:
                raise WarmupError("--add-ticker needs --price and --vol")
            version = add_ticker(store, settings, args.add_ticker, args.price, args.vol)
            print(f"added {args.add_ticker} at {args.price} (annual vol {args.vol}); market version {version}")
            return 0
        history = read_history(args.history, settings) if args.history else None
        seeded = store.schema_version() is not None and not args.reset
        universe = store.read_market_header().tickers if seeded else tuple(settings.universe.assets)
        positions = book.read_book(args.positions, universe) if args.positions else None
        if (args.dry_run or args.create) and not args.sync:
            raise WarmupError("--dry-run and --create go with --sync")
        if args.wipe_audit and not args.reset:
            raise WarmupError("--wipe-audit goes with --reset")
        if args.sync:
            if args.reset or history is not None:
                raise WarmupError("--sync reconciles books only: run --reset or --history separately")
            book.sync(store, settings, positions, dry_run=args.dry_run, create=args.create, now=time.time(),
                      actor=ACTOR)  # fmt: skip
            return 0
        if positions is not None:  # every check before the first write
            if seeded:
                book.plan_positions(store, settings, positions, now=time.time())
            else:
                book.check_book(settings, positions)
        if args.reset:
            if not args.yes:
                if not sys.stdin.isatty():
                    raise WarmupError("--reset wipes the store: confirm with --yes when not on a terminal")
                answer = input("This deletes every book, alert and history point. Type 'reset' to go on: ")
                if answer.strip() != "reset":
                    print("reset cancelled; nothing changed")
                    return 1
            kept = "" if args.wipe_audit else " (audit trail kept)"
            deleted = reload.reset_store(store, keep_audit=not args.wipe_audit, now=time.time(), actor=ACTOR)
            print(f"deleted {deleted} keys{kept}")
        elif history is not None and seeded:
            version = reload.reload_market(
                store, settings, history.tickers, history.prices, history.cov, now=time.time(), actor=ACTOR,
                detail={"file": str(args.history)}, standardized=history.standardized, observed=history.observed,
                printed=history.printed,
            )  # fmt: skip
            print(f"warmup: market reloaded from {args.history} (version {version}, new epoch; books kept)")
            history = None
        fresh = store.schema_version() is None
        changed = seed(store, settings, history=history)
        if positions is not None:
            replace = settings.portfolio_ids if fresh else ()
            plan = book.plan_positions(store, settings, positions, now=time.time(), replace=replace)
            book.apply_sync(store, plan, now=time.time(), actor=ACTOR)
            changed += [f"book of {pid} from {args.positions}" for pid in sorted(plan.desired)]
    except RiskdeskError as exc:
        print(f"warmup: error [{exc.code}]: {exc}", file=sys.stderr)
        return 2
    except redis.RedisError as exc:
        print(f"warmup: error [STORE_UNAVAILABLE]: cannot reach Redis ({exc}); start it with `make run`",
              file=sys.stderr)  # fmt: skip
        return 2
    if changed:
        print("warmup: seeded " + "; ".join(changed))
    else:
        print("warmup: store already seeded; nothing changed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
