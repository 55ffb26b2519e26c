"""Lockout rules: failures counted in the user's use state, locked for a while at the limit."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace

from otpgate.auth.config import LockoutConfig
from otpgate.tokens import TokenUse, UsedState


def is_locked(used: UsedState, now: float) -> bool:
    return used.locked_until > now


def record_failure(used: UsedState, now: float, rules: LockoutConfig) -> UsedState:
    failures = used.failures + 1
    if failures >= rules.max_failures:
        return replace(used, failures=0, locked_until=int(now) + 60 * rules.duration_minutes)
    return replace(used, failures=failures)


def record_success(used: UsedState, token_id: str, use: TokenUse) -> UsedState:
    return replace(used, tokens={**used.tokens, token_id: use}, failures=0, locked_until=0)


def counts_a_failure(used: UsedState) -> bool:
    """Whether a use state written by a login records a failed code."""
    return used.failures != 0 or bool(used.locked_until)


def unlock(used: UsedState) -> UsedState:
    """Clear the lockout of the codes and that of the app passwords."""
    return replace(used, failures=0, locked_until=0, app_failures=0, app_locked_until=0)


class UnrecordedFailures:
    """Failures this gateway decided but could not write: the connection died during the
    Modify, so the outcome is unknown.  A code whose write has an unknown outcome counts as
    spent; a failure whose write has an unknown outcome counts here, so that someone who
    cuts exactly the failure writes (they can tell them apart on the wire) still meets the
    lockout.  Folded into the user's next write of this gateway; forgotten after the
    lockout duration.  Keyed by the entry's immutable id; bounded."""

    def __init__(self, rules: LockoutConfig, max_entries: int = 100_000) -> None:
        self.window = 60.0 * rules.duration_minutes
        self.max_entries = max_entries
        self._by_entry: OrderedDict[bytes, tuple[int, float]] = OrderedDict()

    def count(self, entry_id: bytes, now: float) -> int:
        found = self._by_entry.get(entry_id)
        if found is None:
            return 0
        if now - found[1] >= self.window:
            del self._by_entry[entry_id]
            return 0
        return found[0]

    def add(self, entry_id: bytes, now: float) -> None:
        count = self.count(entry_id, now)
        first = self._by_entry[entry_id][1] if count else now
        self._by_entry[entry_id] = (count + 1, first)
        self._by_entry.move_to_end(entry_id)
        while len(self._by_entry) > self.max_entries:
            self._by_entry.popitem(last=False)

    def recorded(self, entry_id: bytes) -> None:
        """A write of this user's state succeeded: it holds them now."""
        self._by_entry.pop(entry_id, None)


def with_unrecorded(used: UsedState, pending: int, now: float, rules: LockoutConfig) -> UsedState:
    """``used`` with ``pending`` unrecorded failures added (locked if they reach the limit)."""
    if pending <= 0:
        return used
    if used.failures + pending >= rules.max_failures:
        return replace(used, failures=0, locked_until=int(now) + 60 * rules.duration_minutes)
    return replace(used, failures=used.failures + pending)
