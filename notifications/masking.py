"""Masking of credential-bearing strings before they reach a log line, the delivery log or Redis.

What counts as a credential here: a URL's path, query and userinfo (a Slack/Mattermost webhook carries its
secret in the path; the Twilio REST URL carries the account SID), a Twilio account SID or API key SID wherever
it appears, and any secret value the process knows (auth token, SMTP password, the webhook URLs themselves).
Masked text keeps what an operator needs to see where a failure happened: the URL's scheme and host.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from urllib.parse import urlsplit

MASK = "…"

_URL = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*)://([^\s/?#'\"<>]+)([^\s'\"<>]*)")
_TWILIO_SID = re.compile(r"\b(AC|SK)[0-9a-fA-F]{32}\b")
_URL_PATH = re.compile(r"(?<![\w/])/(?:\d{4}-\d{2}-\d{2}/)?Accounts/[^\s'\"<>]*")
"""A Twilio REST path on its own (requests writes ``... with url: /2010-04-01/Accounts/<SID>/...``)."""


def mask_url(url: str) -> str:
    """``scheme://host[:port]/…``: the path, query, fragment and any ``user:password@`` are dropped."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return MASK
    if not parts.scheme or not host:
        return MASK
    return f"{parts.scheme}://{host}{':' + str(port) if port else ''}/{MASK}"


def mask_text(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with every known secret, every URL's path/query and every Twilio SID replaced by ``…``."""
    for value in sorted((s for s in secrets if s and len(s) >= 4), key=len, reverse=True):
        text = text.replace(value, MASK)
    text = _URL.sub(lambda m: mask_url(m.group(0)), text)
    text = _URL_PATH.sub("/" + MASK, text)
    return _TWILIO_SID.sub(lambda m: m.group(1) + MASK, text)


def digest(value: str) -> str:
    """A short stable fingerprint of a secret (to key state by it without storing it)."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()[:16]
