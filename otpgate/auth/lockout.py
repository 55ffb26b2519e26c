"""Lockout rules: failures counted in the user's use state, locked for a while at the limit."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace

from otpgate.auth.config import LockoutConfig
from otpgate.tokens import TokenUse, UsedState


@dataclass(frozen=True)
class Counter:
    """One lockout the use state keeps: the codes' (``failures``/``locked_until``) or the app
    passwords' (``app_failures``/``app_locked_until``); wrong ones of either kind never lock
    the other."""

    apps: bool

    def failures(self, used: UsedState) -> int:
        return used.app_failures if self.apps else used.failures

    def locked_until(self, used: UsedState) -> int:
        return used.app_locked_until if self.apps else used.locked_until

    def set(self, used: UsedState, failures: int, locked_until: int) -> UsedState:
        if self.apps:
            return replace(used, app_failures=failures, app_locked_until=locked_until)
        return replace(used, failures=failures, locked_until=locked_until)


CODES = Counter(apps=False)
APPS = Counter(apps=True)


def is_locked(used: UsedState, now: float, counter: Counter = CODES) -> bool:
    return counter.locked_until(used) > now


def record_failure(
    used: UsedState, now: float, rules: LockoutConfig, counter: Counter = CODES
) -> UsedState:
    return with_unrecorded(used, 1, now, rules, counter)


def record_success(used: UsedState, token_id: str, use: TokenUse) -> UsedState:
    return replace(used, tokens={**used.tokens, token_id: use}, failures=0, locked_until=0)


def counts_a_failure(used: UsedState, counter: Counter = CODES) -> bool:
    """Whether a use state written by a login records a failure (one of ``counter``'s)."""
    return counter.failures(used) != 0 or bool(counter.locked_until(used))


def unlock(used: UsedState) -> UsedState:
    """Clear the lockout of the codes and that of the app passwords."""
    return APPS.set(CODES.set(used, 0, 0), 0, 0)


class UnrecordedFailures:
    """Failures this gateway decided but could not write: the connection died during the
    Modify, so the outcome is unknown.  A code whose write has an unknown outcome counts as
    spent; a failure whose write has an unknown outcome counts here, so that someone who
    cuts exactly the failure writes (they can tell them apart on the wire) still meets the
    lockout.  Folded into the user's next write of this gateway; forgotten after the
    lockout duration.  Keyed by the entry's immutable id; bounded."""

    def __init__(
        self, rules: LockoutConfig, max_entries: int = 100_000, counter: Counter = CODES
    ) -> None:
        self.counter = counter
        """The lockout these failures count towards."""
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


def with_unrecorded(
    used: UsedState, pending: int, now: float, rules: LockoutConfig, counter: Counter = CODES
) -> UsedState:
    """``used`` with ``pending`` failures added to ``counter`` (locked if they reach the
    limit)."""
    if pending <= 0:
        return used
    failures = counter.failures(used) + pending
    if failures >= rules.max_failures:
        return counter.set(used, 0, int(now) + 60 * rules.duration_minutes)
    return counter.set(used, failures, counter.locked_until(used))
