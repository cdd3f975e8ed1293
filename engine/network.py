"""Which addresses count as the loopback interface: what a server of Riskdesk may bind without a login in front
of it (the dashboard without ``[auth]``, every ``/metrics`` endpoint, Redis)."""

from __future__ import annotations

import ipaddress

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def is_loopback(address: str) -> bool:
    """Whether ``address`` (an IP or ``localhost``) is the loopback interface only."""
    address = address.strip().strip("[]").lower()
    if address in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False
