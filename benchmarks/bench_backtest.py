"""The backtest runner's bar in steady state (logic/backtest_runner.py): 1,000 portfolios of 20 positions
(N = 500), every backtester past its burn-in with a full 500-row window, every method (normal, student_t, fhs)
forecast each bar.

- Per bar: :meth:`BacktestRunner.process_bar`: the books' read, the markers' read, :meth:`BacktestBooks.feed`
  (:func:`logic.backtest.step_many`) and :meth:`BacktestBooks.write` plus the MULTI's execution with the
  acknowledgement, beside the previous layout measured in the same run:
  each backtester stepped alone and its whole state (window included, ~200 KB of JSON) rewritten every tick.
- The bytes the tick sends to Redis (``total_net_input_bytes``), beside the previous layout's.

The backtesters are built with a full window directly (a seeded covariance and standardized returns drawn from a
t), not by feeding 530 bars: what is timed is the same either way.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import numpy as np

from benchmarks.bench_monitor import bench_settings
from benchmarks.common import Context, Row, median_us, seeded_store
from engine import math_logic
from engine.settings import Settings
from engine.store import PortfolioKeys, Store, TickEvent
from engine.store.codec import encode_json_fast
from logic.backtest import Backtester
from logic.backtest_monitor import BacktestBooks, Fed, backtest_config, summary_of
from logic.backtest_runner import BacktestRunner

PORTFOLIOS = 1000
TICKS = 8
BASELINE_TICKS = 3


def _full(bt: Backtester, rng: np.random.Generator, prices: np.ndarray) -> Backtester:
    """``bt`` past its burn-in: a seeded covariance and a full window."""
    cfg, k = bt.config, len(bt.tickers)
    state = bt.to_dict()
    seed = rng.standard_normal((cfg.seed_rows, k)) * 0.01
    state["cov"] = math_logic.ewma_covariance_from_returns(seed, cfg.decay, seed_rows=cfg.seed_rows).tolist()
    state["window"] = (rng.standard_t(5, (cfg.window, k)) * 0.8).tolist()
    state["bar"] = cfg.seed_rows + cfg.window
    state["window_count"] = state["pushed"] = cfg.window
    state["last_prices"] = prices.tolist()
    return Backtester.from_dict(state)


def _books(settings: Settings) -> tuple[tuple[str, ...], np.ndarray, dict[str, np.ndarray]]:
    tickers = tuple(settings.universe.assets)
    prices = np.array([a.price for a in settings.universe.assets.values()], dtype=np.float64)
    index = {t: i for i, t in enumerate(tickers)}
    books = {}
    for p in settings.portfolios:
        qty = np.zeros(len(tickers))
        for t, n in p.holdings.items():
            qty[index[t]] = float(n)
        books[p.id] = qty
    return tickers, prices, books


def _prefill(store: Store, settings: Settings, seed: int) -> tuple[BacktestBooks, Callable[[int], TickEvent]]:
    tickers, prices, books = _books(settings)
    rng = np.random.default_rng(seed)
    monitor = BacktestBooks(store, settings)
    fed = {}
    for pid, qty in books.items():
        cols = np.flatnonzero(qty)
        bt = _full(Backtester([tickers[i] for i in cols], backtest_config(settings, pid)), rng, prices[cols])
        fed[pid] = Fed(pid, bt, 1, uuid.uuid4().hex, summary_of(bt))
    pipe = store.client.pipeline(transaction=True)
    monitor.write(fed, pipe)
    pipe.execute()
    monitor.commit(fed)
    walk = [prices]

    def event(version: int) -> TickEvent:
        walk[0] = walk[0] * np.exp(rng.standard_normal(len(tickers)) * 0.001)
        return TickEvent(version, float(version), tickers, walk[0].copy(), bar_ts=60.0 * version)

    return monitor, event


def _bytes_in(store: Store) -> int:
    return int(store.client.info("stats")["total_net_input_bytes"])


def _tick(runner: BacktestRunner, event: TickEvent) -> int:
    return len(runner.process_bar(None, event))


def _baseline_tick(store: Store, bts: dict[str, Backtester], books: dict[str, np.ndarray], event: TickEvent) -> None:
    """The previous layout: each backtester stepped alone, its whole state (window included) as JSON."""
    index = {t: i for i, t in enumerate(event.tickers)}
    pipe = store.client.pipeline(transaction=True)
    for pid, bt in bts.items():
        cols = [index[t] for t in bt.tickers]
        bt.step(event.prices[cols], books[pid][cols], str(event.version))
        summary = summary_of(bt)
        pipe.hset(PortfolioKeys(pid).backtest + ":baseline",
                  mapping={"state": encode_json_fast(bt.to_dict()), "summary": encode_json_fast(summary),
                           "version": event.version, "token": uuid.uuid4().hex})  # fmt: skip
    pipe.execute()


def run(ctx: Context) -> list[Row]:
    settings = bench_settings(PORTFOLIOS)
    store = seeded_store(ctx, settings)
    monitor, event = _prefill(store, settings, seed=1)
    _, _, books = _books(settings)
    runner = BacktestRunner(store, settings)
    runner.books = monitor  # the prefilled backtesters

    samples, sent = [], []
    for version in range(2, 2 + TICKS):
        ev = event(version)
        before, t0 = _bytes_in(store), time.perf_counter()
        assert _tick(runner, ev) == PORTFOLIOS
        samples.append(time.perf_counter() - t0)
        sent.append(_bytes_in(store) - before)

    bts = {pid: book.bt for pid, book in monitor._books.items()}
    baseline, baseline_sent = [], []
    for version in range(2 + TICKS, 2 + TICKS + BASELINE_TICKS):
        ev = event(version)
        before, t0 = _bytes_in(store), time.perf_counter()
        _baseline_tick(store, bts, books, ev)
        baseline.append(time.perf_counter() - t0)
        baseline_sent.append(_bytes_in(store) - before)

    figure = median_us(np.array(samples[1:]))
    what = f"backtest runner per bar, {PORTFOLIOS} portfolios x 20, window 500, steady state p50"
    return [
        Row(what, figure, "us", "each stepped alone + whole state as JSON (previous layout)",
            median_us(np.array(baseline))),
        Row(f"backtest runner bytes sent to Redis per bar, {PORTFOLIOS} portfolios",
            float(np.median(sent[1:])) / 1e6, "MB",
            "whole state as JSON (previous layout)", float(np.median(baseline_sent)) / 1e6),
    ]  # fmt: skip
