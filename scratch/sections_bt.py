import sys, time, functools, collections, runpy
sys.path.insert(0, '.')
T = collections.defaultdict(float); N = collections.Counter()
def wrap(obj, name, label=None):
    f = getattr(obj, name)
    @functools.wraps(f)
    def g(*a, **k):
        t = time.process_time()
        try: return f(*a, **k)
        finally: T[label or name] += time.process_time() - t; N[label or name] += 1
    setattr(obj, name, g)
import logic.backtest as lb, logic.backtest_kernels as kk, logic.backtest_monitor as bm
from logic.backtest import Backtester, _Counts
wrap(lb, '_update_models'); wrap(lb, '_forecast_all'); wrap(kk, 'window_figures'); wrap(kk, 'quadratic_forms')
wrap(kk, 't_var_multipliers'); wrap(bm, 'summary_of'); wrap(bm, 'step_many')
wrap(Backtester, '_advance'); wrap(Backtester, '_checked'); wrap(Backtester, '_forecast'); wrap(Backtester, 'to_dict')
wrap(bm.BacktestBooks, 'feed', 'feed'); wrap(bm.BacktestBooks, 'write', 'write')
import engine.store.monitoring as mon
wrap(mon.MonitoringStore, 'write_backtest'); wrap(mon.MonitoringStore, 'append_backtest_observations')
import engine.store.codec as codec
wrap(mon, 'encode_json_fast')
sys.argv = ['steady.py', '1000', '6']
runpy.run_path('scratch/steady.py', run_name='__main__')
n = 6
for k, v in sorted(T.items(), key=lambda kv: -kv[1]): print(f"{k:32s} {v/n*1000:8.1f} ms/tick  calls/tick {N[k]/n:.0f}")
