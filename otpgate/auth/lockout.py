"""Lockout rules: failures counted in the user's use state, locked for a while at the limit."""

from __future__ import annotations

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
    return replace(used.with_use(token_id, use), failures=0, locked_until=0)


def unlock(used: UsedState) -> UsedState:
    return replace(used, failures=0, locked_until=0)
