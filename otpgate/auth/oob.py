"""Codes sent by e-mail or SMS (pure): making one, the write that sends it, checking it.

A sent code is random, single use and valid ``[delivery] code_lifetime`` seconds.  The use
state keeps only a keyed digest of it (HMAC-SHA-256 with the token's own key from the
encrypted seed, bound to the time of the send), so neither a reader of the directory nor
the user editing her own attributes learns or plants one.  A send is a compare-and-swap
like every spent code (``plan_send``): it checks lockout, the per-user cooldown and hourly
limit on the state as the directory holds it now, replaces any outstanding code of the
user, and records the send time, so that two gateways cannot both send past a limit.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass, replace

from otpgate.auth.config import CodeRules
from otpgate.auth.lockout import is_locked
from otpgate.auth.suspension import inactive, refusal, usable
from otpgate.directory.records import OtpState, StateChange
from otpgate.tokens import OUT_OF_BAND, Secret, Token, TokenUse, UsedState

CONTEXT = b"otpgate sent code v1\x00"
MAX_MISSES = 3
"""Wrong codes typed while a sent code is outstanding before it is withdrawn: a sent code
is a few digits, so the guesses at it are bounded even where the lockout is short and the
code long-lived."""
DIGEST_BYTES = 16
HOUR = 3600


def new_code(digits: int) -> str:
    """A uniformly random code of ``digits`` digits."""
    return f"{secrets.randbelow(10**digits):0{digits}d}"


def code_digest(key: bytes, sent: int, code: str) -> bytes:
    """What the use state keeps of a code sent at ``sent``."""
    message = CONTEXT + sent.to_bytes(8, "big") + code.encode("ascii", "replace")
    return hmac.digest(key, message, "sha256")[:DIGEST_BYTES]


def destination_binding(key: bytes, destination: str) -> bytes:
    """What a token keeps of the destination its enrollment proof went to: an HMAC keyed
    with the token's own key (from the encrypted seed), not a copy, and not a plain hash a
    phone number could be recovered from by trying them all."""
    message = b"otpgate destination v1\x00" + destination.encode()
    return hmac.digest(key, message, "sha256")[:DIGEST_BYTES]


def still_bound(token: Token, secret: Secret, destination: str) -> bool:
    """The entry still holds the destination ``token`` was enrolled with."""
    if not token.bound:
        return False
    return hmac.compare_digest(destination_binding(secret.key, destination), token.bound)


def outstanding(use: TokenUse, now: float, lifetime: int) -> bool:
    """A code was sent, is not spent, and has not expired."""
    return bool(use.code) and use.last != use.sent and now < use.sent + lifetime


def verify_sent(
    token: Token, secret: Secret, use: TokenUse, code: str, now: float, lifetime: int
) -> TokenUse | None:
    """The token's new use if ``code`` is its outstanding code: spent by setting ``last``
    to the time it was sent (the digest stays, to recognise a replay)."""
    if not outstanding(use, now, lifetime) or len(code) != token.digits:
        return None
    if not hmac.compare_digest(code_digest(secret.key, use.sent, code), use.code):
        return None
    return replace(use, last=use.sent, used_at=int(now), request=b"")


def is_spent_code(secret: Secret, use: TokenUse, code: str) -> bool:
    """``code`` is the token's last sent code, already accepted (a replay, not a guess)."""
    if not use.code or use.last != use.sent:
        return False
    return hmac.compare_digest(code_digest(secret.key, use.sent, code), use.code)


def sent_tokens(
    state: OtpState, channel: str | None = None, now: float | None = None
) -> list[Token]:
    """The user's e-mail/SMS tokens (of ``channel`` only, if given), in enrollment order;
    with ``now``, only those that may be used now (a suspended token gets no code)."""
    return [
        t
        for t in state.tokens
        if t.type in OUT_OF_BAND
        and (channel is None or t.type.value == channel)
        and (now is None or inactive(state.used, t, now) is None)
    ]


def only_sent_codes(state: OtpState, now: float) -> bool:
    """Every factor the user may use now is a sent code: a password alone asks for one."""
    tokens = usable(state.tokens, state.used, now)
    return bool(tokens) and all(t.type in OUT_OF_BAND for t in tokens)


def any_outstanding(state: OtpState, now: float, lifetime: int) -> bool:
    return any(outstanding(state.used.use_of(t.id), now, lifetime) for t in sent_tokens(state))


@dataclass(frozen=True)
class SendPlan:
    """What ``plan_send`` decided: send ``sent`` (the time bound into the digest), say that
    this very request's code went out already (``repeat``), or refuse (``why``)."""

    ok: bool
    why: str
    sent: int = 0
    repeat: bool = False
    sends_this_hour: int = 0
    again: bool = False
    """A repeat because the user asked again (not a retransmission of the same request)."""


def recent_sends(used: UsedState, now: float) -> tuple[int, ...]:
    return tuple(t for t in used.sends if now - HOUR < t <= now + 60)


def plan_send(
    state: OtpState,
    token: Token,
    digest_of: dict[int, bytes] | None,
    code: str,
    now: float,
    rules: CodeRules,
    request: bytes = b"",
) -> StateChange[SendPlan]:
    """The write that sends ``code`` for ``token``, on the state as it is now.

    Refused while the user or the token is suspended, while the user is locked out, within
    ``cooldown`` of the last send, or after
    ``per_hour`` sends in the last hour; within those limits a code of this token that is
    still valid is pointed to again (``repeat``) rather than refused.  ``request``: a keyed
    identity of a RADIUS request that a NAS may retransmit to another gateway: when the
    outstanding code was sent for that same request, nothing is written and nothing is sent
    again.  ``digest_of``
    collects the digest by send time (the caller needs it only to cancel)."""
    used = state.used
    suspended = refusal(state, now)
    if suspended is not None:
        return StateChange(SendPlan(False, f"{suspended}: no code is sent"))
    if inactive(used, token, now) is not None:
        return StateChange(SendPlan(False, f"token {token.id} suspended: no code is sent"))
    if is_locked(used, now):
        return StateChange(SendPlan(False, "locked out: no code is sent"))
    secret = state.secrets.get(token.id)
    if secret is None:
        return StateChange(SendPlan(False, "the token has no key"))
    use = used.use_of(token.id)
    if request and use.request == request and outstanding(use, now, rules.lifetime):
        return StateChange(SendPlan(True, "code already sent for this request", use.sent, True))
    recent = recent_sends(used, now)
    limited = (recent and now - recent[-1] < rules.cooldown) or len(recent) >= rules.per_hour
    if limited and outstanding(use, now, rules.lifetime):
        # The code sent a moment ago is still valid (a typo spent a RADIUS State, a second
        # window asked again): point to it instead of refusing, and send nothing.
        again = SendPlan(True, "code already sent, still valid", use.sent, True, again=True)
        return StateChange(again)
    if recent and now - recent[-1] < rules.cooldown:
        wait = int(recent[-1] + rules.cooldown - now) + 1
        return StateChange(SendPlan(False, f"send refused: cooldown ({wait} s left)"))
    if len(recent) >= rules.per_hour:
        why = f"send refused: hourly limit ({rules.per_hour} per hour) reached"
        return StateChange(SendPlan(False, why))
    sent = max(int(now), use.sent + 1)
    digest = code_digest(secret.key, sent, code)
    if digest_of is not None:
        digest_of[sent] = digest
    tokens = dict(used.tokens)
    for other in sent_tokens(state):  # a new send replaces every outstanding code
        old = tokens.get(other.id)
        if old is not None and other.id != token.id and old.code and old.last != old.sent:
            tokens[other.id] = replace(old, code=b"", request=b"")
    tokens[token.id] = replace(use, code=digest, sent=sent, request=request, misses=0)
    sends = (*recent, sent)
    new = replace(used, tokens=tokens, sends=sends)
    return StateChange(SendPlan(True, "ok", sent, False, len(sends)), used=new)


def cancel_send(
    state: OtpState, token_id: str, sent: int, uncount: bool = False
) -> StateChange[bool]:
    """Withdraw the code sent at ``sent``: nobody has it, and no outstanding code remains.
    When no gateway took it, the send still counts towards the limits (a gateway that timed
    out may have delivered it); ``uncount``: it was never handed to a gateway (the global
    budget was spent), so it counts towards nothing."""
    use = state.used.use_of(token_id)
    if use.sent != sent or not use.code or use.last == use.sent:
        return StateChange(False)
    used = state.used.with_use(token_id, replace(use, code=b""))
    if uncount:
        used = replace(used, sends=tuple(t for t in used.sends if t != sent))
    return StateChange(True, used=used)


def count_miss(state: OtpState, used: UsedState, now: float, lifetime: int) -> UsedState:
    """A wrong code was typed: each outstanding sent code takes a miss, and one that
    reaches ``MAX_MISSES`` is withdrawn."""
    tokens = dict(used.tokens)
    for token in sent_tokens(state):
        use = tokens.get(token.id)
        if use is None or not outstanding(use, now, lifetime):
            continue
        misses = use.misses + 1
        code = b"" if misses >= MAX_MISSES else use.code
        tokens[token.id] = replace(use, misses=misses, code=code)
    return replace(used, tokens=tokens)
