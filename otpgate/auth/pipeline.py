"""The authentication pipeline: one door, ``Authenticator.login(request)``, for every login.

1. admission: names over ``max_name_length`` are refused before anything parses them;
   credentials over a plain transport where the channel needs TLS; proof kinds the
   channel does not allow;
2. the prologue: resolve the name to one entry (keyed by its immutable id) -> the channel's
   access rules (``access.py``) -> policy -> a fresh read when a cached entry could mislead
   -> decode -> expiry, suspension, lockout and a PIN the channel requires;
3. verify the code and record its use with a compare-and-swap write (``spend``), before
   anything else happens;
4. only then check the static password (a simple bind upstream).

Each request type (``requests.py``) is one branch of ``_dispatch``; all of them pass the
admission and the prologue, every write goes through ``spend``.  Every failure is the
same ``AuthResult(ok=False)`` to the client; the reason goes to the audit trail, which only
this module writes for logins.  Passwords, seeds and codes are never logged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

from twisted.logger import Logger

from otpgate.audit import AuditTrail
from otpgate.auth.access import channel_rule, pin_refusal, pin_required, sasl_refusal
from otpgate.auth.applogin import app_login, app_secret
from otpgate.auth.authorize import authorized
from otpgate.auth.bindcache import BindCache
from otpgate.auth.branches import first_enrollment, proof_login
from otpgate.auth.decide import RETRANSMISSION, Typed, Verdict, verify_typed
from otpgate.auth.lockout import APPS, UnrecordedFailures, counts_a_failure, is_locked
from otpgate.auth.oob import only_sent_codes
from otpgate.auth.password import bind_password, password_only
from otpgate.auth.policy import REQUIRED, Decision, Policy
from otpgate.auth.reportonly import (
    audit_reason,
    code_given,
    password_alone,
    report_only,
    tentative,
    whole,
)
from otpgate.auth.requests import (
    Appended,
    AuthRequest,
    AuthResult,
    Channel,
    CodeOnly,
    CodeSender,
    FirstEnrollment,
    Login,
    LowScratchNotifier,
    PasswordCheck,
    PasswordStep,
    Proof,
    Sasl,
    SendCode,
    Separate,
    Trace,
    Unusable,
)
from otpgate.auth.retransmit import Retransmission
from otpgate.auth.sasl import SASL_BIND_IN_PROGRESS, sasl_login
from otpgate.auth.sendcode import send_code, send_code_request, wanted_send
from otpgate.auth.settings import AuthSettings
from otpgate.auth.suspension import refusal as suspension_refusal
from otpgate.auth.trace import Ready, note, noted
from otpgate.directory.ldapdata import SUCCESS
from otpgate.directory.records import OtpState, StateChange, UserEntry
from otpgate.directory.store import OtpStore
from otpgate.errors import CodecError, DirectoryError, DirectoryUnavailable

V = TypeVar("V")

log = Logger()


_WITH_PASSWORD = (Separate, PasswordStep, FirstEnrollment)
"""Requests whose ``password`` must not be empty (``SendCode``'s may be None)."""


def _refused(why: str, dn: str | None = None) -> AuthResult:
    return AuthResult(False, why, dn)


def cache_scope(channel: Channel) -> str:
    """Where a cached bind may be repeated: the channel's name, listener, enforcement *and*
    access rules, so that a rebind accepted on one listener is never repeated on another
    with other rules (listener names are labels an admin may give twice; exemptions name
    listeners by their listen strings)."""
    rules = (*channel.allow_groups, "|", *channel.deny_groups)
    return "\x00".join((channel.name, channel.where, str(channel.enforce), *rules))


class Authenticator:
    def __init__(
        self,
        settings: AuthSettings,
        store: OtpStore,
        clock: Any,
        audit: AuditTrail,
        notify_low_scratch: LowScratchNotifier | None = None,
        code_sender: CodeSender | None = None,
    ) -> None:
        self.settings = settings
        self.code_sender = code_sender
        """Sends codes by e-mail/SMS (``auth/sendcode.py``); None: no [delivery] gateways."""
        self.notify_low_scratch = notify_low_scratch
        """Called (dn, token id, codes left) after a login claimed a scratch list's one
        low-codes warning; the gateway sends it by e-mail in the background."""
        self.store = store
        self.policy = Policy(settings.policy)
        self.clock = clock
        self.audit = audit
        self.unrecorded = UnrecordedFailures(settings.lockout)
        seconds = settings.bind_cache_seconds
        self.bind_cache: BindCache | None = BindCache(seconds) if seconds > 0 else None
        self._resolved: dict[int, UserEntry] = {}
        """The entry each login in progress resolved, by ``id(request)``, for requests with an
        ``authorize`` (dropped when the login ends)."""
        self.unrecorded_apps = UnrecordedFailures(settings.lockout, counter=APPS)
        """Failed app passwords whose write had an unknown outcome (their own lockout)."""
        self._found: dict[int, Ready] = {}
        """What each login in progress found in its prologue, by ``id(request)``: the policy
        decision and whether the user holds a token, for the audit (the census reads them)."""

    # -- the door ----------------------------------------------------------------------------

    async def login(
        self,
        request: AuthRequest,
        check_password: PasswordCheck | None = None,
        trace: Trace = None,
    ) -> AuthResult:
        """Decide ``request``; exactly one audit event.  ``check_password`` binds a DN with a
        password upstream (None where the front end has none to check).  ``trace`` collects
        the steps (``otpgate test-auth``)."""
        try:
            result = await self._dispatch(request, check_password, trace)
            if request.authorize is not None:
                result = authorized(request, result, self._resolved.get(id(request)))
        except DirectoryUnavailable as exc:
            result = AuthResult(False, f"directory unavailable: {exc}", unavailable=True)
        except (CodecError, DirectoryError) as exc:
            result = AuthResult(False, f"{type(exc).__name__}: {exc}")
        finally:
            self._resolved.pop(id(request), None)
            found = self._found.pop(id(request), None)
        self._record(request, result, found)
        self._warn(result)
        outcome = "accepted: " if result.ok else "rejected: "
        note(trace, "pipeline", result.ok, outcome + result.reason)
        return result

    def _record(self, request: AuthRequest, result: AuthResult, found: Ready | None) -> None:
        challenge = (
            (result.ok and result.needs_otp)
            or bool(result.challenge)
            or result.directory_code == SASL_BIND_IN_PROGRESS
        )
        outcome = "challenge" if challenge else ("accept" if result.ok else "reject")
        reason = result.reason
        if isinstance(request, PasswordStep):
            reason = f"password step: {reason}"
        extra: dict[str, Any] = {} if result.sent is None else {"send": result.sent.audit}
        if request.login_id:
            extra["login_id"] = request.login_id
        channel = request.channel
        if channel.name:
            extra["channel"] = channel.name
        if channel.where:
            extra["where"] = channel.where  # as exemptions and app passwords name it
        if found is not None:
            extra.update(policy_facts(found))
        if not channel.enforce:
            extra["report_only"] = True
            reason = audit_reason(reason)
        self.audit.record(
            outcome=outcome,
            front_end=request.channel.front_end,
            user=request.name,
            dn=result.dn,
            client=request.client,
            token=result.token_id,
            reason=reason,
            **extra,
        )

    def _warn(self, result: AuthResult) -> None:
        """Hand a claimed low-scratch warning to the notifier (it only schedules the send:
        the login's answer never waits for it, nor changes with it)."""
        left, notify = result.low_scratch_warning, self.notify_low_scratch
        if left is None or notify is None or result.dn is None or result.token_id is None:
            return
        try:
            notify(result.dn, result.token_id, left)
        except Exception:
            log.failure("the low-scratch warning could not be scheduled")

    def _admission(self, request: AuthRequest) -> AuthResult | None:
        """What is refused before anything is parsed, looked up or forwarded."""
        limit = self.settings.policy.max_name_length
        if len(request.name) > limit:
            return _refused(f"name of {len(request.name)} characters (max_name_length {limit})")
        channel = request.channel
        if channel.require_tls and not channel.tls:
            # RFC 4513 §5.1.2/§6.3.1: credentials on a plain connection are not looked at.
            return AuthResult(False, "credentials without TLS (require_tls)", tls_required=True)
        given: str | None = None
        if isinstance(request, Appended):
            given = request.typed
        elif isinstance(request, (*_WITH_PASSWORD, SendCode)):
            given = request.password
        if given == "":
            # An empty password is an unauthenticated bind: never looked up nor forwarded.
            return _refused("empty password refused")
        if isinstance(request, Proof) and request.kind not in channel.proofs:
            return _refused(f"{request.kind.upper()} is not enabled for this client")
        return None

    async def _dispatch(
        self, request: AuthRequest, check_password: PasswordCheck | None, trace: Trace
    ) -> AuthResult:
        refusal = self._admission(request)
        if refusal is not None:
            return refusal
        secret = app_secret(request, self.settings.app_passwords)
        if secret is not None and isinstance(request, Appended | PasswordStep):
            done = await app_login(self, request, secret, trace)
            if done is not None:
                return done
        if isinstance(request, Appended):
            return await self._appended(request, check_password, trace)
        if isinstance(request, Separate):
            given = (request.password, request.code)
            return await self._login(request, given, check_password, trace, request.require_otp)
        if isinstance(request, CodeOnly):
            given = ("", request.code)
            return await self._login(request, given, None, trace, request.require_otp)
        if isinstance(request, PasswordStep):
            return await self._password_step(request, check_password)
        if isinstance(request, SendCode):
            return await send_code_request(self, request, check_password)
        if isinstance(request, Proof):
            return await proof_login(self, request)
        if isinstance(request, Sasl):
            if request.channel.restricted:  # the listener's rules, on the account named
                refused = await sasl_refusal(self.store, request)
                if refused is not None:
                    return refused
            return await sasl_login(self.policy, self.store, request, self.clock.seconds())
        if isinstance(request, FirstEnrollment):
            return await first_enrollment(self, request, check_password)
        if isinstance(request, Unusable):
            return _refused(request.why)
        raise TypeError(f"not a login request: {request!r}")

    # -- the prologue ------------------------------------------------------------------------

    async def prologue(
        self,
        request: Login,
        trace: Trace = None,
        *,
        code_only: bool = False,
        require_otp: bool = False,
        fresh: bool = False,
    ) -> Ready:
        """resolve -> policy -> fresh read if the cache could mislead -> decode -> expiry,
        grace and lockout.  ``code_only``: no password will be checked (an exempt DN cannot
        skip the lookup); ``require_otp``: exemptions do not apply."""
        ready = await self._prologue(request, trace, code_only, require_otp, fresh)
        self._found[id(request)] = ready
        return ready

    async def _prologue(
        self, request: Login, trace: Trace, code_only: bool, require_otp: bool, fresh: bool
    ) -> Ready:
        policy = self.policy
        channel = request.channel
        if (
            not code_only
            and not require_otp
            and not channel.restricted
            and not policy.config.admin_groups
            and (
                exempt := policy.exempt_by_name(
                    request.name, channel, request.client, self.clock.seconds()
                )
            )
        ):
            # An exempt DN (service account, possibly no user entry at all): its password
            # bind is all there is; with admin groups configured it is looked up first.
            note(trace, "policy", None, "exempt DN: its password alone, without a lookup")
            return Ready(None, Decision(False, exempt.reason()))
        # An exempt DN too is looked up like any user on a restricted channel.
        user, refusal = await self.admitted(request, fresh)
        if refusal is not None:
            return noted(trace, Ready(user, Decision(True, "policy"), None, refusal))
        now = self.clock.seconds()
        if user.expires_at is not None and user.expires_at <= now:
            # AD refuses the password bind of an expired account, but CHAP, MS-CHAPv2 and
            # code-only logins bind nothing: the account's state decides here for all.
            return noted(trace, Ready(user, Decision(True, "policy"), None, "expired"))
        decision = self._decide(user, request, require_otp)
        if not decision.needs_otp:
            return noted(trace, Ready(user, decision))
        state = self.store.decode(user)
        no_pin = channel.pin and channel.require_pin
        if user.from_cache and (
            not state.tokens
            or is_locked(state.used, now)
            or suspension_refusal(state, now)
            or (no_pin and state.pin is None)
        ):
            # A refusal is made on what the directory holds now: a cached entry may predate
            # an enrollment, an unlock, a resume or a new PIN.
            user = await self.resolve(request, True)
            decision = self._decide(user, request, require_otp)
            if not decision.needs_otp:
                return noted(trace, Ready(user, decision))
            state = self.store.decode(user)
        if not state.tokens:
            grace, ended = policy.grace(user.groups, now)
            if grace is not None and not user.used:
                return noted(trace, Ready(user, grace, state))
            if grace is not None:
                # The use state outlives a reset or a revocation: she had OTP, and the
                # grace is for users not yet enrolled, not a way around a lost device.
                ended = " (grace does not apply: her tokens were reset)"
            no_token = "no token enrolled" + ended
            return noted(trace, Ready(user, decision, state, no_token, waivable=True))
        suspended = suspension_refusal(state, now)  # no working factor: refused (fail closed)
        if suspended is not None:
            return noted(trace, Ready(user, decision, state, suspended, waivable=True))
        if is_locked(state.used, now):
            return noted(trace, Ready(user, decision, state, "locked out", waivable=True))
        if no_pin and state.pin is None:
            refusal = pin_refusal(channel)
            return noted(trace, Ready(user, decision, state, refusal, waivable=True))
        return noted(trace, Ready(user, decision, state))

    def found(self, request: Login, ready: Ready) -> None:
        """What a branch that does not run the prologue found (for the audit)."""
        self._found[id(request)] = ready

    async def admitted(self, request: Login, fresh: bool) -> tuple[UserEntry, str | None]:
        """The request's entry, and the refusal of the channel's access rules (None: she may
        log in here): checked before anything else is looked at or spent."""
        user = await self.resolve(request, fresh)
        if not request.channel.restricted:
            return user, None
        return await channel_rule(request, user, lambda: self.resolve(request, True))

    async def resolve(self, request: Login, fresh: bool) -> UserEntry:
        """The request's entry; kept for its ``authorize`` (``authorize.py``) when it has one."""
        user = await self.store.resolve(request.name, fresh=fresh)
        if request.authorize is not None:
            self._resolved[id(request)] = user
        return user

    def _decide(self, user: UserEntry, request: Login, require_otp: bool) -> Decision:
        if require_otp:
            return Decision(True, "OTP required by the front end")
        now = self.clock.seconds()
        return self.policy.decide(user.dn, user.groups, request.client, request.channel, now)

    # -- password + code, the code alone -----------------------------------------------------

    async def _appended(
        self, request: Appended, check_password: PasswordCheck | None, trace: Trace
    ) -> AuthResult:
        cache = self.bind_cache if request.rebind else None
        if cache is not None:
            cached = await self._cached_rebind(cache, request, check_password)
            if cached is not None:
                return cached
        result = await self._login(request, request.typed, check_password, trace)
        if cache is not None and result.ok and result.dn and result.password_length is not None:
            now = self.clock.seconds()
            cache.remember(
                request.name, request.client, request.typed, result.password_length, result.dn,
                now, cache_scope(request.channel),
            )  # fmt: skip
        return result

    async def _cached_rebind(
        self, cache: BindCache, request: Appended, check_password: PasswordCheck | None
    ) -> AuthResult | None:
        now = self.clock.seconds()
        scope = cache_scope(request.channel)
        cached = cache.lookup(request.name, request.client, request.typed, now, scope)
        if cached is None or check_password is None:
            return None
        password = request.typed[: cached.password_length].encode()
        code, _message = await check_password(cached.dn, password)
        if code == SUCCESS:
            return AuthResult(True, "bind cache", cached.dn, password_length=cached.password_length)
        cache.forget(request.name, request.client, scope)
        return None

    async def _login(
        self,
        request: Appended | Separate | CodeOnly,
        typed: Typed,
        check_password: PasswordCheck | None,
        trace: Trace,
        require_otp: bool = False,
    ) -> AuthResult:
        """``typed``: the secret as typed (Appended) or (password, code); ("", code) for a
        code alone, whose password was checked elsewhere (nothing is bound here)."""
        code_only = isinstance(request, CodeOnly)
        ready = await self.prologue(request, trace, code_only=code_only, require_otp=require_otp)
        user, decision = ready.user, ready.decision
        password = whole(typed)
        if user is None:
            return await password_only(request.name, password, check_password, decision.reason)
        if not decision.needs_otp:
            if code_only:
                return AuthResult(True, f"no OTP needed: {decision.reason}", user.dn)
            return await bind_password(
                user, password, check_password, f"no OTP needed: {decision.reason}"
            )
        reporting = report_only(request, require_otp) and not code_only
        if ready.refusal is not None or ready.state is None:
            refusal = ready.refusal or "no state"
            if reporting and ready.waivable and not code_given(typed):
                return await password_alone(user, password, check_password, f"refuse: {refusal}")
            return _refused(refusal, user.dn)
        now, settings, entry_id = self.clock.seconds(), self.settings, user.entry_id
        if isinstance(request, Appended):
            wanted = wanted_send(self, request, ready.state, now)
            if wanted is not None:
                identity = request.retransmission
                password, kind = wanted
                return await send_code(
                    self, request, user, ready.state, kind, password, check_password, identity
                )
        retransmission = self._retransmission(request)

        pin = code_only and request.channel.pin  # the code comes after the user's PIN
        required = pin_required(request.channel)

        def change(state: OtpState) -> StateChange[Verdict]:
            pending = self.unrecorded.count(entry_id, now)
            return verify_typed(
                state, typed, now, settings, pending, retransmission, pin, required
            )

        if reporting and not code_given(typed):
            verdict, user = await self.spend(user, tentative(change), now)
            if verdict.match is None:
                why = "refuse: no valid code"
                alone = await password_alone(user, password, check_password, why)
                if alone.ok:
                    return alone
                # Neither: decided as under enforcement, the miss counted.
                verdict, user = await self.spend(user, change, now)
        else:
            verdict, user = await self.spend(user, change, now)
        if verdict.match is None:
            note(trace, "otp", False, verdict.why)
            return _refused(verdict.why, user.dn)
        token_id = verdict.match.token.id
        again = verdict.why == RETRANSMISSION
        spent = f"{verdict.why} on another gateway" if again else "recorded as used"
        note(trace, "otp", True, f"accepted for token {token_id}, {spent}")
        left = verdict.match.scratch_remaining
        warning = left if verdict.warn else None
        if code_only:
            why = f"OTP accepted ({verdict.why})" if again else "OTP accepted"
            return AuthResult(
                True,
                why,
                user.dn,
                token_id,
                scratch_remaining=left,
                retransmission=again,
                low_scratch_warning=warning,
            )
        why = f"password+OTP accepted ({verdict.why})" if again else "password+OTP accepted"
        result = await bind_password(
            user, verdict.password, check_password, why, token_id, left, isinstance(typed, str)
        )
        if again and result.ok:
            result = replace(result, retransmission=True)
        if warning is not None:
            result = replace(result, low_scratch_warning=warning, token_id=token_id)
        note(trace, "password", result.ok, "bound upstream" if result.ok else result.reason)
        return result

    def _retransmission(self, request: Login) -> Retransmission | None:
        """The request's identity for ``failover_replay_seconds`` (None: off, or a request
        that has none)."""
        identity = getattr(request, "retransmission", None)
        window = self.settings.failover_replay_seconds
        if identity is None or window <= 0:
            return None
        return Retransmission(identity, window)

    async def spend(
        self,
        user: UserEntry,
        change: Callable[[OtpState], StateChange[V]],
        now: float,
        unrecorded: UnrecordedFailures | None = None,
    ) -> tuple[V, UserEntry]:
        """The engine's compare-and-swap of ``change``: the one way a login writes state.  A
        failure whose write has an unknown outcome (the connection died during the Modify)
        is kept as unrecorded (in ``unrecorded``, by default the codes'; a failure of its
        counter), and counts in the user's next decision on this gateway."""
        unrecorded = self.unrecorded if unrecorded is None else unrecorded
        planned: list[StateChange[V]] = []

        def remembered(state: OtpState) -> StateChange[V]:
            planned.append(change(state))
            return planned[-1]

        try:
            result, user = await self.store.update(user, remembered)
        except DirectoryUnavailable:
            used = planned[-1].used if planned else None
            if used is not None and counts_a_failure(used, unrecorded.counter):
                unrecorded.add(user.entry_id, now)
            raise
        if planned and planned[-1].writes:
            unrecorded.recorded(user.entry_id)
        return result, user

    # -- the first step of a challenge --------------------------------------------------------

    async def _password_step(
        self, request: PasswordStep, check_password: PasswordCheck | None
    ) -> AuthResult:
        """``needs_otp`` False with ``ok``: a complete login (exempt, trusted network...).
        With ``needs_otp`` the front end asks for the code and sends it as ``CodeOnly``.  A
        locked-out user or one without a token is refused before the password is tried."""
        ready = await self.prologue(request)
        user, decision = ready.user, ready.decision
        password = request.password
        if user is None:
            return await password_only(request.name, password, check_password, decision.reason)
        if not decision.needs_otp:
            why = f"no OTP needed: {decision.reason}"
            return await bind_password(user, password, check_password, why)
        if report_only(request) and (ready.refusal is None or ready.waivable):
            # Accepted on the password, as before: no challenge, no code sent.
            would = f"refuse: {ready.refusal}" if ready.refusal else "ask for a code"
            return await password_alone(user, password, check_password, would)
        if ready.refusal is not None:
            return _refused(ready.refusal, user.dn)
        if ready.state is not None and only_sent_codes(ready.state, self.clock.seconds()):
            return await send_code(
                self, request, user, ready.state, None, request.password, check_password,
                request.retransmission, ok=True,
            )  # fmt: skip
        why = "password accepted, OTP next"
        done = await bind_password(user, request.password, check_password, why)
        return replace(done, needs_otp=done.ok)


def policy_facts(found: Ready) -> dict[str, Any]:
    """The audit's ``policy`` (what the policy requires of this user here: "otp", or why
    nothing) and ``enrolled`` (whether she holds a token, when the state was read)."""
    decision = found.decision
    facts: dict[str, Any] = {}
    if decision.needs_otp:
        ended = decision.reason.startswith(f"{REQUIRED} (")
        facts["policy"] = "otp" + decision.reason[len(REQUIRED) :] if ended else "otp"
    else:
        facts["policy"] = decision.reason
    if found.state is not None:
        facts["enrolled"] = bool(found.state.tokens)
    return facts
