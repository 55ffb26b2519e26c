"""Report-only mode (``enforce = false`` on a front end, listener or NAS): the whole pipeline
runs and the audit says what enforcement would have done, but a correct password alone is
accepted as before.  A code that is given is verified and spent as usual, and a wrong one is
refused and counted: a code given is always checked.

How a login with password and code typed as one (an LDAP bind, RADIUS append mode) is
decided, since nothing says whether a code was appended:

1. the code is tried without writing anything (``tentative``): a match is spent, and the
   login goes on exactly as under enforcement;
2. no match: what was typed is bound upstream as the password alone; accepted, the audit
   says "would refuse";
3. that bind fails too: the login is decided as under enforcement (the code verified
   again, a miss counted towards lockout), so guessing codes costs what it always costs.

What is waived is a refusal about the second factor alone (``Ready.waivable``, set by the
prologue where it refuses): no token, lockout, suspension, a missing PIN.  Everything else
stays refused: the channel's access rules (who may use this listener or NAS at all, and a
membership that cannot be read), an account that has expired.
Logins that carry no password (RADIUS otp-only, CHAP, MS-CHAPv2, the portal) have nothing
to accept alone and are always enforced.
"""

from __future__ import annotations

from collections.abc import Callable

from otpgate.auth.decide import Typed, Verdict
from otpgate.auth.password import bind_password
from otpgate.auth.requests import AuthRequest, AuthResult, PasswordCheck
from otpgate.directory.records import OtpState, StateChange, UserEntry

REPORT_ONLY = "report-only"


def report_only(request: AuthRequest, require_otp: bool = False) -> bool:
    """Whether ``request`` is decided in report-only mode."""
    return not request.channel.enforce and not require_otp


def code_given(typed: Typed) -> bool:
    """Whether a code was given apart from the password (typed as one: unknown, False)."""
    return isinstance(typed, tuple) and bool(typed[1])


def whole(typed: Typed) -> str:
    """What was typed, taken as the password alone."""
    return typed if isinstance(typed, str) else typed[0]


def tentative(change: Callable[[OtpState], StateChange[Verdict]]) -> Callable[
    [OtpState], StateChange[Verdict]
]:
    """``change`` whose miss writes nothing (a match is written as it is)."""

    def tried(state: OtpState) -> StateChange[Verdict]:
        planned = change(state)
        return planned if planned.result.match is not None else StateChange(planned.result)

    return tried


async def password_alone(
    user: UserEntry, password: str, check_password: PasswordCheck | None, would: str
) -> AuthResult:
    """The password alone, bound upstream: accepted, the reason says what enforcement would
    have done (``would``)."""
    return await bind_password(user, password, check_password, f"would {would}")


def audit_reason(reason: str) -> str:
    return reason if reason.startswith(REPORT_ONLY) else f"{REPORT_ONLY}: {reason}"
