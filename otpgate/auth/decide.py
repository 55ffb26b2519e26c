"""What a login writes (pure): the decision on a freshly read state, as a ``StateChange``.

Called inside the state engine's compare-and-swap loop (``engine.update``), so each function
sees the state as it is in the directory now and may run more than once.
"""

from __future__ import annotations

from dataclasses import dataclass

from otpgate.auth.lockout import is_locked, record_failure, record_success
from otpgate.auth.requests import P, ProofCheck
from otpgate.auth.verify import Match, candidate_codes, is_replay, last_codes, verify_code
from otpgate.config import Config
from otpgate.directory.state import OtpState, StateChange


@dataclass(frozen=True)
class Verdict:
    match: Match | None
    password: str
    """The password part of the accepted candidate (append mode)."""
    why: str


def verify_typed(
    state: OtpState, candidates: list[tuple[str, str]], now: float, config: Config
) -> StateChange[Verdict]:
    """A typed code: the first (password, code) candidate that matches spends its code; a
    miss counts towards lockout, unless the code is one already spent (no guess)."""
    if is_locked(state.used, now):
        return StateChange(Verdict(None, "", "locked out"))
    otp = config.otp
    for password, code in candidates:
        match = verify_code(state.tokens, state.secrets, state.used, code, now, otp)
        if match is not None:
            used = record_success(state.used, match.token.id, match.use)
            return StateChange(Verdict(match, password, "ok"), used=used)
    if any(
        is_replay(state.tokens, state.secrets, state.used, code, now, otp)
        for _pw, code in candidates
    ):
        # A spent code sent again (e.g. retried after an outage): refused, not a guess.
        return StateChange(Verdict(None, "", "OTP already used"))
    used = record_failure(state.used, now, config.lockout)
    why = "wrong OTP" + (" (now locked out)" if used.locked_until else "")
    return StateChange(Verdict(None, "", why), used=used)


def verify_proof(
    state: OtpState, proof: ProofCheck[P], now: float, config: Config
) -> StateChange[tuple[Match | None, P | None, str]]:
    """A proof computed from the code (CHAP, MS-CHAPv2): every candidate code of the window
    is tried (no early exit), the first match is spent."""
    if is_locked(state.used, now):
        return StateChange((None, None, "locked out"))
    hit: tuple[Match, P] | None = None
    for candidate in candidate_codes(state.tokens, state.secrets, state.used, now, config.otp):
        value = proof(candidate.code)
        if value is not None and hit is None:
            hit = (candidate.match, value)
    if hit is not None:
        match, value = hit
        used = record_success(state.used, match.token.id, match.use)
        return StateChange((match, value, "ok"), used=used)
    spent = last_codes(state.tokens, state.secrets, state.used, now, config.otp)
    if [code for code in spent if proof(code) is not None]:
        return StateChange((None, None, "proof of an OTP already used"))
    used = record_failure(state.used, now, config.lockout)
    why = "no valid OTP matches the proof" + (" (now locked out)" if used.locked_until else "")
    return StateChange((None, None, why), used=used)
