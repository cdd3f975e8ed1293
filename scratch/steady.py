"""Steady-state backtest harness: 1,000 portfolios with a full window; feed + write + markers per tick."""
import sys, time, uuid, collections
sys.path.insert(0, '.')
import numpy as np
from benchmarks.common import Context, seeded_store
from benchmarks.bench_monitor import bench_settings
from engine import math_logic
from engine.store import TickEvent
from logic.backtest import Backtester
from logic.backtest_monitor import BacktestBooks, Fed, backtest_config, summary_of
from logic.batch import read_backtest_markers

P = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
TICKS = int(sys.argv[2]) if len(sys.argv) > 2 else 8
PROFILE = len(sys.argv) > 3

def full(bt, rng, prices):
    k = len(bt.tickers); cfg = bt.config
    d = bt.to_dict()
    r = rng.standard_normal((cfg.seed_rows, k)) * 0.01
    d["cov"] = math_logic.ewma_covariance_from_returns(r, cfg.decay, seed_rows=cfg.seed_rows).tolist()
    d["window"] = (rng.standard_t(5, (cfg.window, k)) * 0.8).tolist()
    d["bar"] = cfg.seed_rows + cfg.window; d["window_count"] = d["pushed"] = cfg.window
    d["last_prices"] = prices.tolist()
    return Backtester.from_dict(d)

with Context() as ctx:
    settings = bench_settings(P)
    store = seeded_store(ctx, settings)
    tickers = tuple(settings.universe.assets)
    idx = {t: i for i, t in enumerate(tickers)}
    prices = np.array([a.price for a in settings.universe.assets.values()], dtype=float)
    books = {}
    for p in settings.portfolios:
        q = np.zeros(len(tickers))
        for t, n in p.holdings.items():
            q[idx[t]] = float(n)
        books[p.id] = q
    rng = np.random.default_rng(1)
    bb = BacktestBooks(store, settings)
    fed = {}
    for pid, q in books.items():
        held = tuple(t for t in tickers if q[idx[t]] != 0)
        bt = full(Backtester(held, backtest_config(settings, pid)), rng, prices[[idx[t] for t in held]])
        fed[pid] = Fed(pid, bt, 1, uuid.uuid4().hex, summary_of(bt))
    pipe = store.client.pipeline(transaction=True); bb.write(fed, pipe); pipe.execute(); bb.commit(fed)
    info0 = store.client.info("memory")["used_memory"]
    T = collections.defaultdict(list)
    if PROFILE:
        import cProfile, pstats; prof = cProfile.Profile()
    for v in range(2, 2 + TICKS):
        prices = prices * np.exp(rng.standard_normal(len(prices)) * 0.001)
        ev = TickEvent(v, float(v), tickers, prices.copy(), bar_ts=60.0 * v)
        n0 = store.client.info("stats")["total_net_input_bytes"]
        t0 = time.perf_counter()
        markers = read_backtest_markers(store, list(books))
        t1 = time.perf_counter()
        if PROFILE and v > 3: prof.enable()
        c1 = time.process_time()
        f = bb.feed(ev, books, None, markers)
        c2 = time.process_time()
        if PROFILE: prof.disable()
        t2 = time.perf_counter()
        pipe = store.client.pipeline(transaction=True); bb.write(f, pipe)
        c3 = time.process_time()
        T["feed cpu"].append((c2 - c1) * 1000); T["write cpu"].append((c3 - c2) * 1000)
        t3 = time.perf_counter()
        pipe.execute()
        t4 = time.perf_counter()
        bb.commit(f)
        n1 = store.client.info("stats")["total_net_input_bytes"]
        assert len(f) == P, len(f)
        for k, x in (("markers", t1 - t0), ("feed", t2 - t1), ("write", t3 - t2), ("execute", t4 - t3)):
            T[k].append(x * 1000)
        T["MB in"].append((n1 - n0) / 1e6)
    print(f"P={P} ticks={TICKS} (medians of ticks 2..)")
    for k, xs in T.items():
        print(f"  {k:10s} {np.median(xs[1:]):9.2f}   all: {[round(x,1) for x in xs]}")
    print("  used_memory MB", store.client.info("memory")["used_memory"] / 1e6)
    if PROFILE:
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)
    if len(sys.argv) > 4:
        import json
        from engine.store import PortfolioKeys
        pid = next(iter(books)); k = PortfolioKeys(pid)
        h = store.client.hgetall(k.backtest)
        for f, v in h.items(): print("  field", f, len(v))
        st = json.loads(h[b"state"]); 
        for f, v in st.items(): print("    state.", f, len(json.dumps(v)))
        print("  window", store.client.strlen(k.backtest_window))
        print("  log entry", store.client.xrevrange(k.backtest_log, count=1))
