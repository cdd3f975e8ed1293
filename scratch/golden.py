"""Dump every observation and summary of a seeded run (compare main vs worktree bit for bit)."""
import json, sys
import numpy as np
from logic.backtest import BacktestConfig, Backtester, Track
rng = np.random.default_rng(3)
out = []
for k, h in ((1, 1), (5, 3), (20, 7)):
    cfg = BacktestConfig(window=60, horizon_bars=h, rolling=40)
    bt = Backtester([f"T{i}" for i in range(k)], cfg)
    p = 100 * np.exp(np.cumsum(rng.standard_t(4, (400, k)) * 0.01, axis=0))
    q = rng.integers(-50, 50, (400, k)).astype(float)
    for i in range(400):
        out += [o.to_dict() for o in bt.step(p[i], q[i], str(i))]
        if i % 37 == 0:
            out.append({t: {m: s.to_dict() for m, s in bt.summary(t).items()} for t in ("bar", "limit")})
    st = bt.to_dict(); st.pop("window_count", None); st.pop("pushed", None)
    for cs in st["counts"].values():
        for c in cs.values():
            c["recent"] = "".join(str(int(h)) for h in c["recent"])
    out.append(st)
print(json.dumps(out))
