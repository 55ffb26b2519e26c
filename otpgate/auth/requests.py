"""What front ends hand the pipeline, and what they get back (plain data)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

PasswordCheck = Callable[[str, bytes], Awaitable[tuple[int, str]]]
"""(dn, password) -> (LDAP result code, diagnostic) of a simple bind upstream."""

P = TypeVar("P")

ProofCheck = Callable[[str], P | None]
"""Called with one candidate code; a value if the client's proof was computed from that code."""


@dataclass(frozen=True)
class AuthRequest:
    name: str
    secret: str = field(repr=False)
    """What the user typed: password+OTP (append), password alone (exempt), or the OTP alone."""
    client: str | None = None
    front_end: str = ""
    otp_only: bool = False
    """The password was already checked by the caller (RADIUS otp-only / challenge step 2)."""
    require_otp: bool = False
    """Policy exemptions (exempt account, trusted network, not in a required group) do not
    apply: an OTP must be verified, and a user without a token is refused."""
    retransmission: bytes | None = field(default=None, repr=False)
    """A keyed identity of this exact request (RADIUS: NAS address, Identifier and Request
    Authenticator, HMAC'd with the NAS's secret).  With ``[radius] failover_replay_seconds``
    an accept records it, so that another gateway answers the NAS's retransmission of this
    same request instead of refusing its spent code (``auth/retransmit.py``)."""


@dataclass(frozen=True)
class AuthResult:
    ok: bool
    reason: str
    dn: str | None = None
    token_id: str | None = None
    unavailable: bool = False
    """The directory could not be asked: front ends answer "unavailable", never success."""
    scratch_remaining: int | None = None
    password_length: int | None = None
    """How many leading characters of the secret were the password (append mode)."""
    retransmission: bool = False
    """Accepted as a retransmission of a request another gateway accepted (nothing spent)."""


@dataclass(frozen=True)
class FirstFactorResult:
    ok: bool
    needs_otp: bool
    """The password was right and an OTP must follow (RADIUS challenge mode)."""
    reason: str
    dn: str | None = None
    unavailable: bool = False


@dataclass(frozen=True)
class Step:
    """One step of a login as ``Authenticator.explain`` records it (``otpgate test-auth``)."""

    name: str
    ok: bool | None
    """True/False: passed or decided the refusal; None: information."""
    detail: str


Trace = list[Step] | None
"""Where the pipeline records its steps (None on every real login: nothing is recorded)."""
