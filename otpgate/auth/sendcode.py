"""Sending a code by e-mail or SMS: a step of the pipeline, never a way in of its own.

Reached only from ``Authenticator``'s branches, after the admission and the prologue (so a
locked-out user, an expired account or a user without such a token gets nothing):

* ``SendCode`` (the portal's code step and its "send again");
* ``Appended`` whose secret ends with ``otp_delimiter`` and a trigger word (``secret,sms``),
  for a user who has a token of that channel;
* ``Appended`` on a channel that can challenge (RADIUS), from a user whose only factors are
  sent codes, when the secret holds no code for an outstanding one;
* ``PasswordStep`` (RADIUS challenge mode) for such a user.

Order: the password is checked upstream (unless the first step of the same sign-in did; a
wrong one counts towards lockout, except in RADIUS challenge mode's first step, which has
always answered so), the destination is checked in the entry (none usable: nothing is
written or counted), the send is written with the state engine's compare-and-swap
(``oob.plan_send``: lockout, cooldown, hourly limit, one outstanding code), the gateway's
global budget is taken for a message that really goes out (none left: the send is
withdrawn), and only then is the code handed to the sender.  When no gateway took it, the code
is withdrawn with a second compare-and-swap and the login fails.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from twisted.logger import Logger

from otpgate.auth.decide import candidates_of
from otpgate.auth.lockout import record_failure
from otpgate.auth.oob import (
    SendPlan,
    any_outstanding,
    cancel_send,
    new_code,
    only_sent_codes,
    plan_send,
    sent_tokens,
)
from otpgate.auth.password import bind_password
from otpgate.auth.requests import Appended, AuthResult, Login, PasswordCheck, SendCode, Sent
from otpgate.directory.records import OtpState, StateChange, UserEntry
from otpgate.dn import first_rdn_value
from otpgate.errors import DirectoryUnavailable

if TYPE_CHECKING:
    from otpgate.auth.pipeline import Authenticator

log = Logger()

CHANNEL_NAMES = {"sms": "SMS", "email": "e-mail"}


def wanted_send(
    auth: Authenticator, request: Appended, state: OtpState, now: float
) -> tuple[str, str | None] | None:
    """(password, channel) when ``request`` asks for a code rather than carrying one."""
    settings = auth.settings
    rules = settings.codes
    if rules is None:
        return None
    delimiter = settings.otp.otp_delimiter
    if delimiter:
        password, sep, word = request.typed.rpartition(delimiter)
        channel = next((c for w, c in rules.triggers if w.lower() == word.lower()), None)
        if sep and password and channel is not None and sent_tokens(state, channel, now):
            return password, channel
    if not request.channel.challenges or not only_sent_codes(state, now):
        return None
    lifetime = settings.otp.sent_code_lifetime
    if any_outstanding(state, now, lifetime) and candidates_of(request.typed, state, delimiter):
        return None  # password + the code that was sent: verified as any code is
    return request.typed, None


def _sent_text(sent: Sent, again: bool = False) -> str:
    """What the user is told; a retransmitted request gets the very text of the first."""
    by = CHANNEL_NAMES.get(sent.channel, sent.channel)
    if again:
        return f"Code already sent by {by} to {sent.destination}"
    return f"Code sent by {by} to {sent.destination}"


async def send_code(
    auth: Authenticator,
    request: Login,
    user: UserEntry,
    state: OtpState,
    channel: str | None,
    password: str | None,
    check_password: PasswordCheck | None,
    retransmission: bytes | None,
    ok: bool = False,
) -> AuthResult:
    """Send the user a code (see the module).  ``ok``: what a successful send answers
    (True only for a ``PasswordStep``, whose ``needs_otp`` carries the meaning).  A suspended
    token gets none (``plan_send`` checks again on the state it writes)."""
    tokens = sent_tokens(state, channel, auth.clock.seconds())
    what = CHANNEL_NAMES.get(channel or "", "e-mail or SMS")
    if not tokens and sent_tokens(state, channel):
        return AuthResult(False, f"no code sent: the {what} token is suspended", user.dn)
    if not tokens:
        return AuthResult(False, f"no {what} token to send a code to", user.dn)
    token = tokens[0]
    kind = token.type.value
    if not token.bound:  # not written by otpgate's enrollment: never sent to
        return AuthResult(False, f"the {kind} token has no enrolled destination", user.dn)
    if password is not None:
        checked = await bind_password(user, password, check_password, "password accepted")
        if not checked.ok:
            if not ok and not checked.unavailable:
                checked = await _count_failure(auth, user, checked)
            return replace(checked, reason=f"no code sent: {checked.reason}")
    rules, sender = auth.settings.codes, auth.code_sender
    if rules is None or sender is None:
        return AuthResult(False, "no code sent: no [delivery] gateways", user.dn, token.id)
    secret = state.secrets.get(token.id)
    if secret is None:
        return AuthResult(False, f"the {kind} token has no key", user.dn, token.id)
    refused = await sender.check(user.dn, token, secret)
    if refused is not None:  # nothing to send to: nothing written, nothing counted
        why = f"{kind} code not sent: {refused.detail or refused.outcome}"
        return AuthResult(False, why, user.dn, token.id, sent=refused)
    now = auth.clock.seconds()
    code = new_code(token.digits)
    identity = retransmission or b""

    def change(fresh: OtpState) -> StateChange[SendPlan]:
        return plan_send(fresh, token, None, code, now, rules, identity)

    plan, user = await auth.spend(user, change, now)
    if not plan.ok:
        sent = Sent(kind, "", "limited", detail=plan.why)
        return AuthResult(False, plan.why, user.dn, token.id, sent=sent)
    if plan.repeat:
        sent = Sent(kind, await sender.destination(user.dn, token), "repeat")
        return AuthResult(
            ok, f"{kind} {plan.why}", user.dn, token.id, needs_otp=ok,
            challenge=_sent_text(sent, plan.again), sent=sent,
        )  # fmt: skip
    if not sender.take_budget(now):  # only a message that really goes out takes budget
        await _withdraw(auth, user, token.id, plan.sent, now, uncount=True)
        sent = Sent(kind, "", "limited", detail="global budget")
        why = f"no code sent: the gateway's budget ({rules.per_minute} per minute) is spent"
        return AuthResult(False, why, user.dn, token.id, sent=sent)
    sent = await sender.send(user.dn, first_rdn_value(user.dn), token, secret, code)
    if sent.outcome != "sent":
        await _withdraw(auth, user, token.id, plan.sent, now)
        why = f"{kind} code not sent: {sent.detail or sent.outcome}"
        return AuthResult(False, why, user.dn, token.id, sent=sent)
    why = (
        f"{kind} code sent to {sent.destination} by {sent.gateway} "
        f"({plan.sends_this_hour} of {rules.per_hour} this hour)"
    )
    return AuthResult(
        ok, why, user.dn, token.id, needs_otp=ok, challenge=_sent_text(sent), sent=sent
    )


async def _count_failure(auth: Authenticator, user: UserEntry, checked: AuthResult) -> AuthResult:
    """A wrong password on a way in that sends codes counts towards the user's lockout like
    a wrong code: "password,sms" and a RADIUS password alone answer differently for a right
    and a wrong password, so without this they were a password oracle nothing counted."""
    now = auth.clock.seconds()
    lockout = auth.settings.lockout

    def change(state: OtpState) -> StateChange[bool]:
        used = record_failure(state.used, now, lockout)
        return StateChange(bool(used.locked_until), used=used)

    try:
        locked, _user = await auth.spend(user, change, now)
    except DirectoryUnavailable:
        return checked
    return replace(checked, reason=checked.reason + (" (now locked out)" if locked else ""))


async def _withdraw(
    auth: Authenticator,
    user: UserEntry,
    token_id: str,
    sent: int,
    now: float,
    uncount: bool = False,
) -> None:
    """No gateway took the code: withdraw it (nobody has it).  If the directory cannot be
    reached now, the code simply expires unused."""
    try:
        await auth.spend(user, lambda fresh: cancel_send(fresh, token_id, sent, uncount), now)
    except DirectoryUnavailable:
        log.warn("a code no gateway took could not be withdrawn; it expires unused")


async def send_code_request(
    auth: Authenticator, request: SendCode, check_password: PasswordCheck | None
) -> AuthResult:
    """The portal's code step: an OTP is always required here (exemptions do not apply);
    without ``password`` the first step of the same sign-in checked it."""
    code_only = request.password is None
    ready = await auth.prologue(request, code_only=code_only, require_otp=True)
    user = ready.user
    if user is None:  # not reached: require_otp always looks the name up
        return AuthResult(False, "no entry")
    if ready.refusal is not None or ready.state is None:
        return AuthResult(False, f"no code sent: {ready.refusal or 'no state'}", user.dn)
    return await send_code(
        auth, request, user, ready.state, request.kind, request.password, check_password,
        request.retransmission,
    )  # fmt: skip
