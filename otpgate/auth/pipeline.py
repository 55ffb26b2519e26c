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
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from otpgate.audit import AuditTrail
from otpgate.auth.lockout import is_locked, record_failure, record_success
from otpgate.auth.policy import Decision, Policy
from otpgate.auth.verify import (
    Match,
    candidate_codes,
    is_replay,
    last_codes,
    split_candidates,
    verify_code,
)
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


@dataclass(frozen=True)
class FirstFactorResult:
    ok: bool
    needs_otp: bool
    """The password was right and an OTP must follow (RADIUS challenge mode)."""
    reason: str
    dn: str | None = None
    unavailable: bool = False


@dataclass(frozen=True)
class _Verdict:
    match: Match | None
    password: str
    why: str


@dataclass(frozen=True)
class _Ready:
    """What the prologue found: the entry, the policy's decision and (if an OTP is needed)
    the decoded state; ``refusal`` when the login cannot go on."""

    user: UserEntry | None
    decision: Decision
    state: OtpState | None = None
    refusal: str | None = None


R = TypeVar("R")


class Authenticator:
    def __init__(
        self, config: Config, store: OtpStore, clock: Any, audit: AuditTrail | None = None
    ) -> None:
        self.config = config
        self.store = store
        self.policy = Policy(config.policy)
        self.clock = clock
        self.audit = audit or AuditTrail(config.logging, clock)

    # -- the two shared pieces -------------------------------------------------------------

    async def _prologue(self, request: AuthRequest) -> _Ready:
        """resolve -> policy -> fresh read if the cache could mislead -> decode -> lockout."""
        if (
            not request.otp_only
            and not request.require_otp
            and self.policy.is_exempt(request.name)
            and not self.policy.config.admin_groups
        ):
            # An exempt DN (service account, possibly no user entry at all): its password
            # bind is all there is; with admin groups configured it is looked up first.
            return _Ready(None, Decision(False, "exempt account"))
        user = await self.store.resolve(request.name)
        decision = self._decide(user, request)
        if not decision.needs_otp:
            return _Ready(user, decision)
        state = self.store.decode(user)
        now = self.clock.seconds()
        if user.from_cache and (not state.tokens or is_locked(state.used, now)):
            # A refusal is made on what the directory holds now: a cached entry may predate
            # an enrollment or an unlock.
            user = await self.store.resolve(request.name, fresh=True)
            decision = self._decide(user, request)
            if not decision.needs_otp:
                return _Ready(user, decision)
            state = self.store.decode(user)
        if not state.tokens:
            return _Ready(user, decision, state, "no token enrolled")
        if is_locked(state.used, now):
            return _Ready(user, decision, state, "locked out")
        return _Ready(user, decision, state)

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

    # -- password + OTP, OTP alone ----------------------------------------------------------

    async def authenticate(
        self, request: AuthRequest, check_password: PasswordCheck | None
    ) -> AuthResult:
        return await self._decided(
            request,
            self._authenticate(request, check_password),
            lambda why, down: AuthResult(False, why, unavailable=down),
            self._audit_result,
        )

    async def _authenticate(
        self, request: AuthRequest, check_password: PasswordCheck | None
    ) -> AuthResult:
        ready = await self._prologue(request)
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
        if request.otp_only:
            candidates = [("", request.secret)]
        else:
            candidates = [
                (pw, code)
                for pw, code in split_candidates(
                    request.secret, ready.state.tokens, self.config.otp.otp_delimiter
                )
                if pw
            ]
            if not candidates:
                # Nothing that looks like password + code: no OTP check, nothing forwarded.
                return AuthResult(False, "no password+OTP in the secret", user.dn)

        now = self.clock.seconds()
        verdict, user = await self.store.update(user, lambda s: self._verify(s, candidates, now))
        if verdict.match is None:
            return AuthResult(False, verdict.why, user.dn)
        token_id = verdict.match.token.id
        left = verdict.match.scratch_remaining
        if request.otp_only:
            return AuthResult(True, "OTP accepted", user.dn, token_id, scratch_remaining=left)
        result = await self._password(
            user, verdict.password, check_password, "password+OTP accepted", token_id, left
        )
        return replace(result, password_length=len(verdict.password)) if result.ok else result

    def _verify(
        self, state: OtpState, candidates: list[tuple[str, str]], now: float
    ) -> StateChange[_Verdict]:
        """Pure: decide on the freshly read state and say what to write."""
        if is_locked(state.used, now):
            return StateChange(_Verdict(None, "", "locked out"))
        otp = self.config.otp
        for password, code in candidates:
            match = verify_code(state.tokens, state.secrets, state.used, code, now, otp)
            if match is not None:
                used = record_success(state.used, match.token.id, match.use)
                return StateChange(_Verdict(match, password, "ok"), used=used)
        if any(
            is_replay(state.tokens, state.secrets, state.used, code, now, otp)
            for _pw, code in candidates
        ):
            # A spent code sent again (e.g. retried after an outage): refused, not a guess.
            return StateChange(_Verdict(None, "", "OTP already used"))
        used = record_failure(state.used, now, self.config.lockout)
        why = "wrong OTP" + (" (now locked out)" if used.locked_until else "")
        return StateChange(_Verdict(None, "", why), used=used)

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
    ) -> AuthResult:
        if check_password is None:
            return AuthResult(False, "no password check available", user.dn)
        if not password:
            return AuthResult(False, "empty password refused", user.dn)
        code, message = await check_password(user.dn, password.encode("utf-8"))
        if code == SUCCESS:
            return AuthResult(True, why, user.dn, token_id, scratch_remaining=scratch_remaining)
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
            lambda why, down: AuthResult(False, why, unavailable=down),
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
        verdict, user = await self.store.update(user, lambda s: self._verify_proof(s, proof, now))
        match, value, why = verdict
        if match is None or value is None:
            return AuthResult(False, why, user.dn)
        found.append(value)
        return AuthResult(True, "OTP proof accepted", user.dn, match.token.id)

    def _verify_proof(
        self, state: OtpState, proof: ProofCheck[P], now: float
    ) -> StateChange[tuple[Match | None, P | None, str]]:
        """Pure apart from ``proof``: try every candidate code, record the first match."""
        if is_locked(state.used, now):
            return StateChange((None, None, "locked out"))
        hit: tuple[Match, P] | None = None
        for candidate in candidate_codes(
            state.tokens, state.secrets, state.used, now, self.config.otp
        ):
            value = proof(candidate.code)
            if value is not None and hit is None:
                hit = (candidate.match, value)
        if hit is not None:
            match, value = hit
            used = record_success(state.used, match.token.id, match.use)
            return StateChange((match, value, "ok"), used=used)
        spent = last_codes(state.tokens, state.secrets, state.used, now, self.config.otp)
        if [code for code in spent if proof(code) is not None]:
            return StateChange((None, None, "proof of an OTP already used"))
        used = record_failure(state.used, now, self.config.lockout)
        why = "no valid OTP matches the proof" + (" (now locked out)" if used.locked_until else "")
        return StateChange((None, None, why), used=used)
