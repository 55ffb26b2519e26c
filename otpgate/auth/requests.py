"""What front ends hand the pipeline, and what they get back (plain data).

There is one door, ``Authenticator.login(request)``, and one request type per way a login
can arrive.  A front end picks the type that says what it holds — it never glues a password
and a code together for the pipeline to split again, and never decides a login itself.
Every type names the user, the client address and the ``Channel`` it came through.

A new way to log in (a trigger word that sends a code, an app password, a PIN) is a new
type here and one branch in the pipeline's dispatch, behind the same prologue.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from otpgate.tokens import Secret, Token

PasswordCheck = Callable[[str, bytes], Awaitable[tuple[int, str]]]
"""(dn, password) -> (LDAP result code, diagnostic) of a simple bind upstream."""

P = TypeVar("P")

ProofCheck = Callable[[str], Any]
"""Called with one candidate code; a value (not None) if the client's proof was computed
from that code."""

ForwardBind = Callable[[], Awaitable[int]]
"""Send the client's own SASL bind upstream; its result code (the proxy keeps the answer)."""
WhoAmI = Callable[[], Awaitable[tuple[int, bytes]]]
"""Ask Who Am I? upstream: (result code, authzId)."""


@dataclass(frozen=True)
class Channel:
    """The way in a request came: the front end, the listener or NAS, and what it allows.
    Facts of the front end's configuration; the pipeline draws the conclusions."""

    front_end: str
    """"ldap", "radius", "web", "test-auth"...: the audit's front_end."""
    name: str = ""
    """The NAS or listener (audit, and per-channel rules)."""
    tls: bool = True
    """The credentials came over TLS (or a transport that needs none)."""
    require_tls: bool = False
    """Credentials over a plain transport are refused (``require_tls_for_binds``)."""
    proofs: frozenset[str] = frozenset()
    """The proof kinds this channel accepts: "chap", "mschapv2"."""
    challenges: bool = False
    """The front end can ask for a code after the password (RADIUS Access-Challenge): a
    password alone from a user whose only factors are sent codes sends one."""
    allow_groups: tuple[str, ...] = ()
    """Only members of one of these groups may log in here (empty: anyone); a policy step
    right after the entry is resolved (``policy.channel_refusal``)."""
    deny_groups: tuple[str, ...] = ()
    """Members of any of these groups may not log in here (deny wins over allow)."""
    pin: bool = False
    """Logins here carry no password (RADIUS otp-only, CHAP, MS-CHAPv2): a user who has a
    PIN types it before the code, and the proof covers both."""
    require_pin: bool = False
    """A user without a PIN is refused here (with ``pin``)."""
    where: str = ""
    """What the configuration calls this way in: an LDAP listener's listen string, a NAS's
    name (or its network): exemptions name listeners and NASes by it."""
    enforce: bool = True
    """False: report-only (``enforce = false``): a login that would be refused only for want
    of a code is accepted on its password and audited with what enforcement would do."""

    @property
    def restricted(self) -> bool:
        """The channel has access rules (its logins are looked up and checked)."""
        return bool(self.allow_groups or self.deny_groups)

    @property
    def kind(self) -> str:
        """What the channel's name names, for audit reasons: a NAS or a listener."""
        if self.front_end.startswith("radius"):
            return "NAS"
        return "listener" if self.front_end == "ldap" else self.front_end


@dataclass(frozen=True)
class Entitlement:
    """What the entry a login resolved says about its user, for a front end that derives an
    authorization from it (RADIUS reply attributes): plain data read with the entry, so the
    front end needs no second lookup."""

    dn: str | None
    groups: tuple[str, ...] = ()
    """The entry's memberOf values (lower case) and, as configured, each configured group
    the user is a member of (nested and primary groups included)."""
    unknown_groups: tuple[str, ...] = ()
    """Configured groups whose membership could not be read."""
    attributes: tuple[tuple[str, tuple[bytes, ...]], ...] = ()
    """The further attributes the gateway reads with every user entry (lower-case names),
    with the values this entry holds."""


Authorize = Callable[[Entitlement], Any]
"""Called when a login is about to be accepted, with what its entry holds; what it returns
comes back in ``AuthResult.authorized``.  Raising ``errors.AuthorizationRefused`` refuses the
login, with the message as the audited reason."""


@dataclass(frozen=True, kw_only=True)
class Login:
    """What every request says: who, from where, through which channel."""

    name: str
    client: str | None
    channel: Channel
    login_id: str = ""
    """An id the front end gave this login, recorded in its audit event (RADIUS: the Class
    of the Access-Accept, which the NAS repeats in its accounting records)."""
    authorize: Authorize | None = field(default=None, repr=False, compare=False)
    """The front end's authorization, derived from the entry (see ``Authorize``)."""


@dataclass(frozen=True, kw_only=True)
class Appended(Login):
    """What the user typed: the password followed by the code (LDAP bind, RADIUS append),
    or the password alone where the policy needs no code."""

    typed: str = field(repr=False)
    rebind: bool = False
    """The front end lets a client repeat a login it just made (LDAP applications that bind
    twice): with ``bind_cache_seconds``, the same password+code from the same client is
    accepted again for that long, its password still checked upstream."""
    retransmission: bytes | None = field(default=None, repr=False)
    """A keyed identity of this exact request (RADIUS: NAS address, Identifier and Request
    Authenticator, HMAC'd with the NAS's secret).  With ``failover_replay_seconds`` an
    accept records it, so that another gateway answers the NAS's retransmission of this
    same request instead of refusing its spent code (``auth/retransmit.py``)."""


@dataclass(frozen=True, kw_only=True)
class Separate(Login):
    """Password and code in fields of their own (the portal, ``otpgate test-auth``).
    ``require_otp``: exemptions do not apply and a code must be verified (the portal)."""

    password: str = field(repr=False)
    code: str = field(repr=False)
    require_otp: bool = False


@dataclass(frozen=True, kw_only=True)
class CodeOnly(Login):
    """The code alone: the password was checked by the NAS (RADIUS otp-only) or by the
    first step of a challenge (``PasswordStep``)."""

    code: str = field(repr=False)
    retransmission: bytes | None = field(default=None, repr=False)
    require_otp: bool = False
    """Exemptions do not apply and a code must be verified (the portal's code step)."""


@dataclass(frozen=True, kw_only=True)
class PasswordStep(Login):
    """The password alone, as the first step of a challenge (RADIUS challenge mode): a
    result with ``needs_otp`` asks the front end for the code.  For a user whose only
    factors are sent codes, one is sent (``AuthResult.challenge`` says where)."""

    password: str = field(repr=False)
    retransmission: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True, kw_only=True)
class SendCode(Login):
    """Send the user a code by e-mail or SMS (the portal's second step, "send again").
    ``password``: checked upstream before anything is sent; None where the first step of
    the same sign-in checked it (like ``CodeOnly``).  ``kind``: "email", "sms" or None (the
    user's first such token).  Never carries a destination: it is read from the entry."""

    password: str | None = field(default=None, repr=False)
    kind: str | None = None
    retransmission: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True, kw_only=True)
class Proof(Login):
    """A proof computed from the code (CHAP, MS-CHAPv2): ``check`` is called with every code
    currently valid for the user's HOTP and TOTP tokens (all of them, no early exit)."""

    kind: str
    """"chap" or "mschapv2": the channel must allow it."""
    check: ProofCheck = field(repr=False)


@dataclass(frozen=True, kw_only=True)
class Sasl(Login):
    """A SASL bind through the LDAP proxy: only for exempt accounts, and only if the
    directory bound that very account (``auth/sasl.py``)."""

    mechanism: str
    forward: ForwardBind = field(repr=False)
    who_am_i: WhoAmI = field(repr=False)


@dataclass(frozen=True, kw_only=True)
class FirstEnrollment(Login):
    """The portal's password alone, for a user with no token yet, where password-only
    enrollment applies (``[web] password_only_enrollment_*``)."""

    password: str = field(repr=False)
    network: str | None = None
    """The client's address as the enrollment networks see it (None: one that grants
    nothing, e.g. a balancer's own address)."""


@dataclass(frozen=True, kw_only=True)
class Unusable(Login):
    """A request the front end could not translate into credentials (a User-Password that
    is not text, an unknown or spent challenge State, a packet with no way to log in): the
    pipeline refuses it and audits ``why``, like any other refusal."""

    why: str


AuthRequest = (
    Appended
    | Separate
    | CodeOnly
    | PasswordStep
    | SendCode
    | Proof
    | Sasl
    | FirstEnrollment
    | Unusable
)


@dataclass(frozen=True)
class Sent:
    """What became of a code the pipeline meant to send (never the code itself)."""

    channel: str
    """"email" or "sms"."""
    destination: str
    """Masked ("+•••••89", "a•••@example.org"); "" when none could be read."""
    outcome: str
    """"sent", "failed" (every gateway), "refused" (no usable destination), "limited"
    (cooldown, hourly limit, global budget) or "repeat" (already sent for this request)."""
    gateway: str = ""
    """Which gateway delivered it."""
    detail: str = ""
    """Why it was not sent: each gateway's reason, or the destination's fault."""
    binding: bytes = field(default=b"", repr=False)
    """Sent: the digest of the destination it went to (``oob.destination_binding``), which
    an enrollment keeps in the new token."""

    @property
    def audit(self) -> dict[str, str]:
        doc = {"channel": self.channel, "destination": self.destination, "outcome": self.outcome}
        if self.gateway:
            doc["gateway"] = self.gateway
        return doc


class CodeSender(Protocol):
    """Sends codes for the pipeline (``otpgate/outofband/codes.py``): reads the destination
    from the user's own entry, never from the request."""

    def take_budget(self, now: float) -> bool:
        """One send of the gateway's per-minute budget (False: spent)."""
        ...

    async def check(self, dn: str, token: Token, secret: Secret) -> Sent | None:
        """None when the entry holds a destination a code may go to now; otherwise the
        refusal (no single value, not a number under the prefixes, not the destination the
        token was enrolled with, no gateway for the channel), before anything is written."""
        ...

    async def send(self, dn: str, user: str, token: Token, secret: Secret, code: str) -> Sent:
        """Deliver ``code``; never raises (a failure is an outcome).  A token enrolled with
        a destination (``Token.bound``) is sent to only while the entry still holds it."""
        ...

    async def destination(self, dn: str, token: Token) -> str:
        """The masked destination ("" when it cannot be read)."""
        ...


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
    needs_otp: bool = False
    """``PasswordStep``: the password was right and a code must follow."""
    tls_required: bool = False
    """Refused because the channel needs TLS for credentials (LDAP: confidentialityRequired)."""
    proof: Any = None
    """``Proof``: what ``check`` returned for the code that was spent."""
    directory_code: int | None = None
    """``Sasl``: the directory's answer to the forwarded bind (None: not forwarded)."""
    disconnect: bool = False
    """``Sasl``: the upstream connection is bound as someone else: close it."""
    low_scratch_warning: int | None = None
    """The codes left on a scratch list whose one low-codes warning this login claimed
    (``[delivery] scratch_warning``), whatever the password's outcome: the code was spent."""
    challenge: str = ""
    """A code was sent: what to tell the user ("Code sent by SMS to +•••••89").  The login
    is not accepted (``ok`` is False, except for ``PasswordStep``, whose ``needs_otp`` asks
    for the code as usual): RADIUS answers Access-Challenge, LDAP invalidCredentials with
    this diagnostic, the portal its code step."""
    sent: Sent | None = None
    """The send this login made or refused (audited as its ``send`` field)."""
    authorized: Any = None
    """What the request's ``authorize`` returned for this accepted login (RADIUS: the reply
    attributes)."""


LowScratchNotifier = Callable[[str, str, int], None]
"""(dn, scratch token id, codes left): warn the user that the list runs low.  Returns at
once; the sending happens in the background and never changes a login's result."""


@dataclass(frozen=True)
class Step:
    """One step of a login as the pipeline records it (``otpgate test-auth``)."""

    name: str
    ok: bool | None
    """True/False: passed or decided the refusal; None: information."""
    detail: str


Trace = list[Step] | None
"""Where the pipeline records its steps (None on every real login: nothing is recorded)."""
