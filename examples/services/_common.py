"""What the example services share: the ``/call`` target check and the outbound timeout."""

from __future__ import annotations

import os
import urllib.parse

__all__ = ["CALL_TIMEOUT", "ForbiddenTarget", "check_target", "work_seconds"]

#: Seconds an outbound call may take, connect and read.
CALL_TIMEOUT = float(os.environ.get("SERVICES_CALL_TIMEOUT", "5"))
_DEFAULT_HOSTS = "127.0.0.1,localhost,::1"
_MAX_WORK_MS = 1000


class ForbiddenTarget(ValueError):
    """The ``url`` of ``/call`` is missing, not http(s), or names a host not allowed."""


def check_target(url: str | None) -> str:
    """``url`` if ``/call`` may call it, else :class:`ForbiddenTarget`."""
    if not url:
        raise ForbiddenTarget("missing url parameter")
    parts = urllib.parse.urlsplit(url)
    allowed = {
        host.strip().lower()
        for host in os.environ.get("SERVICES_CALL_ALLOWED_HOSTS", _DEFAULT_HOSTS).split(",")
        if host.strip()
    }
    if parts.scheme not in ("http", "https") or (parts.hostname or "").lower() not in allowed:
        raise ForbiddenTarget(f"not allowed: {url}")
    return url


def work_seconds(delay_ms: str | None) -> float:
    """Seconds of simulated work asked by ``?delay_ms=`` (0 to 1000 ms; anything else is 0)."""
    try:
        return min(max(int(delay_ms or 0), 0), _MAX_WORK_MS) / 1000
    except ValueError:
        return 0.0
