"""Two branches of the pipeline's dispatch that stand apart from password + code: the
portal's first enrollment with the password alone, and the OTP proofs of RADIUS CHAP and
MS-CHAPv2.  Both pass the ``Authenticator``'s admission and prologue, and a proof spends its
code through ``Authenticator.spend`` like every other code."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from otpgate.auth.access import pin_required
from otpgate.auth.decide import verify_proof
from otpgate.auth.password import bind_password
from otpgate.auth.policy import password_only_enrollment
from otpgate.auth.requests import AuthResult, FirstEnrollment, PasswordCheck, Proof
from otpgate.directory.records import OtpState, StateChange

if TYPE_CHECKING:
    from otpgate.auth.pipeline import Authenticator


def _refused(why: str, dn: str | None = None) -> AuthResult:
    return AuthResult(False, why, dn)


# -- the portal: a first device with the password alone -------------------------------------


async def first_enrollment(
    auth: Authenticator, request: FirstEnrollment, check_password: PasswordCheck | None
) -> AuthResult:
    """Success opens nothing but the first enrollment.  A user who has a token, is locked
    out or expired is refused before the password is tried (no password oracle without
    the second factor)."""
    settings = auth.settings
    if not password_only_enrollment(
        request.network,
        auth.clock.seconds(),
        settings.enrollment_networks,
        settings.enrollment_until,
    ):
        return _refused("no one-time code (password-only enrollment does not apply)")
    ready = await auth.prologue(request, require_otp=True, fresh=True)
    user = ready.user
    if user is None:  # not reached: require_otp always looks the name up
        return _refused("no entry")
    no_token = ready.state is not None and not ready.state.tokens  # the refusal this branch is for
    if ready.refusal is not None and not no_token:
        return _refused(f"password-only enrollment: {ready.refusal}", user.dn)
    if ready.state is not None and ready.state.tokens:
        why = "no one-time code, and the user has a token: a code is required"
        return _refused(why, user.dn)
    if user.used:
        # The use state outlives a reset: this user had OTP state, so the account is
        # not new, and whoever holds the password must not enroll alone (the help desk
        # issues a scratch list with the reset).
        why = "no one-time code, and the user's tokens were reset: a code is required"
        return _refused(why, user.dn)
    why = "password only, first enrollment"
    result = await bind_password(user, request.password, check_password, why)
    return result if result.ok else replace(result, reason=f"{why}: {result.reason}")


# -- OTP proofs (CHAP, MS-CHAPv2) ------------------------------------------------------------


async def proof_login(auth: Authenticator, request: Proof) -> AuthResult:
    """The first code of the window whose proof matches is spent exactly like a typed
    one; ``check``'s value for it comes back in ``AuthResult.proof``.  A user who needs
    no OTP is refused: a proof can carry nothing else to check."""
    ready = await auth.prologue(request, code_only=True)
    user, decision = ready.user, ready.decision
    if user is None or not decision.needs_otp:
        kind = request.kind.upper()
        why = f"no OTP needed ({decision.reason}), and a {kind} proof holds only one"
        return _refused(why, user.dn if user else None)
    if ready.refusal is not None:
        return _refused(ready.refusal, user.dn)
    now, settings, entry_id = auth.clock.seconds(), auth.settings, user.entry_id
    pin = request.channel.pin  # the proof covers the user's PIN followed by the code
    required = pin_required(request.channel)

    def change(state: OtpState) -> StateChange[tuple[Any, Any, str]]:
        pending = auth.unrecorded.count(entry_id, now)
        return verify_proof(state, request.check, now, settings, pending, pin, required)

    (match, value, why), user = await auth.spend(user, change, now)
    if match is None or value is None:
        return _refused(why, user.dn)
    return AuthResult(True, "OTP proof accepted", user.dn, match.token.id, proof=value)
