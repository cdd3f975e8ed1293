"""Retries of a message: within a flush, bounded attempts with backoff (:func:`send_with_retries`); across
flushes, a message whose attempts all failed on transient errors stays queued and is tried again later
(:func:`requeue`). Pure of Redis: notifications/delivery.py stores what they decide."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from notifications.channels import Channel as Sender
from notifications.channels import Message, PermanentDeliveryError, TransientDeliveryError
from notifications.config import RetryPolicy
from notifications.masking import mask_text


@dataclass(frozen=True)
class SendResult:
    status: str
    """``delivered``, ``failed``, ``skipped``, ``rate_limited`` or ``cancelled``."""
    attempts: int
    error: str = ""
    provider_id: str | None = None
    transient: bool = False
    """A failure of transient errors only, every attempt spent (the server may be down, not refusing)."""


def utc(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def send_with_retries(
    sender: Sender,
    channel: str,
    address: str,
    message: Message,
    retry: RetryPolicy,
    *,
    sleep: Callable[[float], None],
    logger: logging.Logger,
    secrets: Sequence[str],
) -> SendResult:
    """Send with bounded retries on transient failures (a server's Retry-After honoured up to the cap); never
    raises."""
    error = ""
    retry_after: float | None = None
    for attempt in range(1, retry.max_attempts + 1):
        if attempt > 1:
            delay = retry.delay_before(attempt)
            if retry_after is not None:
                delay = min(retry.max_backoff_seconds, max(delay, retry_after))
            sleep(delay)
        try:
            provider_id = sender.send(address, message)
        except TransientDeliveryError as exc:
            error, retry_after = mask_text(str(exc), secrets), exc.retry_after
            logger.info("transient failure on %s (attempt %d): %s", channel, attempt, error)
            continue
        except PermanentDeliveryError as exc:
            return SendResult("failed", attempt, str(exc))
        except Exception as exc:  # a bug in a channel: record it, do not kill the monitor
            text = mask_text(f"unexpected error: {exc!r}", secrets)
            # no traceback: an exception's text may carry a credential, only its masked form is logged
            logger.error("%s sending by %s", text, channel)
            return SendResult("failed", attempt, text)
        return SendResult("delivered", attempt, "", provider_id)
    return SendResult(
        "failed", retry.max_attempts, f"gave up after {retry.max_attempts} attempts: {error}", transient=True
    )


def requeue(
    retry: RetryPolicy, group_state: Mapping[str, Any], result: SendResult, fields: Sequence[str], now: float
) -> tuple[dict[str, Any] | None, str]:
    """The group state that keeps a group (its outbox ``fields``) queued after ``result`` (None: it leaves the
    outbox), and what its delivery record adds to the error.

    A message whose attempts all failed on transient errors (a server down, not one refusing it) is not lost: it
    stays queued and a later flush tries it again, ``retry.requeue_seconds`` after this failure, doubling per
    failure up to ``retry.max_requeue_seconds`` (``retry_at``: the flush plans the group for then), until
    ``retry.give_up_seconds`` after its first failure. The fields tried are kept (``tried``): an event that
    joins the group meanwhile (a CRITICAL, say) does not wait for the retry, the group is due for it as a new
    one is, and goes out whole. A message none of whose fields were tried before (the earlier ones cancelled or
    delivered) starts its own count: an old failure never shortens a new message's tries."""
    if not (result.status == "failed" and result.transient):
        return None, ""
    since = group_state.get("failed_since")
    carried = bool(set(group_state.get("tried") or ()) & set(fields))  # the same message, tried again
    first = float(since) if carried and isinstance(since, int | float) else now
    failures = (int(group_state.get("failures") or 0) if carried else 0) + 1
    if now - first >= retry.give_up_seconds:
        return None, f"dropped: failing since {utc(first)} ({failures} tries)"
    retry_at = now + retry.requeue_delay(failures)
    state = {**group_state, "failed_since": first, "failures": failures, "retry_at": retry_at,
             "tried": sorted(fields)}  # fmt: skip
    return state, f"kept queued, next try at {utc(retry_at)}"


def waiting(group_state: Mapping[str, Any], fields: Sequence[str]) -> float | None:
    """When a group of outbox ``fields`` may be tried again after a transient failure (:func:`requeue`), or None
    when nothing holds it: no failure, or an event joined it since."""
    retry_at = group_state.get("retry_at")
    if isinstance(retry_at, int | float) and set(fields) <= set(group_state.get("tried") or ()):
        return float(retry_at)
    return None
