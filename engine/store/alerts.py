"""Alert state (logic/alerts.py, logic/escalation.py): run-time rule edits, each portfolio's active alerts,
their transition log, the rules' evaluation timers and the automated actions waiting to run.

Keys: ``rd:rules``, ``rd:{rd:rules}:version``, ``pf:{<id>}:alerts``, ``pf:{<id>}:alert_log``,
``pf:{<id>}:alert_eval``, ``pf:{<id>}:actions`` (see :mod:`engine.store.keys`). Every per-portfolio key shares
the portfolio's hash tag, so an alert transition, its notifications and its pending actions are written in
one MULTI transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from engine.store.base import Conn, StoreBase
from engine.store.codec import decode_int, encode_json, hash_from_flat
from engine.store.keys import RULES_KEY, RULES_VERSION_KEY, PortfolioKeys

_READ_ALERT_STATES_LUA = """
-- Every portfolio's active alerts and evaluation timers (KEYS: alerts, alert_eval, alerts, alert_eval, ...),
-- as HGETALL returns them, end to end: one reply the client parses in C instead of a pipelined command each.
local out = {}
for i, key in ipairs(KEYS) do out[i] = redis.call('HGETALL', key) end
return out
"""

_NONEMPTY_LUA = """
-- 1 for each key that exists, 0 for the others.
local out = {}
for i, key in ipairs(KEYS) do out[i] = redis.call('EXISTS', key) end
return out
"""




class AlertStore(StoreBase):
    """Rule overrides and their version, active alerts, the alert log, evaluation timers, pending actions."""

    RULES_VERSION_KEY = RULES_VERSION_KEY
    """Kept on the class for callers that WATCH it (:data:`engine.store.keys.RULES_VERSION_KEY`)."""

    @staticmethod
    def alert_eval_key(portfolio_id: str) -> str:
        return PortfolioKeys(portfolio_id).alert_eval

    @staticmethod
    def actions_key(portfolio_id: str) -> str:
        return PortfolioKeys(portfolio_id).actions

    # -- rules -----------------------------------------------------------------------------------------------
    def read_rules_version(self, conn: Conn = None) -> int:
        raw = self._conn(conn).get(RULES_VERSION_KEY)
        return 0 if raw is None else decode_int(raw, key=RULES_VERSION_KEY)

    def bump_rules_version(self, pipe: Conn = None) -> None:
        self._conn(pipe).incr(RULES_VERSION_KEY)

    def read_rule_overrides(self, conn: Conn = None) -> dict[str, Any]:
        """Run-time rule edits: rule id -> JSON ``{"rule": {...}}`` or ``{"deleted": true}``, each with the rule's
        ``version``, ``rev`` (a random token per write) and ``actor`` (:class:`logic.rules.RuleBook` writes them;
        an edit stored before versions has none)."""
        return self.read_json_hash(RULES_KEY, conn)

    def write_rule_override(self, rule_id: str, payload: Mapping[str, Any] | None, pipe: Conn = None) -> None:
        """Store a run-time rule edit; ``None`` drops it (the settings default applies again)."""
        c = self._conn(pipe)
        if payload is None:
            c.hdel(RULES_KEY, rule_id)
        else:
            c.hset(RULES_KEY, rule_id, encode_json(dict(payload)))

    # -- alerts ----------------------------------------------------------------------------------------------
    def read_active_alerts(self, portfolio_id: str, conn: Conn = None) -> dict[str, Any]:
        """Rule id -> JSON record of the portfolio's active (not yet resolved) alert."""
        return self.read_json_hash(PortfolioKeys(portfolio_id).alerts, conn)

    def alert_watch_keys(self, portfolio_id: str) -> tuple[str, ...]:
        """The keys an alert transition reads and rewrites; WATCH them before planning one."""
        keys = PortfolioKeys(portfolio_id)
        return (keys.alerts, keys.alert_eval)

    def read_alert_states(self, portfolio_ids: Sequence[str]) -> list[tuple[dict[bytes, bytes], dict[bytes, bytes]]]:
        """Each portfolio's raw active alerts and evaluation timers (the hashes of :meth:`alert_watch_keys`, as
        HGETALL returns them), in one read-only script (:meth:`_eval_per_key`)."""
        keys = [key for pid in portfolio_ids for key in self.alert_watch_keys(pid)]
        hashes = [hash_from_flat(flat) for flat in self._eval_per_key(_READ_ALERT_STATES_LUA, keys)]
        return list(zip(hashes[::2], hashes[1::2], strict=True))

    def with_pending_actions(self, portfolio_ids: Sequence[str]) -> list[str]:
        """The portfolios whose queue of automated actions is not empty (one read-only script)."""
        found = self._eval_per_key(_NONEMPTY_LUA, [self.actions_key(pid) for pid in portfolio_ids])
        return [pid for pid, n in zip(portfolio_ids, found, strict=True) if n]

    def write_active_alerts(self, portfolio_id: str, alerts: Mapping[str, Any], pipe: Conn = None) -> None:
        """Set rule id -> JSON record of active alerts (others are left alone)."""
        self.write_json_fields(PortfolioKeys(portfolio_id).alerts, alerts, pipe)

    def delete_active_alerts(self, portfolio_id: str, rule_ids: Iterable[str], pipe: Conn = None) -> None:
        self.delete_fields(PortfolioKeys(portfolio_id).alerts, rule_ids, pipe)

    def append_alert_log(self, portfolio_id: str, record: Mapping[str, Any], pipe: Conn = None) -> None:
        self.append_audit(PortfolioKeys(portfolio_id).alert_log, record, pipe)

    # -- evaluation timers -----------------------------------------------------------------------------------
    def read_alert_eval(self, portfolio_id: str, conn: Conn = None) -> dict[str, Any]:
        """Rule id -> JSON pending/clear timers of the rule."""
        return self.read_json_hash(PortfolioKeys(portfolio_id).alert_eval, conn)

    def write_alert_eval(self, portfolio_id: str, timers: Mapping[str, Any], pipe: Conn = None) -> None:
        self.write_json_fields(PortfolioKeys(portfolio_id).alert_eval, timers, pipe)

    def delete_alert_eval(self, portfolio_id: str, rule_ids: Iterable[str], pipe: Conn = None) -> None:
        self.delete_fields(PortfolioKeys(portfolio_id).alert_eval, rule_ids, pipe)

    # -- automated actions waiting to run --------------------------------------------------------------------
    def read_pending_actions(self, portfolio_id: str, conn: Conn = None) -> dict[str, Any]:
        """Action id -> JSON automated response waiting to run."""
        return self.read_json_hash(PortfolioKeys(portfolio_id).actions, conn)

    def write_pending_actions(self, portfolio_id: str, actions: Mapping[str, Any], pipe: Conn = None) -> None:
        self.write_json_fields(PortfolioKeys(portfolio_id).actions, actions, pipe)

    def delete_pending_actions(self, portfolio_id: str, action_ids: Iterable[str], pipe: Conn = None) -> None:
        self.delete_fields(PortfolioKeys(portfolio_id).actions, action_ids, pipe)
