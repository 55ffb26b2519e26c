"""Access-Challenge State values: random, single-use, expiring, bound to user and client.

After the password of a challenge-mode login is accepted, the NAS gets an
Access-Challenge whose State attribute it must echo with the OTP.  The State is
128 random bits; it is looked up once (and removed whatever the outcome),
only before it expires, and only for the same User-Name from the same NAS
address.  Pure apart from the randomness: the caller passes the time.

The table is keyed by a SHA-256 of the State so that a lookup's timing says
nothing about stored values.  Pending challenges are capped: beyond
``max_pending`` the oldest is dropped (its user starts again).
"""

from __future__ import annotations

import hashlib
import secrets
from collections import deque
from dataclasses import dataclass

STATE_BYTES = 16


@dataclass(frozen=True)
class Challenge:
    user_name: str
    """The User-Name of the first request, which the answer must repeat exactly."""
    dn: str
    """The entry whose password was accepted."""
    client: str
    """The NAS address the answer must come from."""
    expires: float


def _key(state: bytes) -> bytes:
    return hashlib.sha256(state).digest()


class ChallengeStore:
    def __init__(self, timeout: float, max_pending: int) -> None:
        if timeout <= 0 or max_pending <= 0:
            raise ValueError("timeout and max_pending must be above 0")
        self.timeout = timeout
        self.max_pending = max_pending
        self._pending: dict[bytes, Challenge] = {}
        self._order: deque[tuple[float, bytes]] = deque()

    def __len__(self) -> int:
        return len(self._pending)

    def issue(self, user_name: str, dn: str, client: str, now: float) -> bytes:
        """A new State for this user and NAS."""
        self._expire(now)
        while len(self._pending) >= self.max_pending:
            _, oldest = self._order.popleft()
            self._pending.pop(oldest, None)
        state = secrets.token_bytes(STATE_BYTES)
        key = _key(state)
        expires = now + self.timeout
        self._pending[key] = Challenge(user_name, dn, client, expires)
        self._order.append((expires, key))
        return state

    def take(self, state: bytes, user_name: str, client: str, now: float) -> Challenge | None:
        """The challenge ``state`` answers, if it is pending, fresh, and for this user and NAS.

        The State is spent by this call whatever the outcome.
        """
        self._expire(now)
        if len(state) != STATE_BYTES:
            return None
        found = self._pending.pop(_key(state), None)
        if found is None or found.expires <= now:
            return None
        if found.user_name != user_name or found.client != client:
            return None
        return found

    def restore(self, state: bytes, challenge: Challenge, now: float) -> None:
        """Put back a State taken for a login the directory could not decide (an outage):
        the NAS's retry may use it again, until it expires as it would have."""
        if challenge.expires <= now or len(state) != STATE_BYTES:
            return
        key = _key(state)
        if key not in self._pending:
            self._pending[key] = challenge
            self._order.append((challenge.expires, key))
            self._order = deque(sorted(self._order))

    def _expire(self, now: float) -> None:
        order = self._order
        while order and order[0][0] <= now:
            _, key = order.popleft()
            self._pending.pop(key, None)
