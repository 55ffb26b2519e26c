"""What the prologue found, and the steps of a login as ``otpgate test-auth`` prints them
(recorded only when the caller passes a trace: never on a real login)."""

from __future__ import annotations

from dataclasses import dataclass

from otpgate.auth.policy import Decision
from otpgate.auth.requests import Step, Trace
from otpgate.directory.records import OtpState, UserEntry


@dataclass(frozen=True)
class Ready:
    """What the prologue found: the entry, the policy's decision and (if an OTP is needed)
    the decoded state; ``refusal`` when the login cannot go on."""

    user: UserEntry | None
    decision: Decision
    state: OtpState | None = None
    refusal: str | None = None
    waivable: bool = False
    """Report-only mode may accept the password alone despite ``refusal``: set only where
    the refusal is about the second factor (no token, suspension, lockout, a missing PIN),
    never for the channel's access rules or the account's own state."""


def note(trace: Trace, name: str, ok: bool | None, detail: str) -> None:
    if trace is not None:
        trace.append(Step(name, ok, detail))


def noted(trace: Trace, ready: Ready) -> Ready:
    """``ready``, its findings recorded in ``trace``."""
    if trace is not None and ready.user is not None:
        note(trace, "resolve", True, f"the entry is {ready.user.dn}")
        decision = ready.decision
        need = "OTP required" if decision.needs_otp else "no OTP needed"
        note(trace, "policy", None, f"{need} ({decision.reason})")
        if ready.state is not None:
            kinds = ", ".join(f"{t.id} {t.type.value}" for t in ready.state.tokens)
            note(trace, "tokens", bool(ready.state.tokens), kinds or "none")
            locked = ready.refusal == "locked out"
            note(trace, "lockout", not locked, "locked out" if locked else "not locked")
    return ready
