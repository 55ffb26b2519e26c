"""Which of a user's tokens may be used now (pure): suspended tokens and expired temporary
lists are skipped by every verification, enumeration and send.

A suspension (of one token, or of all of the user's OTP) is written by an admin or the help
desk (``admin/suspend.py``) into the user's encrypted use state, and ends by itself at its end
date, compared with the pipeline's clock.  A temporary scratch list (``Token.expires``)
stops working at its expiry the same way.

A user with no usable token has no working factor: refused where the policy needs an OTP,
before any password is tried (fail closed), never treated as a user without OTP.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import replace

from otpgate.directory.records import OtpState
from otpgate.tokens import Suspension, Token, UsedState

SUSPENDED = "suspended"
EXPIRED = "expired"


def iso(stamp: int) -> str:
    """A Unix time as RFC 3339 in UTC (audit reasons, ``show``)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))


def user_suspension(used: UsedState, now: float) -> Suspension | None:
    """The suspension of all of the user's OTP, while it lasts."""
    held = used.suspension
    return held if held is not None and held.active(now) else None


def token_suspension(used: UsedState, token_id: str, now: float) -> Suspension | None:
    """The suspension of this token (its own, or the user's), while it lasts."""
    held = used.suspensions.get(token_id)
    if held is not None and held.active(now):
        return held
    return user_suspension(used, now)


def inactive(used: UsedState, token: Token, now: float) -> str | None:
    """Why ``token``'s codes are refused now (``SUSPENDED``, ``EXPIRED``), or None."""
    if token_suspension(used, token.id, now) is not None:
        return SUSPENDED
    if token.expires and now >= token.expires:
        return EXPIRED
    return None


def usable(tokens: Iterable[Token], used: UsedState, now: float) -> tuple[Token, ...]:
    return tuple(t for t in tokens if inactive(used, t, now) is None)


def until_text(held: Suspension) -> str:
    return f"until {iso(held.until)}" if held.until else "until resumed"


def refusal(state: OtpState, now: float) -> str | None:
    """Why a user who has tokens cannot log in with any of them now, or None."""
    held = user_suspension(state.used, now)
    if held is not None:
        return f"OTP suspended for the user ({until_text(held)})"
    if not state.tokens:
        return None
    why = {inactive(state.used, t, now) for t in state.tokens}
    if None in why:
        return None
    if why == {SUSPENDED}:
        return "every token suspended"
    if why == {EXPIRED}:
        return "every token expired"
    return "every token suspended or expired"


def inactive_reason(token: Token, why: str) -> str:
    """The audit reason for a right code of a token that may not be used now."""
    if why == EXPIRED:
        return f"OTP of token {token.id}, a temporary list that expired"
    return f"OTP of a suspended token ({token.id})"


def ended(used: UsedState, now: float) -> UsedState:
    """``used`` without the suspensions that are over (written with the next admin change)."""
    keep = {k: v for k, v in used.suspensions.items() if v.active(now)}
    held = used.suspension if used.suspension is not None and used.suspension.active(now) else None
    if held is used.suspension and len(keep) == len(used.suspensions):
        return used
    return replace(used, suspension=held, suspensions=keep)


def status(used: UsedState, token: Token, now: float) -> str:
    """What the token's state is now, for people: "active", "suspended until ...", a
    temporary list's expiry."""
    own = used.suspensions.get(token.id)
    if own is not None and own.active(now):
        return f"suspended {until_text(own)}"
    held = user_suspension(used, now)
    if held is not None:
        return f"suspended with all of the user's OTP, {until_text(held)}"
    if token.expires:
        if now >= token.expires:
            return f"temporary list, expired {iso(token.expires)}"
        return f"temporary list, works until {iso(token.expires)}"
    return "active"
