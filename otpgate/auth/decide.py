"""What a login writes (pure): the decision on a freshly read state, as a ``StateChange``.

Called inside the state engine's compare-and-swap loop (``engine.update``), so each function
sees the state as it is in the directory now and may run more than once.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from otpgate.auth.lockout import is_locked, record_failure, record_success, with_unrecorded
from otpgate.auth.oob import count_miss
from otpgate.auth.requests import ProofCheck
from otpgate.auth.retransmit import Retransmission, recognise, remember, without_stale
from otpgate.auth.settings import AuthSettings
from otpgate.auth.suspension import inactive, inactive_reason, refusal
from otpgate.auth.verify import (
    Match,
    candidate_codes,
    inactive_candidates,
    inactive_match,
    is_replay,
    last_codes,
    split_candidates,
    verify_code,
)
from otpgate.directory.records import OtpState, StateChange
from otpgate.pin import looks_like_pin, pin_matches
from otpgate.tokens import UsedState

RETRANSMISSION = "retransmission of a request already accepted"
"""The ``why`` of a Verdict that accepts a NAS's retransmission (``retransmit.py``)."""


@dataclass(frozen=True)
class Verdict:
    match: Match | None
    password: str
    """The password part of the accepted candidate (append mode)."""
    why: str
    warn: bool = False
    """This write claims the scratch list's one low-codes warning (``low_scratch_claim``)."""


Typed = str | tuple[str, str]
"""What the user gave: the password and the code typed as one (split by the tokens the user
has), or (password, code) from fields of their own ("" as the password: the code alone)."""


def candidates_of(typed: Typed, state: OtpState, delimiter: str) -> list[tuple[str, str]]:
    """The (password, code) pairs ``typed`` may be, by the tokens the user has *now* (a
    cached token list could split it wrongly); none without a password, unless the code
    comes alone; none without a code."""
    if isinstance(typed, tuple):
        return [typed] if typed[1] else []
    return [(pw, code) for pw, code in split_candidates(typed, state.tokens, delimiter) if pw]


def low_scratch_claim(match: Match, threshold: int) -> bool:
    """Whether spending ``match`` takes its scratch list below ``threshold`` codes left for
    the first time: the list's one warning is claimed in the same write that spends the
    code, so of several gateways only the one whose write wins sends it.  A temporary list
    (it expires by itself) is not one to print again: no warning."""
    left = match.scratch_remaining
    temporary = bool(match.token.expires)
    return left is not None and left < threshold and not match.use.warned and not temporary


def verify_typed(
    state: OtpState,
    typed: Typed,
    now: float,
    config: AuthSettings,
    pending: int = 0,
    retransmission: Retransmission | None = None,
    pin: bool = False,
    pin_required: str = "",
) -> StateChange[Verdict]:
    """A typed code: the first (password, code) candidate that matches spends its code; a
    miss counts towards lockout, unless the code is one already spent (no guess).
    ``pending``: failures this gateway decided but could not write (``UnrecordedFailures``):
    they count, and the next write records them.  ``retransmission`` (a RADIUS request,
    ``[radius] failover_replay_seconds``): an accept records the request; a spent code is
    accepted again, writing nothing, when it is this very request, accepted within the
    window (``retransmit.py``).  Suspended tokens and expired temporary lists match nothing;
    a code right for one of them is refused, not counted (``suspension.py``).  ``pin``: the
    code alone arrived (no password) on a channel where a user who has a PIN types it first
    (``verify_pin_typed``); ``pin_required``: the refusal for a user without a PIN there
    (nothing counted; the prologue saw a cached entry that still had one)."""
    used = without_stale(with_unrecorded(state.used, pending, now, config.lockout), now)
    suspended = refusal(state, now)
    if suspended is not None:
        return StateChange(Verdict(None, "", suspended))
    if is_locked(used, now):
        return StateChange(Verdict(None, "", "locked out"))
    if pin and isinstance(typed, tuple) and not typed[0]:
        if state.pin is not None:
            return verify_pin_typed(state, used, typed[1], now, config, retransmission)
        if pin_required:
            return StateChange(Verdict(None, "", pin_required))
    candidates = candidates_of(typed, state, config.otp.otp_delimiter)
    if not candidates:
        # Nothing that looks like password + code: no OTP check, nothing forwarded.
        return StateChange(Verdict(None, "", "no password+OTP in the secret"))
    otp = config.otp
    for password, code in candidates:
        match = verify_code(state.tokens, state.secrets, state.used, code, now, otp)
        if match is not None:
            warn = config.scratch_warning and low_scratch_claim(match, otp.scratch_low_threshold)
            if warn:
                match = replace(match, use=replace(match.use, warned=True))
            spent = record_success(used, match.token.id, match.use)
            if retransmission is not None:
                spent = remember(spent, retransmission, match.token.id, code, now)
            return StateChange(Verdict(match, password, "ok", warn), used=spent)
    if retransmission is not None:
        again = recognise(state, candidates, retransmission, now)
        if again is not None and inactive(state.used, again[0].token, now) is None:
            return StateChange(Verdict(again[0], again[1], RETRANSMISSION))
    return _no_match(state, used, [code for _pw, code in candidates], now, config, "wrong OTP")


def verify_pin_typed(
    state: OtpState,
    used: UsedState,
    typed: str,
    now: float,
    config: AuthSettings,
    retransmission: Retransmission | None = None,
) -> StateChange[Verdict]:
    """The PIN followed by the code, from a user who has a PIN (RADIUS otp-only).  Split
    by the code lengths of the user's tokens; a candidate is accepted only when both its
    PIN and its code are right.  Both are checked for every candidate, so a wrong PIN and a
    wrong code take the same path and the same write: one failure towards lockout, the
    code left unspent (no separate answer, nor timing, for the PIN).  A spent code after
    the right PIN is no guess ("OTP already used"); after a wrong PIN it is one."""
    otp = config.otp
    pairs = [
        (prefix, code)
        for prefix, code in split_candidates(typed, state.tokens)
        if looks_like_pin(prefix)
    ]
    hit: tuple[Match, str] | None = None
    right_pin: list[tuple[str, str]] = []
    for prefix, code in pairs:
        pin_ok = pin_matches(state.pin, state.used.pin, prefix)
        match = verify_code(state.tokens, state.secrets, state.used, code, now, otp)
        if pin_ok:
            right_pin.append(("", code))
            if match is not None and hit is None:
                hit = (match, code)
    if hit is not None:
        match, code = hit
        warn = config.scratch_warning and low_scratch_claim(match, otp.scratch_low_threshold)
        if warn:
            match = replace(match, use=replace(match.use, warned=True))
        spent = record_success(used, match.token.id, match.use)
        if retransmission is not None:
            spent = remember(spent, retransmission, match.token.id, code, now)
        return StateChange(Verdict(match, "", "ok", warn), used=spent)
    if retransmission is not None and right_pin:
        again = recognise(state, right_pin, retransmission, now)
        if again is not None and inactive(state.used, again[0].token, now) is None:
            return StateChange(Verdict(again[0], again[1], RETRANSMISSION))
    codes = [code for _none, code in right_pin]
    return _no_match(state, used, codes, now, config, "wrong PIN or OTP")


def verify_proof(
    state: OtpState,
    proof: ProofCheck,
    now: float,
    config: AuthSettings,
    pending: int = 0,
    pin: bool = False,
    pin_required: str = "",
) -> StateChange[tuple[Match | None, Any, str]]:
    """A proof computed from the code (CHAP, MS-CHAPv2): every candidate code of the window
    is tried (no early exit), the first match is spent.  ``pin``: the channel's proofs
    cover the PIN followed by the code, for a user who has a PIN (each candidate is the
    PIN + a code of the window: a wrong PIN fails like a wrong code, and counts the same);
    ``pin_required``: the refusal for a user without a PIN (nothing counted)."""
    used = without_stale(with_unrecorded(state.used, pending, now, config.lockout), now)
    suspended = refusal(state, now)
    if suspended is not None:
        return StateChange((None, None, suspended))
    if is_locked(used, now):
        return StateChange((None, None, "locked out"))
    if pin and pin_required and state.pin is None:
        return StateChange((None, None, pin_required))
    prefix = state.pin.pin if pin and state.pin is not None else ""
    what = "PIN+OTP" if prefix else "OTP"
    article = "a" if prefix else "an"
    hit: tuple[Match, Any] | None = None
    for candidate in candidate_codes(state.tokens, state.secrets, state.used, now, config.otp):
        value = proof(prefix + candidate.code)
        if value is not None and hit is None:
            hit = (candidate.match, value)
    if hit is not None:
        match, value = hit
        return StateChange(
            (match, value, "ok"), used=record_success(used, match.token.id, match.use)
        )
    for candidate in inactive_candidates(state.tokens, state.secrets, state.used, now, config.otp):
        token = candidate.match.token
        why = inactive(state.used, token, now)
        if why is not None and proof(prefix + candidate.code) is not None:  # refused, no guess
            return StateChange((None, None, f"proof: {inactive_reason(token, why)}"))
    spent = last_codes(state.tokens, state.secrets, state.used, now, config.otp)
    if [code for code in spent if proof(prefix + code) is not None]:
        return StateChange((None, None, f"proof of {article} {what} already used"))
    used = record_failure(used, now, config.lockout)
    why = f"no valid {what} matches the proof" + (" (now locked out)" if used.locked_until else "")
    return StateChange((None, None, why), used=used)


def _no_match(
    state: OtpState, used: UsedState, codes: list[str], now: float, config: AuthSettings,
    wrong: str,
) -> StateChange[Verdict]:
    """No code matched: a right code of a token not usable now is refused as such and a
    spent code as "already used" (neither is a guess: the holder of a lost device must not
    lock its owner out of her temporary list, a retry after an outage is no guess); anything
    else counts towards lockout and against outstanding sent codes, refused as ``wrong``."""
    otp = config.otp
    for code in codes:
        found = inactive_match(state.tokens, state.secrets, state.used, code, now, otp)
        if found is not None:
            return StateChange(Verdict(None, "", inactive_reason(*found)))
    if any(is_replay(state.tokens, state.secrets, state.used, code, now, otp) for code in codes):
        return StateChange(Verdict(None, "", "OTP already used"))
    used = record_failure(used, now, config.lockout)
    used = count_miss(state, used, now, otp.sent_code_lifetime)
    why = wrong + (" (now locked out)" if used.locked_until else "")
    return StateChange(Verdict(None, "", why), used=used)
