"""RFC 5080 §2.2.2 duplicate detection: a retransmission gets the reply already sent.

A NAS that does not hear back resends the same packet (same source address and
port, Identifier and Request Authenticator).  Verifying it a second time would
reject a good login because its OTP is now spent, so the first reply is kept
for ``lifetime`` seconds and sent again instead.  A duplicate that arrives while
the first is still being verified is dropped (the NAS will ask again).

Pure: the caller passes the time.  Entries all live equally long, so they
expire in insertion order and a FIFO queue finds them without scanning.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import Enum

DuplicateKey = tuple[str, int, int, bytes]
"""(source address, source port, Identifier, Request Authenticator)."""


class Pending(Enum):
    NEW = "new"
    """Not seen: verify it (it is now marked in flight)."""
    IN_FLIGHT = "in flight"
    """Seen and still being verified: drop this copy."""


@dataclass
class _Entry:
    reply: bytes | None
    expires: float


class DuplicateCache:
    def __init__(self, lifetime: float, max_entries: int) -> None:
        if lifetime <= 0 or max_entries <= 0:
            raise ValueError("lifetime and max_entries must be above 0")
        self.lifetime = lifetime
        self.max_entries = max_entries
        self._entries: dict[DuplicateKey, _Entry] = {}
        self._expiry: deque[tuple[float, DuplicateKey]] = deque()

    def __len__(self) -> int:
        return len(self._entries)

    def begin(self, key: DuplicateKey, now: float) -> Pending | bytes:
        """The cached reply, IN_FLIGHT, or NEW (and from now on in flight)."""
        self._expire(now)
        entry = self._entries.get(key)
        if entry is not None:
            return Pending.IN_FLIGHT if entry.reply is None else entry.reply
        while len(self._entries) >= self.max_entries:
            _, oldest = self._expiry.popleft()
            self._entries.pop(oldest, None)
        self._put(key, _Entry(None, now + self.lifetime))
        return Pending.NEW

    def finish(self, key: DuplicateKey, reply: bytes | None, now: float) -> None:
        """Remember the reply sent; with None (nothing sent) forget the request."""
        if reply is None:
            self._entries.pop(key, None)
            return
        self._put(key, _Entry(reply, now + self.lifetime))

    def _put(self, key: DuplicateKey, entry: _Entry) -> None:
        self._entries[key] = entry
        self._expiry.append((entry.expires, key))

    def _expire(self, now: float) -> None:
        expiry = self._expiry
        while expiry and expiry[0][0] <= now:
            expires, key = expiry.popleft()
            entry = self._entries.get(key)
            if entry is not None and entry.expires <= expires:
                del self._entries[key]
