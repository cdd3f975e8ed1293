"""Monitors sharing the portfolios (logic/shards.py): time until every portfolio has a snapshot of a tick.

1, 2 and 4 real monitor processes (``python -m logic.monitor`` with ``monitor.shard_portfolios = true``, no
alerts) share 1,000 portfolios of 20 positions (N = 500). Redis runs with AOF as in production; every timed tick
starts with no background AOF rewrite running, and a tick during which one started is not timed (another is
written in its place): the fork that starts a rewrite blocks a server of 4 GB for about 70 ms, once every ten
ticks or so, whatever the number of monitors, and landing in one count's ticks and not another's it swung the
medians more than the monitors did. The bench writes one bar with the stream daemon's code
and times until the newest snapshot of every portfolio carries that bar's version (a Lua script reads the stored
snapshots' versions every few milliseconds, each poll from the first not caught up on). One untimed tick first
(each process loads the matrix and the backtests). Baseline in the same run: one monitor. Each count is started
twice, in turn, and its figure is the median of the ticks of both starts (:data:`ROUNDS`). Beside each count, the
CPU per tick of Redis's main thread and of the monitors (diagnostic): Redis runs every command on that one thread,
so its CPU per tick (from the bar's write) is about a floor under the time to every snapshot, whatever the number
of monitors.

On C cores no count can beat (Redis's CPU + every monitor's CPU per tick) / C, and one monitor already keeps
Redis and its own Python overlapped (its Python on one core while Redis writes the lane before, logic/batch_tick.py):
on this shared 2-core machine one monitor keeps about 1.5-1.6 cores busy, and the bound for two monitors (each
adds its fixed work: the matrix read, its membership, a lane at least) is about what one monitor takes, so the 2-
and 4-monitor rows come out about equal to one monitor or above it (README "Scale out"); on a machine with a core
per monitor each adds its share of throughput, down to Redis's own time per tick (``BENCH_SCALE_MONITORS=1,2,4,8``
on 16 cores, two runs: 93.7 / 84.3 / 75.3 / 74.3 ms and 134 / 86 / 78.6 / 94.2 ms).

The deployment as ``make run`` has it: one monitor and the backtest runner (``python -m logic.backtest_runner``)
in its own process, every portfolio's backtest past its burn-in (a full 500-row window, every method forecast each
bar, as bench_backtest.py builds them): the time to every snapshot of a tick while the runner feeds the same bar
on the same two cores, beside one monitor alone, and the time until the runner has fed it.

And one monitor as it runs by default, evaluating the shipped alert rules after each tick (logic/alert_batch.py)
with their timers on a thread of the same process (``AlertEngine.tick`` every 0.5 s): on a quiet desk (no
portfolio near a limit) and on a bad day (every portfolio in VaR breach: every alert's value moves every tick).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from benchmarks.bench_backtest import _prefill
from benchmarks.bench_monitor import _after_rewrite
from benchmarks.common import Context, Row, median_us, seeded_store, synthetic_assets, synthetic_books
from engine.feeds import SimulatedFeed
from engine.settings import Settings, load_settings, settings_from_dict
from engine.store import PortfolioKeys, Store
from engine.stream import StreamDaemon
from launcher import with_child_defaults
from logic.rules import rule_to_dict
from logic.shards import Membership
from tests.e2e_stack import toml_dumps

ROOT = Path(__file__).resolve().parent.parent
N = 500
PORTFOLIOS = 1000
POSITIONS = 20


def _monitor_counts(text: str) -> tuple[int, ...]:
    counts = {int(c) for c in text.split(",") if c.strip()}
    if not counts or min(counts) < 1:
        raise ValueError(f"BENCH_SCALE_MONITORS: monitor counts of 1 or more, comma-separated, got {text!r}")
    return tuple(sorted(counts | {1}))


MONITORS = _monitor_counts(os.environ.get("BENCH_SCALE_MONITORS", "1,2,4"))
"""The monitor counts timed, one always among them (the baseline): ``BENCH_SCALE_MONITORS=1,2,4,8 python
scripts/bench.py scale`` on a machine with more cores (README, "Scale out")."""
CORES = os.cpu_count() or 1
REPEAT = 4
"""Timed ticks per start of the monitors."""
MAX_TICKS_PER_SAMPLE = 3
"""Ticks written at most per timed tick wanted: a tick during which an AOF rewrite started is not timed (above)."""
ROUNDS = 2
"""Starts of each monitor count, in turn (1, 2, 4, 1, 2, 4): the ticks of all starts of a count are pooled, so a
drift of this shared machine's speed over the minutes of the bench reaches every count alike."""
ALERT_REPEAT = 9
"""Timed ticks of the rows with alerts (their timers tick meets some ticks and not others)."""
POLL_SECONDS = 0.01
TIMEOUT_SECONDS = 300.0
_CAUGHT_UP_LUA = """
-- KEYS = snapshot keys, ARGV[1] = a version; returns how many of the leading keys hold a snapshot of that
-- version or newer (it stops at the first that does not)
for i, k in ipairs(KEYS) do
  local s = redis.call('GETRANGE', k, 0, 255)  -- the version is among the first fields: no 7 KB copy per poll
  local v = s and tonumber(string.match(s, '"version":(%-?%d+)')) or -1
  if v < tonumber(ARGV[1]) then return i - 1 end
end
return #KEYS
"""
"""The poll of the bench: a stored snapshot's version never goes back (engine/store/history.py), so a key found
caught up stays so and each poll starts at the first key that was not (one read per key per tick, plus one per
poll: reading all 1,000 every poll cost Redis about 2 ms of its one core each time, work the monitors wait on)."""


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)


def _wait(condition: Any, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"bench_scale: timed out waiting for {what}")
        time.sleep(POLL_SECONDS)


def _time_to_full_set(
    ctx: Context, settings: Settings, env: dict[str, str], count: int, *, backtests: bool = False,
    alerts: bool = False, repeat: int | None = None,
) -> tuple[list[float], list[float], dict[str, list[float]]]:  # fmt: skip
    """Seconds from a bar written to the last portfolio's snapshot of it, one per timed tick, with ``count``
    monitor processes; with ``backtests`` the backtest runner runs too (steady state), and the second list holds
    the seconds until it has fed each bar; with ``alerts`` the monitors evaluate the settings' alert rules (as
    they do by default). The third: the CPU seconds used from the bar's write to the last snapshot, per timed
    tick, by the monitors (``"monitors"``), by the main thread of Redis's server (``"redis"``: the one that runs
    every command) and by the monitors, Redis's server and this process (the bar's write, the poll) together
    (``"all"``)."""
    store: Store = seeded_store(ctx, settings)
    if backtests:
        _prefill(store, settings, seed=1)  # every backtest past its burn-in
    keys = [PortfolioKeys(pid).snapshot for pid in settings.portfolio_ids]
    caught_up = store.client.register_script(_CAUGHT_UP_LUA)
    daemon = StreamDaemon(store, settings, iter(()), interval=0)  # type: ignore[arg-type]
    bars = iter(SimulatedFeed.from_settings(settings, seed=2))
    command = [sys.executable, "-m", "logic.monitor", "--idle-refresh", "0", *(() if alerts else ("--no-alerts",)),
               "--consumer"]  # fmt: skip
    procs = [
        subprocess.Popen(
            [*command, f"m{i}"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        for i in range(count)
    ]
    if backtests:
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "logic.backtest_runner", "--consumer", "bench"], cwd=ROOT, env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))  # fmt: skip
    try:
        names = {f"m{i}" for i in range(count)}
        membership = Membership(store, "bench", 30.0, 3600.0)
        _wait(lambda: names <= set(membership.members()), f"{count} monitors beating")
        samples: list[float] = []
        fed: list[float] = []
        monitors = [proc.pid for proc in procs[:count]]
        servers = [pid for pid in (ctx.redis_pid,) if pid is not None]  # Redis's server, when it is ours
        meters = {"monitors": lambda: _cpu_seconds(monitors),
                  "all": lambda: _cpu_seconds([os.getpid(), *monitors, *servers])}  # fmt: skip
        if servers:  # its main thread: the one that runs every command (not its background AOF fsync)
            meters["redis"] = lambda: _thread_seconds(servers[0])
        cpu: dict[str, list[float]] = {group: [] for group in meters}
        wanted = repeat or REPEAT
        for i in range(1 + wanted * MAX_TICKS_PER_SAMPLE):
            if len(samples) == wanted:
                break
            _after_rewrite(store.client)  # every timed tick starts with no AOF rewrite running (bench_monitor.py)
            forks = _forks(store.client)
            cpu0 = {group: meter() for group, meter in meters.items()}
            daemon.process_bar(next(bars))
            version = store.read_market_header().version
            t0 = time.perf_counter()
            cursor = [0]

            def every_snapshot(v: int = version, at: list[int] = cursor) -> bool:
                at[0] += int(caught_up(keys=keys[at[0] :], args=[v]))
                return at[0] == len(keys)

            _wait(every_snapshot, f"every snapshot at version {version}")
            # the first tick loads the matrix and the backtests in every process: untimed; so is a tick during
            # which Redis forked (an AOF rewrite started: the fork of a server of GBs blocks it for tens of ms)
            timed = i > 0 and _forks(store.client) == forks
            if timed:
                samples.append(time.perf_counter() - t0)
                for group, meter in meters.items():
                    cpu[group].append(meter() - cpu0[group])
            if backtests:
                _wait(lambda v=version: int((store.read_heartbeat("backtest") or {}).get("version", -1)) >= v,
                      f"the backtests fed version {version}")  # fmt: skip
                if timed:
                    fed.append(time.perf_counter() - t0)
        if len(samples) < wanted:
            raise RuntimeError(f"bench_scale: {wanted - len(samples)} of {wanted} ticks met an AOF rewrite's fork")
        return samples, fed, cpu
    finally:
        for proc in procs:
            _stop(proc)


def _forks(client: Any) -> int:
    """The forks Redis has made so far (each AOF rewrite starts with one)."""
    return int(client.info("stats")["total_forks"])


def _cpu_seconds(pids: list[int]) -> float:
    """CPU seconds (user + system, every thread) used so far by the processes ``pids``."""
    return sum(sum(psutil.Process(pid).cpu_times()[:2]) for pid in pids)


def _thread_seconds(pid: int) -> float:
    """CPU seconds (user + system) used so far by the main thread of process ``pid``."""
    return next(t.user_time + t.system_time for t in psutil.Process(pid).threads() if t.id == pid)


def _monitors(count: int) -> str:
    return f"{count} monitor{'s' if count > 1 else ''}"


def _ms(samples: list[float]) -> float:
    return median_us(np.asarray(samples)) / 1000.0


def run(ctx: Context) -> list[Row]:
    rng = np.random.default_rng(5)
    assets = synthetic_assets(N, rng)
    books = synthetic_books(list(assets), PORTFOLIOS, POSITIONS, rng, id_width=4, margin_every_other=True)
    data: dict[str, Any] = {
        "universe": {"correlation": 0.3, "assets": assets}, "portfolios": books, "alert_rules": [],
        "monitor": {"shard_portfolios": True, "latest_wins": True},
    }  # fmt: skip
    settings = settings_from_dict(data)
    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    config = tmp / "riskdesk.toml"
    config.write_text(toml_dumps(data))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RISKDESK")}
    env.update({"REDIS_URL": ctx.redis_url, "RISKDESK_CONFIG": str(config)})
    with_child_defaults(env)  # as `make run` starts them

    pooled: dict[int, list[float]] = {count: [] for count in MONITORS}
    used: dict[int, dict[str, list[float]]] = {count: {} for count in MONITORS}
    for _ in range(ROUNDS):
        for count in MONITORS:
            timed, _, cpu = _time_to_full_set(ctx, settings, env, count)
            pooled[count] += timed
            for group, seconds in cpu.items():
                used[count].setdefault(group, []).extend(seconds)
    figures = {count: _ms(samples) for count, samples in pooled.items()}
    # cores busy: CPU used over the time it took (the clock-tick counts are coarse: a mean over every tick)
    cores = {count: sum(used[count]["all"]) / sum(pooled[count]) for count in MONITORS}
    # CPU per tick: Redis runs every command on its main thread, so that thread's CPU per tick (from the bar's
    # write, counted in clock ticks) is about a floor under the time to every snapshot
    per_tick = {count: {group: 1000.0 * float(np.mean(seconds)) for group, seconds in used[count].items()}
                for count in MONITORS}  # fmt: skip
    runner = _time_to_full_set(ctx, settings, env, 1, backtests=True)
    with_runner, runner_fed = _ms(runner[0]), _ms(runner[1])
    # the monitor as it runs by default: evaluating the shipped rules after each tick, their timers on a thread
    shipped = [rule_to_dict(r) for r in load_settings(ROOT / "riskdesk.toml", env={}).alert_rules]
    with_alerts: dict[str, float] = {}
    for desk, limits in (("no portfolio in breach", {"var_limit": 1e9}), ("every portfolio in VaR breach", {})):
        alerting = {**data, "alert_rules": shipped, "limits": limits}
        alert_config = tmp / f"alerts-{len(with_alerts)}.toml"
        alert_config.write_text(toml_dumps(alerting))
        alert_env = {**env, "RISKDESK_CONFIG": str(alert_config)}
        # more ticks: the timers run on their own 0.5 s clock, so a tick may or may not meet one
        alerted = _time_to_full_set(ctx, settings_from_dict(alerting), alert_env, 1, alerts=True, repeat=ALERT_REPEAT)
        with_alerts[desk] = _ms(alerted[0])
    ctx.redis().flushall()
    rows = []
    for count in MONITORS:
        what = f"time to every snapshot of a tick, {PORTFOLIOS} portfolios, {_monitors(count)}"
        if count == 1:
            rows.append(Row(what, figures[count], "ms"))
        else:
            target = "falls as monitors are added"
            rows.append(Row(what, figures[count], "ms", "1 monitor (same run)", figures[1], target,
                            figures[count] < figures[1]))  # fmt: skip
    for count in MONITORS:
        rows.append(Row(f"cores busy from a bar's write to every snapshot of it (monitors, Redis, the bar's write "
                        f"and the poll; of {CORES}), {_monitors(count)} (diagnostic)",
                        cores[count], "cores"))  # fmt: skip
    for group, whose in (("redis", "Redis's main thread (it runs every command: about a floor)"),
                         ("monitors", "the monitors, all together")):  # fmt: skip
        for count in MONITORS:
            if group not in per_tick[count]:
                continue  # no Redis process of ours to account (an external server)
            what = f"CPU per tick of {whose}, {_monitors(count)} (diagnostic)"
            if count == 1:
                rows.append(Row(what, per_tick[count][group], "ms"))
            else:
                rows.append(Row(what, per_tick[count][group], "ms", "1 monitor (same run)", per_tick[1][group]))
    for count in MONITORS:  # no count can beat the work it brings spread over every core
        if "redis" in per_tick[count]:
            bound = (per_tick[count]["redis"] + per_tick[count]["monitors"]) / CORES
            rows.append(Row(f"least time possible on {CORES} cores, (Redis's main thread + the monitors' CPU per "
                            f"tick) / cores, {_monitors(count)} (diagnostic)", bound, "ms",
                            "measured time to every snapshot (same run)", figures[count]))  # fmt: skip
    rows.append(Row(f"time to every snapshot of a tick, {PORTFOLIOS} portfolios, 1 monitor + the backtest runner "
                    f"(steady state) on the same {CORES} cores", with_runner, "ms", "1 monitor alone (same run)",
                    figures[1]))  # fmt: skip
    rows.append(Row(f"time until the backtest runner has fed the tick's bar, {PORTFOLIOS} portfolios, steady state",
                    runner_fed, "ms"))  # fmt: skip
    for desk, figure in with_alerts.items():
        rows.append(Row(f"time to every snapshot of a tick, {PORTFOLIOS} portfolios, 1 monitor with the "
                        f"{len(shipped)} shipped alert rules, {desk}", figure, "ms", "1 monitor without alerts "
                        "(same run)", figures[1]))  # fmt: skip
    return rows
