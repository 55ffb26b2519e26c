"""A NAS's retransmission that fails over to another gateway (``[radius]
failover_replay_seconds``, off by default).  Pure.

A NAS lists several RADIUS servers and, when one does not answer in time, sends the request
again to the next.  RFC 2865 §2.5 lets it send the *identical* packet (same Identifier, same
Request Authenticator) when the servers share the secret.  If the first gateway spent the
code and its answer was lost (or it died right after the write), the next gateway finds the
code spent and refuses ("OTP already used").

The remedy is narrow.  When a RADIUS login is accepted, the write that spends the code also
stores, in the user's (encrypted) use state, a 16-byte digest of (the request's identity,
the token id, the code) with the time.  The identity is what the RADIUS front end supplies:
an HMAC, keyed with the NAS's shared secret, of the NAS address, the Identifier and the
Request Authenticator (``radius/server.py``); so the digest names one exact request and
one code, and the directory never holds anything from which the code could be found
without the NAS's secret.  Another gateway that receives the same request within the
window, finds no code to spend, and finds the digest, answers as the first one did (the
password is still checked); nothing is written.  A different request carrying the same code
(a new Request Authenticator, another NAS, another code) matches no digest: refused as
before.  At most ``MAX_ACCEPTED_REQUESTS`` are kept; older and expired ones are dropped on
the next write.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, replace

from otpgate.auth.verify import Match
from otpgate.directory.records import OtpState
from otpgate.otp.scratch import remaining
from otpgate.tokens import ACCEPTED_DIGEST_BYTES, MAX_ACCEPTED_REQUESTS, AcceptedRequest, UsedState

MAX_WINDOW_SECONDS = 30.0
"""The largest ``failover_replay_seconds``; also the age past which every writer drops a
stored request, whatever its own setting."""


@dataclass(frozen=True)
class Retransmission:
    """What the pipeline needs to record or recognise one request."""

    identity: bytes
    """The front end's keyed identity of the exact request (never stored as such)."""
    window: float
    """Seconds after the accept during which the same request is answered again."""


def digest(identity: bytes, token_id: str, code: str) -> bytes:
    message = b"otpgate accepted request v1\x00" + token_id.encode() + b"\x00" + code.encode()
    return hmac.digest(identity, message, "sha256")[:ACCEPTED_DIGEST_BYTES]


def without_stale(used: UsedState, now: float) -> UsedState:
    """``used`` without stored requests older than any gateway's window (or from the future
    by more than that: a clock far off)."""
    if not used.accepted:
        return used
    kept = tuple(a for a in used.accepted if abs(now - a.seconds) <= MAX_WINDOW_SECONDS)
    return used if len(kept) == len(used.accepted) else replace(used, accepted=kept)


def remember(
    used: UsedState, retransmission: Retransmission, token_id: str, code: str, now: float
) -> UsedState:
    """``used`` (about to be written for an accepted code) holding this request too; the
    oldest ones go beyond ``MAX_ACCEPTED_REQUESTS``."""
    at = round(now * 1000)
    entry = AcceptedRequest(digest(retransmission.identity, token_id, code), token_id, at)
    kept = without_stale(used, now).accepted
    return replace(used, accepted=(*kept, entry)[-MAX_ACCEPTED_REQUESTS:])


def recognise(
    state: OtpState,
    candidates: list[tuple[str, str]],
    retransmission: Retransmission,
    now: float,
) -> tuple[Match, str] | None:
    """(match, password) of the candidate this exact request was accepted with, if a stored
    request within the window names it and its token is still there.  Every pair is
    compared, in constant time.  The match reports the token's use as it stands: nothing is
    written."""
    found: tuple[AcceptedRequest, str] | None = None
    for entry in state.used.accepted:
        fresh = abs(now - entry.seconds) <= retransmission.window
        for password, code in candidates:
            same = hmac.compare_digest(
                entry.digest, digest(retransmission.identity, entry.token, code)
            )
            if same and fresh and found is None:
                found = (entry, password)
    if found is None:
        return None
    entry, password = found
    token = state.token(entry.token)
    if token is None:
        return None
    use = state.used.use_of(token.id)
    left = None if token.scratch is None else remaining(token.scratch, use.scratch_used)
    return Match(token, use, left), password
