"""Optional bind cache (off by default) for applications that rebind at once with the same
password+OTP, which a one-time code would otherwise refuse as a replay.

Holds no secret: per (bind name, client address, channel) only a keyed hash of what was typed (HMAC
with a random per-process key), where the code starts in it and the resolved DN, for a few
seconds.  A hit skips the OTP check only; the password part is still bound upstream.  The
channel (the listener) is part of the key: a bind accepted on one listener never skips
another listener's access rules.
"""

from __future__ import annotations

import hmac
import os
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class CachedBind:
    digest: bytes
    password_length: int
    dn: str
    expires: float


class BindCache:
    def __init__(self, ttl: float, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._key = os.urandom(32)
        self._entries: OrderedDict[tuple[str, str | None, str], CachedBind] = OrderedDict()

    def _digest(self, secret: str) -> bytes:
        return hmac.digest(self._key, secret.encode("utf-8"), "sha256")

    def remember(
        self,
        name: str,
        client: str | None,
        secret: str,
        password_length: int,
        dn: str,
        now: float,
        scope: str = "",
    ) -> None:
        if self.ttl <= 0:
            return
        key = (name.lower(), client, scope)
        self._entries.pop(key, None)
        self._entries[key] = CachedBind(self._digest(secret), password_length, dn, now + self.ttl)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def lookup(
        self, name: str, client: str | None, secret: str, now: float, scope: str = ""
    ) -> CachedBind | None:
        """The cached bind if ``secret`` is exactly what was accepted through the same
        channel (``scope``), and still fresh."""
        key = (name.lower(), client, scope)
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires <= now:
            del self._entries[key]
            return None
        return entry if hmac.compare_digest(entry.digest, self._digest(secret)) else None

    def forget(self, name: str, client: str | None, scope: str = "") -> None:
        self._entries.pop((name.lower(), client, scope), None)
