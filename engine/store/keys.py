"""The Redis key table: the one place a Riskdesk key name is spelled.

Layout (schema version :data:`SCHEMA_VERSION`)::

    rd:schema                       string   layout version; readers refuse any other
    rd:portfolios                   set      ids of seeded portfolios
    rd:rules                        hash     alert rule id -> JSON (rules edited at run time)
    rd:{rd:rules}:version           string   bumped by every rule edit (engines reload their rule cache); in the
                                             slot of rd:rules (its hash tag is that key's whole name)
    rd:audit                        stream   global audit records (rule edits, warm-up runs)
    rd:archive                      hash     the audit archiver's state (engine/archive.py): directory (absolute),
                                             keep_seconds, keep_entries, archived (records moved to files since
                                             this hash was created), last_run; the files are the archive's truth
    rd:lock:<name>                  string   short lease (SET NX PX), e.g. the monitor's idle refresh
    rd:notify_lock                  string   lease of the process flushing notifications (SET NX PX)
    rd:nrate:<sha1 of target>       zset     send times per recipient address (per-recipient rate limit)
    hb:<component>                  hash     heartbeat of a daemon (time, counters, latency)
    rd:monitors                     zset     monitor consumer -> wall time of its last beat (the live monitors
                                             that share the portfolios, logic/shards.py)
    mkt:{m}:snapshot                hash     version, ts, tickers (JSON), prices, price_ts (arrays), cov (packed
                                             upper triangle, codec.encode_symmetric), all in one HSET per bar
    mkt:{m}:stressed                hash     version, tickers (JSON), cov (array): the crisis matrix
    mkt:{m}:reference               hash     tickers (JSON), prices (array), ts, rev: session reference prices
    mkt:{m}:ticks                   stream   one event per accepted bar (version, ts), bounded by MAXLEN;
                                             read by the consumer groups MONITOR_GROUP (snapshots, latest
                                             wins) and BACKTEST_GROUP (the backtest runner, every bar)
    mkt:{m}:stdret                  list     standardized one-bar returns, one row per bar (oldest first):
                                             version then r_i / sigma_i per ticker (codec window row; NaN:
                                             no new price for that ticker in that bar, a missing entry),
                                             bounded by LTRIM to model.fhs_window
    mkt:{m}:stdret_meta             hash     tickers (JSON, the rows' column order), seq (rows ever pushed),
                                             gen (token of the window's last rewrite), version (last row's)
    mkt:{m}:universes               hash     universe rev (codec.universe_rev of the tickers JSON) -> tickers
                                             JSON: one entry per ticker list the market ever had; a tick event
                                             names its tickers by that rev
    mkt:{m}:epoch                   string   market epoch: bumped by every reload or re-seed (never reset),
                                             no return is computed across two epochs
    mkt:{m}:splits                  hash     split id -> JSON of a stock split applied to the market (ticker,
                                             ratio, prices before/after): `warmup.py --split`, idempotent by id
                                             (engine/corporate_actions.py)
    mkt:{m}:dividends               hash     dividend id -> JSON of a cash dividend applied to the market on its
                                             ex-date (ticker, amount, prices before/after): `warmup.py
                                             --dividend`, idempotent by id (engine/dividends.py)
    pf:{<id>}:state                 hash     cash, realized_pnl, fees_paid, account type and margins,
                                             positions_rev (new random token on every positions write)
    pf:{<id>}:positions             hash     ticker -> JSON {qty, avg_price, realized_pnl}
    pf:{<id>}:trading_state         hash     state, reason, actor, ts
    pf:{<id>}:orders                hash     client_order_id -> JSON result (idempotency)
    pf:{<id>}:orders_ts             zset     client_order_id scored by its fill time (prunes old idempotency records)
    pf:{<id>}:trades                stream   trade log / audit of every decision and fill
    pf:{<id>}:audit                 stream   trading-state changes and automated actions
                                             (also limit changes and book syncs: engine/store/audit.py)
    pf:{<id>}:splits                hash     split id -> JSON of a stock split applied to this book (quantity and
                                             average price before/after, cash in lieu): applied once per id
    pf:{<id>}:dividends             hash     dividend id -> JSON of a cash dividend booked to this book (quantity,
                                             cash before/after): applied once per id
    pf:{<id>}:checks                stream   refused pre-trade checks made from the dashboard (a log of read-only
                                             questions, never of changes; apart from :audit, which holds changes)
    pf:{<id>}:history               stream   snapshot history at full resolution (entry id = time, field p = a
                                             packed row, engine/store/history.py), trimmed by age and count
    pf:{<id>}:history_tier:<ms>     string   one downsampled history tier (bucket of <ms> milliseconds): a fixed
                                             ring of packed rows, one per bucket, behind the newest time written
    pf:{<id>}:snapshot              string   latest snapshot JSON
    pf:{<id>}:peaks                 hash     equity references: day, day_open, day_peak, week, week_peak,
                                             max_peak, max_dd, last (drawdown windows and daily P&L); owner:
                                             the writer whose in-memory copy of peaks, marks and open history
                                             buckets is current (engine/store/tick_state.py)
    pf:{<id>}:flows                 zset     the capital flows a book sync booked (engine/book.py), scored by the
                                             sync's time: member JSON {ts, flow (exact decimal text), id}; written
                                             in the MULTI that shifts :peaks, read by the Performance page for its
                                             time-weighted returns, never trimmed (flows are rare)
    pf:{<id>}:marks                 hash     ticker -> JSON {side, mfe, mae} excursions of open positions
    pf:{<id>}:backtest              hash     state (JSON of logic.backtest.Backtester without its window), cov
                                             (codec array), summary (JSON), section (JSON: what the snapshot's
                                             backtest section reads of it, logic/backtest_monitor.py), version
                                             (market version of the last bar fed), token (new on every write);
                                             written by the backtest runner only (logic/backtest_runner.py)
    pf:{<id>}:backtest_window       string   the backtest's window of standardized returns: a codec array of a
                                             fixed ring of rows, one row rewritten (SETRANGE) per bar
    pf:{<id>}:backtest_log          stream   every closed horizon of the backtest (JSON observation: track,
                                             start, end, pnl, var and hit per method), bounded by MAXLEN ~
    pf:{<id>}:limits                hash     the portfolio's live limits: version (counter), rev (new random
                                             token on every write: the readers' cache key), json
                                             (engine.settings.Limits), actor, reason, ts of the last change
    pf:{<id>}:limits_log            stream   the limit changes since the limits record was created (each its
                                             audit record, also on :audit), bounded by MAXLEN ~: the Limits
                                             page's history; a reset deletes it with the limits record
    pf:{<id>}:rate                  zset     fill timestamps for the traders' order-rate throttle (every fill but
                                             the automation's liquidation-only ones)
    pf:{<id>}:auto_rate             zset     fill timestamps of the automation's liquidation-only orders (actor
                                             ``auto:*``): their own order-rate budget (logic/checks.py)
    pf:{<id>}:alerts                hash     rule id -> JSON of the active alert
    pf:{<id>}:alert_log             stream   every alert transition
    pf:{<id>}:alert_eval            hash     rule id -> JSON pending/clear timers of the rule
    pf:{<id>}:actions               hash     action id -> JSON automated response waiting to run
    pf:{<id>}:outbox                hash     delivery id -> JSON notification waiting to be sent
    pf:{<id>}:notify                hash     target -> JSON group state (last sent, deferral)
    pf:{<id>}:deliveries            stream   notification delivery log
    pf:{<id>}:order_queue           list     tickets of the orders waiting to execute, head = the one executing
                                             (engine/store/sequencer.py); gone when no order is in flight
    pf:{<id>}:order_lease           string   ticket of the order executing (SET PX: expires if its process dies)
    pf:{<id>}:order_wake:<ticket>   list     "your turn" hand-over signal of one waiting order (PX TTL)

The audit streams (``rd:audit`` and each portfolio's trades, audit, checks, alert_log and deliveries) are never
trimmed on append: the archiver (engine/archive.py) copies their older records to files, fsyncs them, and only
then trims exactly what it archived (``XTRIM MINID``).

Keys of one portfolio share the hash tag ``{<id>}`` and the market keys share ``{m}``, so every multi-key
transaction stays in one Redis Cluster slot: a fill, or an alert transition with its notifications and its
pending actions, is one MULTI over one portfolio's keys.

On a Redis Cluster (``REDIS_URL=redis+cluster://...``, engine/redis_cluster.py) market data is read in its own
round trip, never replicated per slot: the gate's trade view is one script on the market's slot and one on the
portfolio's. Global keys (``rd:*``, ``hb:*``) are used in single-key commands or in their own MULTI: a write
that spans slots commits one MULTI per slot, the global keys (registry, schema, audit, heartbeats) last
(engine/store/slots.py).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

SCHEMA_VERSION = 1
"""The layout version written to :data:`SCHEMA_KEY`; readers refuse any other."""

# -- global keys -------------------------------------------------------------------------------------------------

SCHEMA_KEY = "rd:schema"
PORTFOLIOS_KEY = "rd:portfolios"
RULES_KEY = "rd:rules"
RULES_VERSION_KEY = "rd:{rd:rules}:version"
"""Its hash tag ``{rd:rules}`` puts it in the slot of :data:`RULES_KEY` (a key without braces hashes whole), so a
rule edit and its version bump are one MULTI on a Redis Cluster too."""
GLOBAL_AUDIT_KEY = "rd:audit"
ARCHIVE_KEY = "rd:archive"
"""The audit archiver's state (:meth:`engine.store.AuditStore.write_archive_state`): where it archives, what it
keeps in Redis. Informational (the Audit page's caption): which records are archived is read from the files."""
NOTIFY_LOCK_KEY = "rd:notify_lock"
MONITORS_KEY = "rd:monitors"
"""The monitors sharing the portfolios and when each last beat (:mod:`logic.shards`)."""

# -- market keys (hash tag {m}) ----------------------------------------------------------------------------------

MARKET_KEY = "mkt:{m}:snapshot"
PRINT_GAPS_FIELD = "print_gaps"
"""Field of :data:`MARKET_KEY`: each ticker's bars since its last accepted price, tagged with the version they were
written with (``codec.encode_print_gaps``): a thin ticker's next return spans that many bars plus one."""
STRESSED_KEY = "mkt:{m}:stressed"
REFERENCE_KEY = "mkt:{m}:reference"
TICKS_KEY = "mkt:{m}:ticks"
STDRET_KEY = "mkt:{m}:stdret"
"""The window of standardized one-bar returns (:meth:`engine.store.Store.push_standardized`)."""
STDRET_META_KEY = "mkt:{m}:stdret_meta"
"""Column order, row count and rewrite token of :data:`STDRET_KEY`."""
EPOCH_KEY = "mkt:{m}:epoch"
"""Market epoch (engine/store/book.py): a counter bumped by each market reload or re-seed, kept by ``--reset``."""
SPLITS_KEY = "mkt:{m}:splits"
"""The stock splits applied to the market, by split id (engine/corporate_actions.py): a rerun splits nothing twice."""
DIVIDENDS_KEY = "mkt:{m}:dividends"
"""The cash dividends applied to the market, by dividend id (engine/dividends.py): a rerun books nothing twice."""
UNIVERSES_KEY = "mkt:{m}:universes"
"""Ticker lists by content hash (``codec.universe_rev``): a tick event names its universe by that hash."""

MONITOR_GROUP = "monitor"
"""Consumer group of the monitors on :data:`TICKS_KEY`: each tick event goes to exactly one monitor."""
BACKTEST_GROUP = "backtest"
"""Consumer group of the backtest runner (logic/backtest_runner.py) on :data:`TICKS_KEY`: every bar, in order."""

KEY_PATTERNS = ("rd:*", "hb:*", "mkt:*", "pf:*")
"""SCAN patterns that together match every Riskdesk key (the reset and the tests use them)."""


def heartbeat_key(component: str) -> str:
    return f"hb:{component}"


def lock_key(name: str) -> str:
    """The short lease ``name`` (:meth:`engine.store.Store.acquire_lock`)."""
    return f"rd:lock:{name}"


def notify_rate_key(target: str) -> str:
    """Send times to one recipient address; the address is hashed so no address appears in a key name."""
    return "rd:nrate:" + hashlib.sha1(target.encode("utf-8")).hexdigest()[:20]


# -- portfolio keys (hash tag {<id>}) ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PortfolioKeys:
    """Every key of one portfolio; all share the ``{id}`` hash tag. :meth:`all` lists them."""

    portfolio_id: str

    def _key(self, suffix: str) -> str:
        return f"pf:{{{self.portfolio_id}}}:{suffix}"

    # books and trading (engine/store/portfolio.py, engine/store/trading.py)
    @property
    def state(self) -> str:
        return self._key("state")

    @property
    def positions(self) -> str:
        return self._key("positions")

    @property
    def trading_state(self) -> str:
        return self._key("trading_state")

    @property
    def orders(self) -> str:
        return self._key("orders")

    @property
    def orders_ts(self) -> str:
        """Time index of :attr:`orders`: written in the fill's MULTI, read to prune old records."""
        return self._key("orders_ts")

    @property
    def trades(self) -> str:
        return self._key("trades")

    @property
    def rate(self) -> str:
        return self._key("rate")

    @property
    def auto_rate(self) -> str:
        """The automation's liquidation fills: counted against its own budget, not the traders' throttle."""
        return self._key("auto_rate")

    @property
    def audit(self) -> str:
        return self._key("audit")

    @property
    def checks(self) -> str:
        """Refused pre-trade checks (engine/store/audit.py): apart from :attr:`audit`, which holds changes."""
        return self._key("checks")

    @property
    def splits(self) -> str:
        """The stock splits applied to this book, by split id (engine/corporate_actions.py)."""
        return self._key("splits")

    @property
    def dividends(self) -> str:
        """The cash dividends booked to this book, by dividend id (engine/dividends.py)."""
        return self._key("dividends")

    @property
    def limits(self) -> str:
        """The live limits and their version (engine/store/limits.py)."""
        return self._key("limits")

    @property
    def limits_log(self) -> str:
        """The limit changes of the live limits record (engine/store/limits.py)."""
        return self._key("limits_log")

    # monitoring (engine/store/monitoring.py)
    @property
    def history(self) -> str:
        return self._key("history")

    def history_tier(self, resolution_ms: int) -> str:
        """The ring of one downsampled history tier (engine/store/history.py), by its bucket length."""
        return self._key(f"history_tier:{int(resolution_ms)}")

    @property
    def snapshot(self) -> str:
        return self._key("snapshot")

    @property
    def peaks(self) -> str:
        return self._key("peaks")

    @property
    def flows(self) -> str:
        """The capital flows book syncs booked, by time (:meth:`engine.store.MonitoringStore.shift_peaks`)."""
        return self._key("flows")

    @property
    def marks(self) -> str:
        return self._key("marks")

    @property
    def backtest(self) -> str:
        return self._key("backtest")

    @property
    def backtest_log(self) -> str:
        return self._key("backtest_log")

    @property
    def backtest_window(self) -> str:
        return self._key("backtest_window")

    # alerts (engine/store/alerts.py)
    @property
    def alerts(self) -> str:
        return self._key("alerts")

    @property
    def alert_log(self) -> str:
        return self._key("alert_log")

    @property
    def alert_eval(self) -> str:
        return self._key("alert_eval")

    @property
    def actions(self) -> str:
        return self._key("actions")

    # notifications (engine/store/notifications.py)
    @property
    def outbox(self) -> str:
        return self._key("outbox")

    @property
    def notify_state(self) -> str:
        return self._key("notify")

    @property
    def deliveries(self) -> str:
        return self._key("deliveries")

    # the order queue (engine/store/sequencer.py): transient, see :meth:`transient`
    @property
    def order_queue(self) -> str:
        return self._key("order_queue")

    @property
    def order_lease(self) -> str:
        return self._key("order_lease")

    @property
    def order_wake_prefix(self) -> str:
        """The common prefix of the wake keys (the queue's scripts build the next order's wake key from it)."""
        return self._key("order_wake:")

    def order_wake(self, ticket: str) -> str:
        return self.order_wake_prefix + ticket

    def transient(self) -> tuple[str, ...]:
        """The order queue's fixed keys: they exist only while an order is in flight (the queue list is
        deleted by Redis when its last ticket leaves, the lease is deleted on release or expires), so they are
        not part of :meth:`all`, the keys a portfolio's data lives in; the per-ticket wake keys
        (:meth:`order_wake`) carry a PX TTL as well."""
        return (self.order_queue, self.order_lease)

    def all(self) -> tuple[str, ...]:
        """Every key of the portfolio (a test checks that the store writes no other)."""
        return (
            self.state, self.positions, self.trading_state, self.orders, self.trades, self.rate, self.audit,
            self.history, self.snapshot, self.peaks, self.marks,
            self.alerts, self.alert_log, self.alert_eval, self.actions,
            self.outbox, self.notify_state, self.deliveries,
            self.backtest, self.backtest_log, self.orders_ts,
            self.limits, self.backtest_window, self.checks, self.limits_log, self.auto_rate, self.splits,
            self.flows, self.dividends,
        )  # fmt: skip
