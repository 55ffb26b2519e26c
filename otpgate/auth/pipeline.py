"""The authentication pipeline every front end uses.

1. resolve the name to one entry (keyed by its immutable id);
2. ask the policy whether this request needs an OTP;
3. check lockout, verify the OTP against the entry's tokens and record the
   use with a compare-and-swap write, all before anything else happens;
4. only then check the static password (a simple bind upstream).

Every entry point (``authenticate``, ``first_factor``, ``authenticate_proof``) is built
from the same two pieces: ``_prologue`` (resolve -> policy -> a fresh read when a cached
entry could mislead -> decode -> lockout) and ``_decided`` (errors -> result -> one audit
event).  Every failure is the same ``AuthResult(ok=False)`` to the client; the real reason
goes to the audit log.  Passwords, seeds and OTPs are never logged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from otpgate.audit import AuditTrail
from otpgate.auth.bindcache import BindCache
from otpgate.auth.decide import RETRANSMISSION, Verdict, verify_proof, verify_typed
from otpgate.auth.lockout import UnrecordedFailures, is_locked
from otpgate.auth.policy import Decision, Policy
from otpgate.auth.requests import (
    AuthRequest,
    AuthResult,
    FirstFactorResult,
    P,
    PasswordCheck,
    ProofCheck,
    Step,
    Trace,
)
from otpgate.auth.retransmit import Retransmission
from otpgate.codec import CodecError
from otpgate.config import Config
from otpgate.directory.ldapdata import (
    INVALID_CREDENTIALS,
    SUCCESS,
    DirectoryError,
    DirectoryUnavailable,
)
from otpgate.directory.state import OtpState, StateChange, UserEntry
from otpgate.directory.store import OtpStore

__all__ = [
    "AuthRequest",
    "AuthResult",
    "Authenticator",
    "FirstFactorResult",
    "PasswordCheck",
    "ProofCheck",
    "Step",
]


@dataclass(frozen=True)
class _Ready:
    """What the prologue found: the entry, the policy's decision and (if an OTP is needed)
    the decoded state; ``refusal`` when the login cannot go on."""

    user: UserEntry | None
    decision: Decision
    state: OtpState | None = None
    refusal: str | None = None


R = TypeVar("R")
V = TypeVar("V")


def _records_a_failure(change: StateChange[Any]) -> bool:
    """Whether a planned write records a failed attempt (a miss: lockout moves)."""
    result = change.result
    match = result.match if isinstance(result, Verdict) else result[0]
    return change.used is not None and match is None


def _note(trace: Trace, name: str, ok: bool | None, detail: str) -> None:
    if trace is not None:
        trace.append(Step(name, ok, detail))


class Authenticator:
    def __init__(
        self, config: Config, store: OtpStore, clock: Any, audit: AuditTrail | None = None
    ) -> None:
        self.config = config
        self.store = store
        self.policy = Policy(config.policy)
        self.clock = clock
        self.audit = audit or AuditTrail(config.logging, clock)
        self.unrecorded = UnrecordedFailures(config.lockout)
        seconds = config.ldap_proxy.bind_cache_seconds
        self.bind_cache: BindCache | None = BindCache(seconds) if seconds > 0 else None

    # -- the two shared pieces -------------------------------------------------------------

    async def _prologue(self, request: AuthRequest, trace: Trace = None) -> _Ready:
        """resolve -> policy -> fresh read if the cache could mislead -> decode -> lockout."""
        if (
            not request.otp_only
            and not request.require_otp
            and self.policy.is_exempt(request.name)
            and not self.policy.config.admin_groups
        ):
            # An exempt DN (service account, possibly no user entry at all): its password
            # bind is all there is; with admin groups configured it is looked up first.
            _note(trace, "policy", None, "exempt DN: its password alone, without a lookup")
            return _Ready(None, Decision(False, "exempt account"))
        user = await self.store.resolve(request.name)
        now = self.clock.seconds()
        if user.expires_at is not None and user.expires_at <= now:
            # AD refuses the password bind of an expired account, but CHAP, MS-CHAPv2 and
            # otp-only logins bind nothing: the account's state decides here for all.
            return self._ready(trace, _Ready(user, Decision(True, "policy"), None, "expired"))
        decision = self._decide(user, request)
        if not decision.needs_otp:
            return self._ready(trace, _Ready(user, decision))
        state = self.store.decode(user)
        if user.from_cache and (not state.tokens or is_locked(state.used, now)):
            # A refusal is made on what the directory holds now: a cached entry may predate
            # an enrollment or an unlock.
            user = await self.store.resolve(request.name, fresh=True)
            decision = self._decide(user, request)
            if not decision.needs_otp:
                return self._ready(trace, _Ready(user, decision))
            state = self.store.decode(user)
        if not state.tokens:
            return self._ready(trace, _Ready(user, decision, state, "no token enrolled"))
        if is_locked(state.used, now):
            return self._ready(trace, _Ready(user, decision, state, "locked out"))
        return self._ready(trace, _Ready(user, decision, state))

    @staticmethod
    def _ready(trace: Trace, ready: _Ready) -> _Ready:
        if trace is not None and ready.user is not None:
            _note(trace, "resolve", True, f"the entry is {ready.user.dn}")
            decision = ready.decision
            need = "OTP required" if decision.needs_otp else "no OTP needed"
            _note(trace, "policy", None, f"{need} ({decision.reason})")
            if ready.state is not None:
                kinds = ", ".join(f"{t.id} {t.type.value}" for t in ready.state.tokens)
                _note(trace, "tokens", bool(ready.state.tokens), kinds or "none")
                locked = ready.refusal == "locked out"
                _note(trace, "lockout", not locked, "locked out" if locked else "not locked")
        return ready

    def _decide(self, user: UserEntry, request: AuthRequest) -> Decision:
        if request.require_otp:
            return Decision(True, "OTP required by the front end")
        return self.policy.decide(user.dn, user.groups, request.client)

    async def _decided(
        self,
        request: AuthRequest,
        body: Awaitable[R],
        failed: Callable[[str, bool], R],
        audit: Callable[[R], tuple[str, str, str | None, str | None]],
    ) -> R:
        """Run ``body``; any directory or data error becomes ``failed(reason, unavailable)``;
        one audit event per request: ``audit(result)`` gives (outcome, reason, dn, token)."""
        try:
            result = await body
        except DirectoryUnavailable as exc:
            result = failed(f"directory unavailable: {exc}", True)
        except (CodecError, DirectoryError) as exc:
            result = failed(f"{type(exc).__name__}: {exc}", False)
        outcome, reason, dn, token = audit(result)
        self.audit.record(
            outcome=outcome,
            front_end=request.front_end,
            user=request.name,
            dn=dn,
            client=request.client,
            token=token,
            reason=reason,
        )
        return result

    @staticmethod
    def _audit_result(result: AuthResult) -> tuple[str, str, str | None, str | None]:
        return ("accept" if result.ok else "reject"), result.reason, result.dn, result.token_id

    @staticmethod
    def _failed(why: str, down: bool) -> AuthResult:
        return AuthResult(False, why, unavailable=down)

    # -- password + OTP, OTP alone ----------------------------------------------------------

    async def authenticate(
        self,
        request: AuthRequest,
        check_password: PasswordCheck | None,
        *,
        rebind: bool = False,
        trace: Trace = None,
    ) -> AuthResult:
        """The login.  ``rebind``: the front end lets a client repeat a login it just made
        (LDAP applications that bind twice): with ``[ldap_proxy] bind_cache_seconds``, the
        same password+code from the same client is accepted again for that long, its
        password still checked upstream (see ``bindcache.py``)."""
        body = self._authenticate(request, check_password, rebind, trace)
        result = await self._decided(request, body, self._failed, self._audit_result)
        outcome = "accepted: " if result.ok else "rejected: "
        _note(trace, "pipeline", result.ok, outcome + result.reason)
        return result

    async def explain(
        self, request: AuthRequest, check_password: PasswordCheck | None
    ) -> tuple[AuthResult, list[Step]]:
        """A real login (the code is spent, failures count), with the steps it went through."""
        steps: list[Step] = []
        return await self.authenticate(request, check_password, trace=steps), steps

    async def _authenticate(
        self,
        request: AuthRequest,
        check_password: PasswordCheck | None,
        rebind: bool = False,
        trace: Trace = None,
    ) -> AuthResult:
        cache = self.bind_cache if rebind else None
        if cache is not None:
            cached = await self._cached_rebind(cache, request, check_password)
            if cached is not None:
                return cached
        result = await self._login(request, check_password, trace)
        if cache is not None and result.ok and result.dn and result.password_length is not None:
            now = self.clock.seconds()
            cache.remember(
                request.name, request.client, request.secret, result.password_length, result.dn, now
            )
        return result

    async def _cached_rebind(
        self, cache: BindCache, request: AuthRequest, check_password: PasswordCheck | None
    ) -> AuthResult | None:
        now = self.clock.seconds()
        cached = cache.lookup(request.name, request.client, request.secret, now)
        if cached is None or check_password is None:
            return None
        password = request.secret[: cached.password_length].encode()
        code, _message = await check_password(cached.dn, password)
        if code == SUCCESS:
            return AuthResult(True, "bind cache", cached.dn, password_length=cached.password_length)
        cache.forget(request.name, request.client)
        return None

    async def _login(
        self, request: AuthRequest, check_password: PasswordCheck | None, trace: Trace
    ) -> AuthResult:
        ready = await self._prologue(request, trace)
        user, decision = ready.user, ready.decision
        if user is None:
            return await self._password_only(request, check_password)
        if not decision.needs_otp:
            if request.otp_only:
                return AuthResult(True, f"no OTP needed: {decision.reason}", user.dn)
            return await self._password(
                user, request.secret, check_password, f"no OTP needed: {decision.reason}"
            )
        if ready.refusal is not None or ready.state is None:
            return AuthResult(False, ready.refusal or "no state", user.dn)
        now, config, entry_id = self.clock.seconds(), self.config, user.entry_id
        secret, otp_only = request.secret, request.otp_only
        retransmission = self._retransmission(request)

        def change(state: OtpState) -> StateChange[Verdict]:
            pending = self.unrecorded.count(entry_id, now)
            return verify_typed(state, secret, otp_only, now, config, pending, retransmission)

        verdict, user = await self._spend(user, change, now)
        if verdict.match is None:
            _note(trace, "otp", False, verdict.why)
            return AuthResult(False, verdict.why, user.dn)
        token_id = verdict.match.token.id
        again = verdict.why == RETRANSMISSION
        spent = f"{verdict.why} on another gateway" if again else "recorded as used"
        _note(trace, "otp", True, f"accepted for token {token_id}, {spent}")
        left = verdict.match.scratch_remaining
        why = f"OTP accepted ({verdict.why})" if again else "OTP accepted"
        if request.otp_only:
            return AuthResult(
                True, why, user.dn, token_id, scratch_remaining=left, retransmission=again
            )
        why = f"password+OTP accepted ({verdict.why})" if again else "password+OTP accepted"
        result = await self._password(
            user, verdict.password, check_password, why, token_id, left, True
        )
        if again and result.ok:
            result = replace(result, retransmission=True)
        _note(trace, "password", result.ok, "bound upstream" if result.ok else result.reason)
        return result

    def _retransmission(self, request: AuthRequest) -> Retransmission | None:
        """The request's identity for ``[radius] failover_replay_seconds`` (None: off, or a
        request that has none)."""
        window = self.config.radius.failover_replay_seconds
        if request.retransmission is None or window <= 0:
            return None
        return Retransmission(request.retransmission, window)

    async def _spend(
        self, user: UserEntry, change: Callable[[OtpState], StateChange[V]], now: float
    ) -> tuple[V, UserEntry]:
        """The engine's compare-and-swap of ``change``; a failure whose write has an unknown
        outcome (the connection died during the Modify) is kept as unrecorded."""
        planned: list[StateChange[V]] = []

        def remembered(state: OtpState) -> StateChange[V]:
            planned.append(change(state))
            return planned[-1]

        try:
            result, user = await self.store.update(user, remembered)
        except DirectoryUnavailable:
            last = planned[-1] if planned else None
            if (last is not None and last.used is not None and last.used.failures != 0) or (
                last is not None and last.used is not None and last.used.locked_until
            ):
                self.unrecorded.add(user.entry_id, now)
            raise
        if planned and planned[-1].writes:
            self.unrecorded.recorded(user.entry_id)
        return result, user

    async def _password_only(
        self, request: AuthRequest, check_password: PasswordCheck | None
    ) -> AuthResult:
        if check_password is None or not request.secret:
            return AuthResult(False, "no password", request.name)
        code, message = await check_password(request.name, request.secret.encode("utf-8"))
        if code == SUCCESS:
            return AuthResult(True, "exempt account: password accepted", request.name)
        return AuthResult(
            False, f"exempt account: bind refused ({code}) {message}".rstrip(), request.name
        )

    async def _password(
        self,
        user: UserEntry,
        password: str,
        check_password: PasswordCheck | None,
        why: str,
        token_id: str | None = None,
        scratch_remaining: int | None = None,
        typed: bool = False,
    ) -> AuthResult:
        """``typed``: the password was split off what the user typed (its length comes back,
        for the bind cache)."""
        if check_password is None:
            return AuthResult(False, "no password check available", user.dn)
        if not password:
            return AuthResult(False, "empty password refused", user.dn)
        code, message = await check_password(user.dn, password.encode("utf-8"))
        if code == SUCCESS:
            length = len(password) if typed else None
            return AuthResult(True, why, user.dn, token_id, False, scratch_remaining, length)
        reason = "wrong password" if code == INVALID_CREDENTIALS else f"bind refused ({code})"
        # AD puts the real reason (data 52e, 533, 701, 775, ...) in the diagnostic message.
        return AuthResult(False, f"{reason}: {message}".rstrip(": "), user.dn, token_id)

    # -- RADIUS challenge mode: the first factor -----------------------------------------------

    async def first_factor(
        self, request: AuthRequest, check_password: PasswordCheck | None
    ) -> FirstFactorResult:
        """Step one of a challenge-mode login: the static password alone.

        ``needs_otp`` False with ``ok`` True is a complete login (exempt, trusted
        network, ...).  With ``needs_otp`` True the caller asks for the code and
        finishes with ``authenticate(..., otp_only=True)``.  A locked-out user or
        one without a token is refused before the password is tried.
        """

        def audit(result: FirstFactorResult) -> tuple[str, str, str | None, str | None]:
            outcome = "reject"
            if result.ok:
                outcome = "challenge" if result.needs_otp else "accept"
            return outcome, f"password step: {result.reason}", result.dn, None

        return await self._decided(
            request,
            self._first_factor(request, check_password),
            lambda why, down: FirstFactorResult(False, False, why, unavailable=down),
            audit,
        )

    async def _first_factor(
        self, request: AuthRequest, check_password: PasswordCheck | None
    ) -> FirstFactorResult:
        ready = await self._prologue(request)
        user, decision = ready.user, ready.decision
        if user is None:
            done = await self._password_only(request, check_password)
            return FirstFactorResult(done.ok, False, done.reason, done.dn)
        if not decision.needs_otp:
            why = f"no OTP needed: {decision.reason}"
            done = await self._password(user, request.secret, check_password, why)
            return FirstFactorResult(done.ok, False, done.reason, user.dn)
        if ready.refusal is not None:
            return FirstFactorResult(False, True, ready.refusal, user.dn)
        why = "password accepted, OTP next"
        done = await self._password(user, request.secret, check_password, why)
        return FirstFactorResult(done.ok, True, done.reason, user.dn)

    # -- the portal: a first device with the password alone ------------------------------------

    async def first_enrollment(
        self, request: AuthRequest, check_password: PasswordCheck | None, allowed: bool
    ) -> AuthResult:
        """The password alone, for a user who has no token yet, where password-only enrollment
        applies (``allowed``: ``Policy.password_only_enrollment``).  Success opens nothing but
        the first enrollment.  A user who has a token is refused before the password is tried
        (no password oracle without the second factor)."""
        return await self._decided(
            request,
            self._first_enrollment(request, check_password, allowed),
            self._failed,
            self._audit_result,
        )

    async def _first_enrollment(
        self, request: AuthRequest, check_password: PasswordCheck | None, allowed: bool
    ) -> AuthResult:
        if not allowed:
            return AuthResult(False, "no one-time code (password-only enrollment does not apply)")
        user = await self.store.resolve(request.name, fresh=True)
        if self.store.decode(user).tokens:
            why = "no one-time code, and the user has a token: a code is required"
            return AuthResult(False, why, user.dn)
        why = "password only, first enrollment"
        result = await self._password(user, request.secret, check_password, why)
        return result if result.ok else replace(result, reason=f"{why}: {result.reason}")

    # -- OTP proofs (CHAP, MS-CHAPv2) ------------------------------------------------------------

    async def authenticate_proof(
        self, request: AuthRequest, proof: ProofCheck[P]
    ) -> tuple[AuthResult, P | None]:
        """An OTP-only login where the client sent a proof computed from the code, not the code.

        ``proof`` is called with every code currently valid for the user's HOTP and
        TOTP tokens (all of them, no early exit) and returns a value for the code
        the client used.  The first such code is recorded as used exactly like a
        typed one; its value comes back with the result.  ``request.secret`` is
        not used.  A user who needs no OTP is refused: a proof can carry nothing
        else to check.
        """
        found: list[P] = []
        result = await self._decided(
            request,
            self._authenticate_proof(request, proof, found),
            self._failed,
            self._audit_result,
        )
        return result, (found[0] if result.ok and found else None)

    async def _authenticate_proof(
        self, request: AuthRequest, proof: ProofCheck[P], found: list[P]
    ) -> AuthResult:
        ready = await self._prologue(replace(request, otp_only=True))
        user, decision = ready.user, ready.decision
        if user is None or not decision.needs_otp:
            why = (
                f"no OTP needed ({decision.reason}), and a {request.front_end} proof holds only one"
            )
            return AuthResult(False, why, user.dn if user else None)
        if ready.refusal is not None:
            return AuthResult(False, ready.refusal, user.dn)
        now = self.clock.seconds()
        verdict, user = await self.store.update(
            user, lambda s: verify_proof(s, proof, now, self.config)
        )
        match, value, why = verdict
        if match is None or value is None:
            return AuthResult(False, why, user.dn)
        found.append(value)
        return AuthResult(True, "OTP proof accepted", user.dn, match.token.id)
