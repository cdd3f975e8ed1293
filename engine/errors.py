"""Every failure mode Riskdesk raises on purpose, in one place.

::

    RiskdeskError                 base of everything below; carries a stable ``code``
    ├── ConfigError               riskdesk.toml or an environment override is invalid
    ├── StoreError                the Redis store cannot be used as it is
    │   ├── StoreUnavailableError     the Redis server cannot be reached
    │   ├── StoreEmptyError           a key the caller needs is missing (store not seeded)
    │   ├── CorruptDataError          a value exists but does not decode (never executed)
    │   └── SchemaMismatchError       the store was written by another layout version
    ├── FeedError                 a market-data feed or its input file is invalid
    └── AccessDenied              the signed-in identity's roles do not allow the action

Each error has a short machine-readable ``code`` and a ``fix`` telling an operator what to do, so a page or
a log line can say both without parsing the message. The store errors' codes are the
:class:`~engine.records.ReasonCode` a refused trade carries for them (a ``StrEnum``: each equals its string).
"""

from __future__ import annotations

from engine.records import ReasonCode

WARMUP_FIX = "run `python warmup.py` (or `make run`, which seeds an empty store)"


class RiskdeskError(Exception):
    """Base class; ``code`` is stable and documented, ``fix`` is advice for a human."""

    code: str = "RISKDESK_ERROR"
    fix = ""

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        if fix is not None:
            self.fix = fix
        super().__init__(f"{message} — fix: {self.fix}" if self.fix else message)
        self.detail = message


class ConfigError(RiskdeskError):
    code = "CONFIG_INVALID"
    fix = "correct riskdesk.toml or the RISKDESK_* environment variable named in the message"


class StoreError(RiskdeskError):
    code = "STORE_ERROR"


class StoreUnavailableError(StoreError):
    code = ReasonCode.STORE_UNAVAILABLE
    fix = "start Redis with `make run`, or point REDIS_URL at a running server"


class StoreEmptyError(StoreError):
    code = ReasonCode.STORE_EMPTY
    fix = WARMUP_FIX


class CorruptDataError(StoreError):
    code = ReasonCode.STORE_CORRUPT
    fix = "re-seed the store with `python warmup.py --reset`"


class SchemaMismatchError(StoreError):
    code = ReasonCode.SCHEMA_MISMATCH
    fix = "the store was written by another Riskdesk version: re-seed it with `python warmup.py --reset`"


class FeedError(RiskdeskError):
    code = "FEED_INVALID"
    fix = "check the feed's input file against the format described in README.md"


class AccessDenied(RiskdeskError):
    """The signed-in identity's roles do not allow the action (nothing was changed)."""

    code = "ACCESS_DENIED"
    fix = "ask an admin to map your login to a role that allows it (`[access]` in riskdesk.toml)"
