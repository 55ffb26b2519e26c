"""Which token, if any, a typed code belongs to; and how a typed value splits.

Pure: the caller supplies the decoded state and the time, and writes back
the new use state returned with a match.  Suspended tokens and expired temporary lists
(``suspension.py``) match nothing; ``inactive_match`` says which of them a code is right for.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field, replace

from otpgate.auth.config import OtpConfig
from otpgate.auth.oob import is_spent_code, verify_sent
from otpgate.auth.suspension import inactive
from otpgate.otp.oath import MAX_DRIFT_STEPS, hotp, time_step, verify_hotp, verify_totp
from otpgate.otp.scratch import remaining, verify_scratch
from otpgate.otp.yubico import looks_like_yubico_otp, verify_yubico
from otpgate.tokens import OUT_OF_BAND, Secret, Token, TokenType, TokenUse, UsedState


@dataclass(frozen=True)
class Match:
    token: Token
    use: TokenUse
    """The token's new use state, to be written before the login succeeds."""
    scratch_remaining: int | None = None


def split_candidates(
    value: str, tokens: tuple[Token, ...], delimiter: str = ""
) -> list[tuple[str, str]]:
    """The (password, code) pairs ``value`` may be, longest code first.

    With a delimiter the split is at its last occurrence; otherwise by the
    code lengths of the user's tokens (a Yubico OTP by its modhex form).
    """
    if delimiter:
        password, sep, code = value.rpartition(delimiter)
        return [(password, code)] if sep else []
    lengths = sorted({t.code_length for t in tokens}, reverse=True)
    pairs = []
    for length in lengths:
        if len(value) < length:
            continue
        code = value[len(value) - length :]
        password = value[: len(value) - length]
        is_yubico = any(t.type is TokenType.YUBICO and t.code_length == length for t in tokens)
        if code.isdigit() or (is_yubico and looks_like_yubico_otp(code)):
            pairs.append((password, code))
    return pairs


def _pack_yubico(counters: tuple[int, int]) -> int:
    return counters[0] << 8 | counters[1]


def _unpack_yubico(last: int) -> tuple[int, int] | None:
    return None if last < 0 else (last >> 8, last & 0xFF)


def _verify_one(
    token: Token, secret: Secret | None, use: TokenUse, code: str, now: float, otp: OtpConfig
) -> Match | None:
    stamp = int(now)
    if token.type is TokenType.HOTP and secret is not None:
        hm = verify_hotp(
            secret.key,
            code,
            use.last,
            digits=token.digits,
            algorithm=token.algorithm,
            look_ahead=otp.hotp_look_ahead,
        )
        if hm is not None:
            return Match(token, TokenUse(hm.counter, use.drift, stamp, use.scratch_used))
    elif token.type is TokenType.TOTP and secret is not None:
        tm = verify_totp(
            secret.key,
            code,
            now,
            use.last,
            digits=token.digits,
            algorithm=token.algorithm,
            period=token.period,
            window=otp.totp_window,
            drift=use.drift,
        )
        if tm is not None:
            return Match(token, TokenUse(tm.step, tm.drift, stamp, use.scratch_used))
    elif token.type is TokenType.YUBICO and secret is not None:
        counters = verify_yubico(
            code, secret.key, token.public_id, secret.private_id, _unpack_yubico(use.last)
        )
        if counters is not None:
            return Match(token, TokenUse(_pack_yubico(counters), 0, stamp))
    elif token.type is TokenType.SCRATCH and token.scratch is not None:
        index = verify_scratch(token.scratch, code, use.scratch_used)
        if index is not None:
            new = replace(use, drift=0, used_at=stamp, scratch_used=use.scratch_used | {index})
            return Match(token, new, remaining(token.scratch, new.scratch_used))
    elif token.type in OUT_OF_BAND and secret is not None:
        sent = verify_sent(token, secret, use, code, now, otp.sent_code_lifetime)
        if sent is not None:
            return Match(token, sent)
    return None


# What checking a code against one token may raise on stored data otpgate itself would
# not write (a counter beyond 2^64, a key of the wrong size): that token does not match,
# the others are still tried, and the login is a clean rejection.
_BAD_TOKEN_DATA = (ValueError, OverflowError)


def verify_code(
    tokens: tuple[Token, ...],
    secrets: dict[str, Secret],
    used: UsedState,
    code: str,
    now: float,
    otp: OtpConfig,
) -> Match | None:
    """The first usable token ``code`` is valid for, with its advanced use state."""
    for token in tokens:
        if token.code_length != len(code) or inactive(used, token, now) is not None:
            continue
        try:
            match = _verify_one(token, secrets.get(token.id), used.use_of(token.id), code, now, otp)
        except _BAD_TOKEN_DATA:
            continue
        if match is not None:
            return match
    return None


def inactive_match(
    tokens: tuple[Token, ...],
    secrets: dict[str, Secret],
    used: UsedState,
    code: str,
    now: float,
    otp: OtpConfig,
) -> tuple[Token, str] | None:
    """The first suspended token or expired temporary list ``code`` is right for, and why it
    is refused (``suspension.SUSPENDED``/``EXPIRED``); nothing is spent.  Called only after
    ``verify_code`` found no match: such a code is refused without counting as a guess."""
    for token in tokens:
        why = inactive(used, token, now)
        if why is None or token.code_length != len(code):
            continue
        try:
            match = _verify_one(token, secrets.get(token.id), used.use_of(token.id), code, now, otp)
        except _BAD_TOKEN_DATA:
            continue
        if match is not None:
            return token, why
    return None


def last_codes(
    tokens: tuple[Token, ...],
    secrets: dict[str, Secret],
    used: UsedState,
    now: float,
    otp: OtpConfig,
) -> list[str]:
    """The code each HOTP/TOTP token last had accepted, while it is recent (TOTP: within
    the window around now)."""
    codes = []
    for token in tokens:
        secret = secrets.get(token.id)
        use = used.use_of(token.id)
        if secret is None or use.last < 0:
            continue
        try:
            if token.type is TokenType.TOTP:
                distance = abs(use.last - time_step(now, token.period))
                if distance > otp.totp_window + min(abs(use.drift), MAX_DRIFT_STEPS):
                    continue
            elif token.type is not TokenType.HOTP:
                continue
            codes.append(hotp(secret.key, use.last, token.digits, token.algorithm))
        except _BAD_TOKEN_DATA:
            continue
    return codes


def is_replay(
    tokens: tuple[Token, ...],
    secrets: dict[str, Secret],
    used: UsedState,
    code: str,
    now: float,
    otp: OtpConfig,
) -> bool:
    """Whether ``code`` is the code a token last had accepted (or a used scratch code).

    Called only after ``verify_code`` found no match.  Such a code is refused like any
    other, but is no guess: it does not count towards lockout.  This is what a client
    sends again after an outage cut its first attempt short (the code was spent, the
    password never checked), e.g. a NAS retransmitting.
    """
    spent = False
    for last in last_codes(tokens, secrets, used, now, otp):
        spent |= len(last) == len(code) and hmac.compare_digest(last, code)
    if spent:
        return True
    for token in tokens:
        if token.code_length != len(code) or token.type not in (
            TokenType.SCRATCH,
            TokenType.YUBICO,
            *OUT_OF_BAND,
        ):
            continue
        use = used.use_of(token.id)
        secret = secrets.get(token.id)
        if token.type in OUT_OF_BAND:
            if secret is not None and is_spent_code(secret, use, code):
                return True
            continue
        try:
            if token.type is TokenType.SCRATCH and token.scratch is not None:
                index = verify_scratch(token.scratch, code, frozenset())
                if index is not None and index in use.scratch_used:
                    return True
            elif secret is not None and use.last >= 0:
                counters = verify_yubico(code, secret.key, token.public_id, secret.private_id, None)
                if counters is not None and _pack_yubico(counters) == use.last:
                    return True
        except _BAD_TOKEN_DATA:
            continue
    return False


def confirm_new_device(token: Token, secret: Secret, code: str, now: float, otp: OtpConfig) -> int:
    """The counter or step of ``code`` for a device being enrolled (its first code, which
    proves the user has it), or -1.  That counter/step is recorded as used at once, so the
    confirmation code cannot be replayed."""
    try:
        if token.type is TokenType.TOTP:
            window = otp.totp_window
            tm = verify_totp(
                secret.key, code, now, -1, digits=token.digits, algorithm=token.algorithm,
                period=token.period, window=window,
            )  # fmt: skip
            return tm.step if tm is not None else -1
        if token.type is TokenType.HOTP:
            hm = verify_hotp(
                secret.key, code, -1, digits=token.digits, algorithm=token.algorithm,
                look_ahead=otp.hotp_look_ahead,
            )  # fmt: skip
            return hm.counter if hm is not None else -1
    except _BAD_TOKEN_DATA:
        return -1
    return -1


# -- enumeration, for proofs that hide the code (RADIUS CHAP, MS-CHAPv2) ----------------------


@dataclass(frozen=True)
class Candidate:
    """A code ``verify_code`` would accept now, and the Match it would return for it."""

    code: str = field(repr=False)
    match: Match


def candidate_codes(
    tokens: tuple[Token, ...],
    secrets: dict[str, Secret],
    used: UsedState,
    now: float,
    otp: OtpConfig,
) -> list[Candidate]:
    """Every code currently valid for the user's usable HOTP and TOTP tokens, in
    ``verify_code`` order (suspended tokens give none).

    Accepts nothing: the caller tests each code against a proof (a CHAP or
    MS-CHAPv2 response) and records the first match's use like a typed code's.
    The windows are exactly ``verify_hotp``'s and ``verify_totp``'s.  Scratch codes
    (stored as hashes) and Yubico OTPs (random per press) cannot be enumerated.
    """
    return _enumerate(tokens, secrets, used, now, otp, False)


def inactive_candidates(
    tokens: tuple[Token, ...],
    secrets: dict[str, Secret],
    used: UsedState,
    now: float,
    otp: OtpConfig,
) -> list[Candidate]:
    """The codes ``candidate_codes`` would give for the HOTP/TOTP tokens that are suspended
    now (to tell a proof of such a token's code from a guess); nothing of them is spent."""
    return _enumerate(tokens, secrets, used, now, otp, True)


def _enumerate(
    tokens: tuple[Token, ...],
    secrets: dict[str, Secret],
    used: UsedState,
    now: float,
    otp: OtpConfig,
    inactive_ones: bool,
) -> list[Candidate]:
    found: list[Candidate] = []
    for token in tokens:
        secret = secrets.get(token.id)
        if secret is None or (inactive(used, token, now) is not None) != inactive_ones:
            continue
        try:
            found += _candidates(token, secret, used.use_of(token.id), now, otp)
        except _BAD_TOKEN_DATA:
            continue
    return found


def _candidates(
    token: Token, secret: Secret, use: TokenUse, now: float, otp: OtpConfig
) -> list[Candidate]:
    found: list[Candidate] = []
    stamp = int(now)
    if token.type is TokenType.HOTP:
        first = use.last + 1
        for counter in range(first, first + otp.hotp_look_ahead + 1):
            code = hotp(secret.key, counter, token.digits, token.algorithm)
            new = TokenUse(counter, use.drift, stamp, use.scratch_used)
            found.append(Candidate(code, Match(token, new)))
    elif token.type is TokenType.TOTP:
        current = time_step(now, token.period)
        centre = current + max(-MAX_DRIFT_STEPS, min(MAX_DRIFT_STEPS, use.drift))
        low = max(centre - otp.totp_window, use.last + 1, 0)
        for step in range(low, centre + otp.totp_window + 1):
            code = hotp(secret.key, step, token.digits, token.algorithm)
            drift = max(-MAX_DRIFT_STEPS, min(MAX_DRIFT_STEPS, step - current))
            new = TokenUse(step, drift, stamp, use.scratch_used)
            found.append(Candidate(code, Match(token, new)))
    return found
