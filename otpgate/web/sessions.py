"""Server-side portal sessions, CSRF tokens and sign-in rate limits (pure: no I/O).

Sessions live only in this process's memory, keyed by a random id (the cookie).
A pending enrollment (a secret shown but not yet confirmed, a code sent to prove an e-mail
address or phone number), the pending second step of a sign-in whose code was sent and an
uploaded import file waiting to be imported live only here, never in a cookie, URL or log.
"""

from __future__ import annotations

import hmac
import secrets
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from otpgate.admin.sentcodes import EnrollmentProof
from otpgate.importers import ImportResult
from otpgate.tokens import Secret, Token


@dataclass
class PendingEnrollment:
    token: Token
    secret: Secret = field(repr=False)
    """Rendered once (the enroll page); afterwards only used to check the confirmation code."""


@dataclass
class PendingImport:
    """An uploaded import file, parsed and checked, waiting for the help desk to import it
    (or after the import, for its ``Error_`` file to be downloaded).  Holds every seed of
    the file: it lives only here, is replaced by the next upload and dropped with the
    session, never in a page, a hidden field or a log."""

    filename: str
    kind: str
    data: bytes = field(repr=False)
    result: ImportResult = field(repr=False)
    """What the last check found (after the import: what was left out)."""
    uploaded: float
    parsed: ImportResult = field(repr=False)
    """What the parser made of the file, before any check: checked again at the import."""
    imported: bool = False
    """Already imported: only the ``Error_`` file of what was left out remains."""


@dataclass
class PendingSent:
    """An e-mail/SMS token waiting for the code sent to its destination to be typed back."""

    proof: EnrollmentProof
    dn: str
    """Whose entry: the session's own, or the help desk's target."""
    user: str
    """That user as named (the help desk's target as typed: the audit trail's ``user``)."""
    destination: str
    """Masked, as the sender reported it ("+•••••89")."""
    helpdesk: bool = False
    """Started by the help desk for ``dn`` (the user reads the code back to the agent)."""


@dataclass
class CodeStep:
    """The second step of a sign-in whose code was sent by e-mail/SMS.  Holds the entry
    whose password the first step checked and when, never the password; it is kept in its
    own store, so that it opens nothing but this step."""

    dn: str
    entry: str | None
    """The entry's key for the per-entry sign-in limit."""
    kind: str
    """The channel the code went by ("email", "sms"): "send again" uses the same."""
    challenge: str
    """What to tell the user ("Code sent by SMS to +•••••89")."""
    expires: float
    """The last code's lifetime: after it, the step is over (sign in again)."""

    def live(self, now: float) -> bool:
        return now < self.expires


@dataclass
class Session:
    id: str = field(repr=False)
    csrf: str = field(repr=False)
    name: str
    """What the user typed to sign in (for the audit trail)."""
    dn: str
    created: float
    last_seen: float
    helpdesk: bool = False
    enroll_only: bool = False
    """Signed in with the password alone (first enrollment): may only enroll."""
    otp_verified: bool = False
    """The sign-in verified (and spent) a one-time code: required for every change of a user
    who has a token, and for the help desk."""
    pending: PendingEnrollment | None = None
    pending_sent: PendingSent | None = None
    code_step: CodeStep | None = None
    """Set only on the sessions of the code-step store (``Portal.code_steps``)."""
    token: str = ""
    """The token whose code opened the session: its suspension ends the session."""
    pending_import: PendingImport | None = None


class SessionStore:
    def __init__(self, idle_seconds: float, max_seconds: float, max_sessions: int) -> None:
        self.idle_seconds = idle_seconds
        self.max_seconds = max_seconds
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def _expired(self, session: Session, now: float) -> bool:
        return (
            now - session.last_seen > self.idle_seconds or now - session.created > self.max_seconds
        )

    def new(
        self,
        name: str,
        dn: str,
        now: float,
        helpdesk: bool = False,
        enroll_only: bool = False,
        otp_verified: bool = False,
    ) -> Session:
        self.sweep(now)
        while len(self._sessions) >= self.max_sessions:
            self._sessions.popitem(last=False)  # the oldest goes first
        session = Session(
            id=secrets.token_urlsafe(32),
            csrf=secrets.token_urlsafe(32),
            name=name,
            dn=dn,
            created=now,
            last_seen=now,
            helpdesk=helpdesk,
            enroll_only=enroll_only,
            otp_verified=otp_verified,
        )
        self._sessions[session.id] = session
        return session

    def get(self, session_id: str | None, now: float) -> Session | None:
        """The live session for the cookie value; touching it resets the idle timer."""
        if not session_id:
            return None
        session = self._sessions.get(session_id)
        if session is None:
            return None
        if self._expired(session, now):
            del self._sessions[session_id]
            return None
        session.last_seen = now
        self._sessions.move_to_end(session_id)
        return session

    def peek(self, session_id: str | None, now: float) -> Session | None:
        """The live session for the cookie value, without touching it (a request that is
        not handled yet: the body cap decides on it before the body arrives)."""
        session = self._sessions.get(session_id) if session_id else None
        if session is None or self._expired(session, now):
            return None
        return session

    def drop(self, session: Session) -> None:
        self._sessions.pop(session.id, None)

    def sweep(self, now: float) -> None:
        for sid in [s.id for s in self._sessions.values() if self._expired(s, now)]:
            del self._sessions[sid]


def csrf_ok(session: Session, token: str | None) -> bool:
    """Constant-time comparison of a form's CSRF token with the session's."""
    if not token:
        return False
    return hmac.compare_digest(session.csrf.encode(), token.encode())


class RateLimiter:
    """At most ``per_minute`` events per key in any sliding 60 s window."""

    def __init__(self, per_minute: int, max_keys: int = 100000) -> None:
        self.per_minute = per_minute
        self.max_keys = max_keys
        self._events: OrderedDict[str, deque[float]] = OrderedDict()

    def allow(self, key: str, now: float) -> bool:
        events = self._events.get(key)
        if events is None:
            if len(self._events) >= self.max_keys:
                self._events.popitem(last=False)
            events = self._events[key] = deque()
        while events and now - events[0] >= 60.0:
            events.popleft()
        self._events.move_to_end(key)
        if len(events) >= self.per_minute:
            return False
        events.append(now)
        return True
