"""The portal over Twisted Web: routing, cookies, security headers, and the async actions.

Decisions (sessions, CSRF, rate limits, HTML) live in ``sessions`` and ``render``; this
module sequences them with the gateway's store, pipeline and audit trail.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

import segno
from ldaptor import ldapfilter
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server

from otpgate import ber
from otpgate.admin.enrollment import PolicyError, enroll_change, new_oath_token, otpauth_uri
from otpgate.admin.inventory import assign_token
from otpgate.admin.manage import reset_change, revoke_change, scratch_change, unlock_change
from otpgate.auth.pipeline import AuthRequest
from otpgate.auth.policy import normalise_dn
from otpgate.codec import CodecError
from otpgate.config import Config
from otpgate.configfile import Network
from otpgate.directory.inventory import InventoryError
from otpgate.directory.ldapdata import SCOPE_BASE, SUCCESS, DirectoryError
from otpgate.directory.state import (
    AmbiguousUser,
    OtpState,
    StateChange,
    UserEntry,
    UserNotFound,
)
from otpgate.directory.store import InventoryStore
from otpgate.otp.oath import verify_hotp, verify_totp
from otpgate.otp.scratch import format_for_print, generate_scratch_list
from otpgate.tokens import TokenType
from otpgate.web import render
from otpgate.web.bodycap import MAX_BODY
from otpgate.web.clientaddr import ClientAddress, client_address
from otpgate.web.metrics import CONTENT_TYPE, Metrics
from otpgate.web.sessions import PendingEnrollment, RateLimiter, Session, SessionStore, csrf_ok

log = Logger()

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
STATIC = {
    b"/static/app.css": ("app.css", b"text/css; charset=utf-8"),
    b"/static/app.js": ("app.js", b"text/javascript; charset=utf-8"),
}
MATCHES = 20
SIZE_LIMIT_EXCEEDED = 4
FAILED = "Sign-in failed: check your user name, password and code."
CODE_NEEDED = (
    "Sign-in failed. Type your password and the one-time code from your device: the "
    "password alone only signs in to enroll a first device, where that is allowed."
)


@dataclass(frozen=True)
class Reply:
    body: bytes
    status: int = 200
    content_type: bytes = b"text/html; charset=utf-8"
    location: str | None = None
    cookie: str | None = None


def _in(client: str, networks: tuple[Network, ...]) -> bool:
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        return False
    return any(address in n for n in networks)


def _filter_prefix(attribute: bytes, prefix: bytes) -> bytes:
    """RFC 4511 substrings filter (attribute=prefix*)."""
    return ber.tlv(0xA4, ber.tlv(0x04, attribute) + ber.tlv(0x30, ber.tlv(0x80, prefix)))


def _filter_or(*parts: bytes) -> bytes:
    return ber.tlv(0xA1, b"".join(parts))


IN_CHAIN = b"1.2.840.113556.1.4.1941"
"""AD's LDAP_MATCHING_RULE_IN_CHAIN: membership through nested groups."""


def _filter_extensible(rule: bytes, attribute: bytes, value: bytes) -> bytes:
    """RFC 4511 extensibleMatch filter (attribute:rule:=value)."""
    return ber.tlv(0xA9, ber.tlv(0x81, rule) + ber.tlv(0x82, attribute) + ber.tlv(0x83, value))


class Portal(resource.Resource):
    isLeaf = True

    def __init__(
        self,
        gateway: Any,
        config: Config,
        clock: Any,
        metrics: Metrics,
        https: bool,
        inventory: InventoryStore | None = None,
    ) -> None:
        resource.Resource.__init__(self)
        self.gateway = gateway
        self.config = config
        self.web = config.web
        self.clock = clock
        self.metrics = metrics
        self.https = https
        self.inventory = inventory
        self.sessions = SessionStore(
            self.web.session_idle_seconds, self.web.session_max_seconds, self.web.max_sessions
        )
        self.by_client = RateLimiter(self.web.sign_in_attempts_per_minute)
        self.by_name = RateLimiter(self.web.sign_in_attempts_per_minute)
        # Per directory entry, whatever name form was typed (alice, DOMAIN\alice, UPN, DN).
        # Its own limiter: typed-name churn cannot evict these keys.
        self.by_entry = RateLimiter(self.web.sign_in_attempts_per_minute)
        self.cookie_name = "__Host-otpgate" if https else "otpgate"
        self._user_filter: bytes = ldapfilter.parseFilter(config.directory.user_filter).toWire()
        self._static = {
            path: (resources.files("otpgate.web").joinpath("static", name).read_bytes(), ctype)
            for path, (name, ctype) in STATIC.items()
        }

    # -- plumbing ------------------------------------------------------------------------------

    def now(self) -> float:
        return float(self.clock.seconds())

    def render(self, request: Any) -> Any:
        d = defer.ensureDeferred(self._handle(request))
        d.addErrback(self._crashed, request)
        d.addCallback(self._send, request)
        return server.NOT_DONE_YET

    def _crashed(self, failure: Any, request: Any) -> Reply:
        log.failure("web portal request failed: {path}", failure, path=request.path)
        return Reply(render.page("Error", render.message("Something went wrong.")), 500)

    def _headers(self, request: Any) -> None:
        request.setHeader(b"content-security-policy", CSP.encode())
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"x-frame-options", b"DENY")
        request.setHeader(b"referrer-policy", b"no-referrer")
        request.setHeader(b"cache-control", b"no-store")
        if self.https:
            request.setHeader(b"strict-transport-security", b"max-age=31536000")

    def _send(self, reply: Reply, request: Any) -> None:
        if request.finished or request._disconnected:
            return
        self._headers(request)
        request.setResponseCode(reply.status)
        request.setHeader(b"content-type", reply.content_type)
        if reply.cookie is not None:
            request.setHeader(b"set-cookie", reply.cookie.encode())
        if reply.location is not None:
            request.setHeader(b"location", reply.location.encode())
        request.write(reply.body)
        request.finish()

    def _cookie(self, value: str, max_age: int | None = None) -> str:
        parts = [f"{self.cookie_name}={value}", "Path=/", "HttpOnly", "SameSite=Strict"]
        if self.https:
            parts.append("Secure")
        if max_age is not None:
            parts.append(f"Max-Age={max_age}")
        return "; ".join(parts)

    def _session(self, request: Any) -> Session | None:
        raw = request.getHeader(b"cookie")
        if not raw:
            return None
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(raw.decode("latin-1"))
        except CookieError:
            return None
        morsel = jar.get(self.cookie_name)
        return self.sessions.get(morsel.value if morsel else None, self.now())

    @staticmethod
    def _form(request: Any) -> dict[str, str] | None:
        """The POST body's fields (never the query string: no secret in a URL)."""
        body = request.content.read(MAX_BODY + 1) if request.content is not None else b""
        if len(body) > MAX_BODY:
            return None
        try:
            fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=20)
        except (UnicodeDecodeError, ValueError):
            return None
        return {k: v[0] for k, v in fields.items()}

    def _client(self, request: Any) -> ClientAddress:
        """The client's address: the TCP peer, or what a trusted proxy says (clientaddr.py)."""
        web = self.web
        peer = str(request.getClientAddress().host)
        header = web.forwarded_header.encode()
        found = client_address(
            peer, request.requestHeaders.getRawHeaders(header), web.trusted_proxies,
            web.forwarded_header,
        )
        if found.problem is not None:
            log.warn(
                "web: unusable forwarding header from proxy {peer} ({problem}): counted as the "
                "proxy's address, without network-based rights",
                peer=peer,
                problem=found.problem,
            )
        return found

    def _redirect(self, where: str, cookie: str | None = None) -> Reply:
        return Reply(b"", 303, location=where, cookie=cookie)

    def _page(self, title: str, body: str, session: Session | None, status: int = 200) -> Reply:
        if session is None:
            return Reply(render.page(title, body), status)
        return Reply(render.page(title, body, session.name, session.csrf, session.helpdesk), status)

    def audit(
        self,
        session: Session | None,
        client: str,
        outcome: str,
        reason: str,
        user: str | None = None,
        dn: str | None = None,
        token: str | None = None,
    ) -> None:
        actor = session.name if session is not None else None
        self.gateway.audit.record(
            outcome=outcome,
            front_end="web",
            user=user if user is not None else actor,
            dn=dn if dn is not None else (session.dn if session else None),
            client=client,
            token=token,
            reason=reason if user is None else f"by {actor}: {reason}",
        )

    # -- routing -------------------------------------------------------------------------------

    async def _handle(self, request: Any) -> Reply:
        path: bytes = request.path
        method: bytes = request.method
        address = self._client(request)
        client = address.address
        if path in self._static and method == b"GET":
            body, ctype = self._static[path]
            return Reply(body, content_type=ctype)
        if path == b"/metrics" and method == b"GET":
            if address.network is None or not _in(address.network, self.web.metrics_networks):
                return Reply(b"forbidden\n", 403, b"text/plain")
            self.metrics.sessions.set(len(self.sessions))
            return Reply(self.metrics.text(), content_type=CONTENT_TYPE.encode())
        session = self._session(request)
        if (
            session is not None
            and (path == b"/helpdesk" or path.startswith(b"/helpdesk/"))
            and not await self._helpdesk_now(session)
        ):
            self.audit(session, client, "refused", "help-desk page without help-desk rights")
            return self._page("Refused", render.message("Help desk only."), session, 403)
        if method == b"GET":
            gets: dict[bytes, Callable[[Any, Session | None, str], Awaitable[Reply]]] = {
                b"/": self.get_root,
                b"/signin": self.get_signin,
                b"/me": self.get_me,
                b"/helpdesk": self.get_helpdesk,
            }
            handler = gets.get(path)
            if handler is None:
                return Reply(render.page("Not found", "<p>No such page.</p>"), 404)
            return await handler(request, session, client)
        if method != b"POST":
            return Reply(b"method not allowed\n", 405, b"text/plain")
        form = self._form(request)
        if form is None:
            return Reply(b"bad request\n", 400, b"text/plain")
        if path == b"/signin":
            return await self.post_signin(form, session, client, address.network)
        if session is None:
            return self._redirect("/signin")
        if not csrf_ok(session, form.get("csrf")):
            self.audit(
                session, client, "refused", f"bad CSRF token on {path.decode(errors='replace')}"
            )
            return self._page(
                "Refused", render.message("The form expired; try again."), session, 403
            )
        posts: dict[bytes, Callable[[dict[str, str], Session, str], Awaitable[Reply]]] = {
            b"/signout": self.post_signout,
            b"/enroll": self.post_enroll,
            b"/enroll/confirm": self.post_confirm,
            b"/enroll/cancel": self.post_cancel,
            b"/revoke": self.post_revoke,
            b"/scratch": self.post_scratch,
            b"/helpdesk/revoke": self.hd_revoke,
            b"/helpdesk/reset": self.hd_reset,
            b"/helpdesk/unlock": self.hd_unlock,
            b"/helpdesk/scratch": self.hd_scratch,
            b"/helpdesk/assign": self.hd_assign,
        }
        post = posts.get(path)
        if post is None:
            return Reply(render.page("Not found", "<p>No such page.</p>"), 404)
        if not session.otp_verified and not session.enroll_only:
            # Cannot happen (every other session verified an OTP): refuse rather than trust it.
            self.audit(session, client, "refused", "session without a verified OTP")
            return self._page("Refused", render.message("Sign in with a code."), session, 403)
        if session.enroll_only and path not in (
            b"/signout",
            b"/enroll",
            b"/enroll/confirm",
            b"/enroll/cancel",
        ):
            self.audit(
                session,
                client,
                "refused",
                f"{path.decode(errors='replace')} in a password-only (enroll-only) session",
            )
            return self._page("Refused", render.message("Enroll a device first."), session, 403)
        return await post(form, session, client)

    # -- sign in / out -------------------------------------------------------------------------

    async def get_root(self, request: Any, session: Session | None, client: str) -> Reply:
        return self._redirect("/me" if session else "/signin")

    async def get_signin(self, request: Any, session: Session | None, client: str) -> Reply:
        if session is not None:
            return self._redirect("/me")
        return self._page("Sign in", render.sign_in(), None)

    async def post_signin(
        self, form: dict[str, str], old: Session | None, client: str, network: str | None
    ) -> Reply:
        name = form.get("username", "").strip()
        password = form.get("password", "")
        otp = form.get("otp", "").strip().replace(" ", "")
        if old is not None:
            self.sessions.drop(old)  # a new session id at every sign-in (no fixation)
        now = self.now()
        if not self.by_client.allow(client, now) or not self.by_name.allow(name.lower(), now):
            return self._rate_limited(name, client, "address or typed name")
        if not name or not password or len(name) > 256 or len(password) > 1024:
            return self._page("Sign in", render.sign_in(FAILED, name), None, 401)
        entry = await self._entry_key(name)
        if entry is not None and not self.by_entry.allow(entry, now):
            return self._rate_limited(name, client, "account")
        session = await self._sign_in(name, password, otp, client, network)
        if session is None:
            message = FAILED if otp else CODE_NEEDED
            return self._page("Sign in", render.sign_in(message, name), None, 401)
        return self._redirect("/me", self._cookie(session.id))

    def _rate_limited(self, name: str, client: str, bucket: str) -> Reply:
        self.audit(None, client, "reject", f"web sign-in rate limit ({bucket})", user=name)
        return self._page(
            "Sign in", render.sign_in("Too many attempts; wait a minute.", name), None, 429
        )

    async def _entry_key(self, name: str) -> str | None:
        """The directory entry ``name`` resolves to (its immutable id), for the per-entry limit.

        None when it resolves to nothing (unknown names have only their typed-name bucket) or
        the directory cannot be asked (then the sign-in itself fails)."""
        try:
            user = await self.gateway.store.resolve(name)
        except DirectoryError:
            return None
        return user.entry_id.hex() or normalise_dn(user.dn)

    async def _sign_in(
        self, name: str, password: str, otp: str, client: str, network: str | None
    ) -> Session | None:
        """A session for a sign-in that verified an OTP, or an enroll-only one (first device).

        A typed code is always verified (``require_otp``: trusted networks, exempt accounts and
        groups that need no OTP do not skip it, and the code is never taken for part of the
        password).  Without a code the only way in is a first enrollment: a password alone never
        opens self-service or the help desk for a user who has a token, whatever the policy.
        """
        gw = self.gateway
        if not otp:
            return await self._first_enrollment(name, password, client, network)
        delimiter = self.config.otp.otp_delimiter
        secret = password + (delimiter + otp if delimiter else otp)
        request = AuthRequest(name, secret, client, "web", require_otp=True)
        result = await gw.authenticator.authenticate(request, gw.check_password)
        if not result.ok or result.dn is None or result.token_id is None:
            return None
        helpdesk = await self._is_helpdesk(result.dn)
        return self.sessions.new(
            name, result.dn, self.now(), helpdesk=helpdesk, otp_verified=True
        )

    def _password_only_enrollment(self, network: str | None) -> bool:
        """Whether a user without a token may enroll with the password alone from ``network``:
        from the configured networks, or from anywhere until the rollout window ends."""
        until = self.web.password_only_enrollment_until
        if until is not None and self.now() < until:
            return True
        return network is not None and _in(network, self.web.password_only_enrollment_networks)

    async def _first_enrollment(
        self, name: str, password: str, client: str, network: str | None
    ) -> Session | None:
        """Password alone: an enroll-only session for a user with no token, where allowed.

        A user who has a token is refused before the password is tried (no password oracle
        without the second factor); so is everyone outside password-only enrollment.  The
        refusal reads the same in every case (``CODE_NEEDED``); the audit trail has the reason.
        """
        gw = self.gateway

        def refuse(reason: str, dn: str | None = None) -> None:
            gw.audit.record(
                outcome="reject",
                front_end="web",
                user=name,
                dn=dn,
                client=client,
                token=None,
                reason=reason,
            )

        if not self._password_only_enrollment(network):
            refuse("no one-time code (password-only enrollment does not apply here)")
            return None
        try:
            user = await gw.store.resolve(name, fresh=True)
            state = gw.store.decode(user)
        except (DirectoryError, CodecError) as exc:
            refuse(f"password only: {type(exc).__name__}: {exc}")
            return None
        if state.tokens:
            refuse("no one-time code, and the user has a token: a code is required", user.dn)
            return None
        code, _message = await gw.check_password(user.dn, password.encode("utf-8"))
        if code != SUCCESS:
            refuse(f"password only, first enrollment: wrong password ({code})", user.dn)
            return None
        gw.audit.record(
            outcome="accept",
            front_end="web",
            user=name,
            dn=user.dn,
            client=client,
            token=None,
            reason="password only, first enrollment",
        )
        return self.sessions.new(name, user.dn, self.now(), enroll_only=True)

    async def _helpdesk_now(self, session: Session) -> bool:
        """Help-desk rights for this request: granted at an OTP sign-in and still a member
        (read again, so removing someone from the group takes effect at once)."""
        return (
            session.helpdesk and session.otp_verified and await self._is_helpdesk(session.dn)
        )

    async def _member(self, user: UserEntry, groups: tuple[str, ...]) -> bool:
        """Whether ``user`` is in one of ``groups``: its ``memberOf`` values, or the groups'
        ``member`` values where there is no ``memberOf`` (OpenLDAP without the overlay); on
        AD nested membership too (LDAP_MATCHING_RULE_IN_CHAIN).  Raises DirectoryError."""
        if not groups:
            return False
        wanted = {normalise_dn(g) for g in groups}
        if {normalise_dn(g) for g in user.groups} & wanted:
            return True
        conn = await self.gateway.read_pool.connection()
        nested = self.config.directory.profile.server == "ad"
        for group in groups:
            if nested:
                member = _filter_extensible(IN_CHAIN, b"member", user.dn.encode())
            else:
                member = ber.filter_equal(b"member", user.dn.encode())
            if await conn.search(group, member, ["cn"], scope=SCOPE_BASE):
                return True
        return False

    async def _is_helpdesk(self, dn: str) -> bool:
        if not self.web.helpdesk_groups:
            return False
        try:
            user = await self.gateway.store.resolve(dn, fresh=True)
            return await self._member(user, self.web.helpdesk_groups)
        except DirectoryError as exc:
            log.warn("help-desk group check for {dn} failed: {error}", dn=dn, error=str(exc))
        return False

    async def post_signout(self, form: dict[str, str], session: Session, client: str) -> Reply:
        self.sessions.drop(session)
        self.audit(session, client, "signout", "signed out")
        return self._redirect("/signin", self._cookie("", max_age=0))

    # -- self-service --------------------------------------------------------------------------

    async def _state(self, name: str) -> tuple[UserEntry, OtpState]:
        user = await self.gateway.store.resolve(name, fresh=True)
        return user, self.gateway.store.decode(user)

    async def get_me(
        self,
        request: Any,
        session: Session | None,
        client: str,
        notice: str | None = None,
        error: str | None = None,
    ) -> Reply:
        if session is None:
            return self._redirect("/signin")
        _user, state = await self._state(session.dn)
        body = render.my_devices(state, session.csrf, session.enroll_only, notice, error)
        return self._page("My devices", body, session)

    async def post_enroll(self, form: dict[str, str], session: Session, client: str) -> Reply:
        if session.enroll_only:
            _user, state = await self._state(session.dn)
            if state.tokens:  # enrolled meanwhile (elsewhere): the password alone is over
                return self._end_enroll_only(session, client, "a device was enrolled meanwhile")
        label = form.get("label", "").strip()[:64] or "phone"
        try:
            token, secret = new_oath_token(
                self.config.otp, TokenType.TOTP, label=label, now=self.now()
            )
        except ValueError as exc:  # e.g. control characters in the label
            return await self.get_me(None, session, client, error=f"Label refused: {exc}.")
        session.pending = PendingEnrollment(token, secret)
        account = session.name
        uri = otpauth_uri(token, secret, account, self.config.otp.issuer)
        svg = segno.make(uri, error="m").svg_inline(scale=4, omitsize=True)
        b32 = base64.b32encode(secret.key).decode().rstrip("=")
        self.audit(
            session,
            client,
            "enroll-start",
            f"new {token.type.value} token {token.id}",
            token=token.id,
        )
        return self._page(
            "Enroll an authenticator app", render.enroll(svg, b32, session.csrf), session
        )

    async def post_cancel(self, form: dict[str, str], session: Session, client: str) -> Reply:
        session.pending = None
        return self._redirect("/me")

    async def post_confirm(self, form: dict[str, str], session: Session, client: str) -> Reply:
        pending = session.pending
        if pending is None:
            return await self.get_me(None, session, client, error="Start the enrollment again.")
        code = form.get("code", "").strip().replace(" ", "")
        token, secret = pending.token, pending.secret
        now = self.now()
        last = -1
        if token.type is TokenType.TOTP:
            match = verify_totp(
                secret.key,
                code,
                now,
                -1,
                digits=token.digits,
                algorithm=token.algorithm,
                period=token.period,
                window=self.config.otp.totp_window,
            )
            last = match.step if match is not None else -1
        else:
            hmatch = verify_hotp(
                secret.key,
                code,
                -1,
                digits=token.digits,
                algorithm=token.algorithm,
                look_ahead=self.config.otp.hotp_look_ahead,
            )
            last = hmatch.counter if hmatch is not None else -1
        if last < 0:
            self.audit(session, client, "enroll-reject", "wrong confirmation code", token=token.id)
            return self._page(
                "Enroll an authenticator app",
                render.confirm_form(session.csrf, "That code is not right; type the current one."),
                session,
                400,
            )
        enroll_only = session.enroll_only
        max_tokens = self.config.otp.max_tokens_per_user

        def change(state: OtpState) -> StateChange[Any]:
            if enroll_only and state.tokens:
                raise PolicyError("a device was enrolled meanwhile: sign in with it")
            # The confirmation code's step/counter is recorded as used: it cannot be replayed.
            return enroll_change(
                state, token, secret, max_tokens, replace_software=False, last=last
            )

        try:
            user, _state = await self._state(session.dn)
            await self.gateway.store.update(user, change)
        except PolicyError as exc:
            session.pending = None
            if enroll_only:
                return self._end_enroll_only(session, client, str(exc))
            return await self.get_me(None, session, client, error=str(exc))
        session.pending = None
        self.audit(
            session,
            client,
            "enroll",
            f"activated {token.type.value} token {token.id}",
            token=token.id,
        )
        if enroll_only:
            self.sessions.drop(session)
            body = (
                render.message(
                    "Your device is active. Sign in with your password and a code from it.",
                    "notice",
                )
                + render.sign_in()
            )
            return Reply(render.page("Sign in", body), cookie=self._cookie("", max_age=0))
        return await self.get_me(None, session, client, notice=f"Device {token.id} is active.")

    def _end_enroll_only(self, session: Session, client: str, why: str) -> Reply:
        """A password-only session whose user has a token now: signed out, nothing done."""
        self.sessions.drop(session)
        self.audit(session, client, "refused", f"enroll-only session ended: {why}")
        body = render.message("You have a device now: sign in with a code from it.") + (
            render.sign_in()
        )
        return Reply(render.page("Sign in", body), 403, cookie=self._cookie("", max_age=0))

    async def post_revoke(self, form: dict[str, str], session: Session, client: str) -> Reply:
        token_id = form.get("token", "")
        try:
            user, _state = await self._state(session.dn)
            removed, _u = await self.gateway.store.update(
                user, lambda s: revoke_change(s, token_id)
            )
        except PolicyError as exc:
            return await self.get_me(None, session, client, error=str(exc))
        self.audit(session, client, "revoke", f"revoked own token {token_id}", token=token_id)
        return await self.get_me(
            None, session, client, notice=f"Revoked {', '.join(t.id for t in removed)}."
        )

    async def _new_scratch(self, dn: str) -> tuple[list[str], str]:
        codes, scratch = generate_scratch_list()
        now = self.now()
        user, _state = await self._state(dn)
        token, _u = await self.gateway.store.update(user, lambda s: scratch_change(s, scratch, now))
        return format_for_print(codes), token.id

    async def post_scratch(self, form: dict[str, str], session: Session, client: str) -> Reply:
        codes, token_id = await self._new_scratch(session.dn)
        self.audit(session, client, "scratch", "printed a new scratch list", token=token_id)
        return self._page("Scratch codes", render.scratch_codes(codes, session.name), session)

    # -- help desk -----------------------------------------------------------------------------

    async def get_helpdesk(
        self,
        request: Any,
        session: Session | None,
        client: str,
        query: str | None = None,
        notice: str | None = None,
        error: str | None = None,
    ) -> Reply:
        if session is None:
            return self._redirect("/signin")
        if not session.helpdesk:
            return self._page("Refused", render.message("Help desk only."), session, 403)
        if query is None:
            raw = request.args.get(b"q", [b""])[0] if request is not None else b""
            query = raw.decode("utf-8", "replace").strip()
        found = None
        if query:
            try:
                user, state = await self._state(query)
                protected = await self._protected(user)
                found = render.helpdesk_user(
                    user.dn,
                    state,
                    session.csrf,
                    self.now(),
                    self.inventory is not None,
                    protected=protected,
                )
                self.audit(session, client, "view", "looked at the user", user=query, dn=user.dn)
            except (UserNotFound, AmbiguousUser):
                try:
                    found = render.matches(await self._search_users(query))
                except DirectoryError as exc:
                    error = error or f"{query}: {exc}"
            except (DirectoryError, CodecError) as exc:
                error = error or f"{query}: {exc}"
        body = render.helpdesk(session.csrf, query, found, notice, error)
        return self._page("Help desk", body, session)

    async def _protected(self, user: UserEntry) -> str | None:
        """Why the help desk may not change ``user``, or None.

        Administrators (``[policy] admin_groups``) and help-desk members (``[web]
        helpdesk_groups``, the signed-in member included) are for the directory's own admins
        and the CLI: a help-desk member who could reset or issue scratch codes for another
        member or an admin could take over that account, or raise their own rights.  Decided
        on a fresh read of the target's groups; when the groups cannot be read the answer is
        "protected" (fail closed)."""
        try:
            fresh = await self.gateway.store.resolve(user.dn, fresh=True)
            if await self._member(fresh, self.config.policy.admin_groups):
                return "an administrator"
            if await self._member(fresh, self.web.helpdesk_groups):
                return "a help-desk member"
        except DirectoryError as exc:
            log.warn(
                "help desk: group check of {dn} failed: {error}", dn=user.dn, error=str(exc)
            )
            return "a user whose groups cannot be read now"
        return None

    async def _hd_target(
        self, form: dict[str, str], session: Session, client: str, action: str
    ) -> UserEntry | Reply:
        """The target of a help-desk action, or the reply refusing it (audited)."""
        target = form.get("user", "")
        try:
            user, _state = await self._state(target)
        except (DirectoryError, CodecError) as exc:
            return await self.get_helpdesk(None, session, client, target, error=str(exc))
        why = await self._protected(user)
        if why is None:
            return user
        self.audit(
            session,
            client,
            "refused",
            f"help-desk {action} of {why} (administrators and help-desk members are changed "
            "with the CLI)",
            user=target,
            dn=user.dn,
        )
        message = f"Refused: {user.dn} is {why}. Use the otpgate CLI for such accounts."
        page = await self.get_helpdesk(None, session, client, target, error=message)
        return Reply(page.body, 403, page.content_type)

    async def _search_users(self, query: str) -> list[tuple[str, str]]:
        """(DN, login name) of users whose login name, UPN/mail or cn start with ``query``."""
        d = self.config.directory
        prefix = query.encode("utf-8")[:128]
        names = (d.search_attribute, d.upn_attribute, "cn")
        wanted = ber.filter_and(
            self._user_filter, _filter_or(*(_filter_prefix(a.encode(), prefix) for a in names))
        )
        conn = await self.gateway.read_pool.connection()
        try:
            found = await conn.search(d.base_dn, wanted, [d.search_attribute], size_limit=MATCHES)
        except DirectoryError as exc:
            if exc.result_code != SIZE_LIMIT_EXCEEDED:
                raise
            raise DirectoryError(
                f"more than {MATCHES} users match: type more", exc.result_code
            ) from exc
        result = []
        for entry in found:
            login = entry.attributes.get(d.search_attribute.lower(), [b""])[0]
            result.append((entry.dn, login.decode("utf-8", "replace")))
        return sorted(result, key=lambda r: r[1].lower())

    async def _hd_change(
        self,
        form: dict[str, str],
        session: Session,
        client: str,
        action: str,
        detail: str,
        change: Callable[[OtpState], StateChange[Any]],
    ) -> Reply:
        user = await self._hd_target(form, session, client, action)
        if isinstance(user, Reply):
            return user
        target = form.get("user", "")
        try:
            await self.gateway.store.update(user, change)
        except (PolicyError, DirectoryError, CodecError) as exc:
            return await self.get_helpdesk(None, session, client, target, error=str(exc))
        token = form.get("token") or None
        self.audit(
            session, client, f"helpdesk-{action}", detail, user=target, dn=user.dn, token=token
        )
        return await self.get_helpdesk(None, session, client, target, notice=f"Done: {detail}.")

    async def hd_revoke(self, form: dict[str, str], session: Session, client: str) -> Reply:
        token_id = form.get("token", "")
        return await self._hd_change(
            form,
            session,
            client,
            "revoke",
            f"revoke {token_id}",
            lambda s: revoke_change(s, token_id),
        )

    async def hd_reset(self, form: dict[str, str], session: Session, client: str) -> Reply:
        return await self._hd_change(form, session, client, "reset", "reset", reset_change)

    async def hd_unlock(self, form: dict[str, str], session: Session, client: str) -> Reply:
        return await self._hd_change(form, session, client, "unlock", "unlock", unlock_change)

    async def hd_scratch(self, form: dict[str, str], session: Session, client: str) -> Reply:
        user = await self._hd_target(form, session, client, "scratch")
        if isinstance(user, Reply):
            return user
        target = form.get("user", "")
        try:
            codes, token_id = await self._new_scratch(user.dn)
        except (DirectoryError, CodecError) as exc:
            return await self.get_helpdesk(None, session, client, target, error=str(exc))
        self.audit(
            session,
            client,
            "helpdesk-scratch",
            "issued a scratch list",
            user=target,
            dn=user.dn,
            token=token_id,
        )
        return self._page("Scratch codes", render.scratch_codes(codes, target), session)

    async def hd_assign(self, form: dict[str, str], session: Session, client: str) -> Reply:
        target = form.get("user", "")
        serial = form.get("serial", "").strip()
        if self.inventory is None or not serial:
            return await self.get_helpdesk(
                None, session, client, target, error="Give the serial of an inventory token."
            )
        user = await self._hd_target(form, session, client, "assign")
        if isinstance(user, Reply):
            return user
        try:
            token = await assign_token(
                self.inventory, serial, user.dn, self.config.otp.max_tokens_per_user
            )
        except (PolicyError, InventoryError, DirectoryError, CodecError) as exc:
            return await self.get_helpdesk(None, session, client, target, error=str(exc))
        self.audit(
            session,
            client,
            "helpdesk-assign",
            f"assigned serial {serial}",
            user=target,
            dn=user.dn,
            token=token.id,
        )
        return await self.get_helpdesk(
            None, session, client, target, notice=f"Assigned {serial} as {token.id}."
        )
