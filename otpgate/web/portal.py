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
from otpgate.config import Config, Network
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
from otpgate.web.metrics import CONTENT_TYPE, Metrics
from otpgate.web.sessions import PendingEnrollment, RateLimiter, Session, SessionStore, csrf_ok

log = Logger()

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
MAX_BODY = 16 * 1024
STATIC = {
    b"/static/app.css": ("app.css", b"text/css; charset=utf-8"),
    b"/static/app.js": ("app.js", b"text/javascript; charset=utf-8"),
}
MATCHES = 20
SIZE_LIMIT_EXCEEDED = 4
FAILED = "Sign-in failed: check your user name, password and code."


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

    @staticmethod
    def _client(request: Any) -> str:
        return str(request.getClientAddress().host)

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
        client = self._client(request)
        if path in self._static and method == b"GET":
            body, ctype = self._static[path]
            return Reply(body, content_type=ctype)
        if path == b"/metrics" and method == b"GET":
            if not _in(client, self.web.metrics_networks):
                return Reply(b"forbidden\n", 403, b"text/plain")
            self.metrics.sessions.set(len(self.sessions))
            return Reply(self.metrics.text(), content_type=CONTENT_TYPE.encode())
        session = self._session(request)
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
            return await self.post_signin(form, session, client)
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
        if path.startswith(b"/helpdesk/") and not session.helpdesk:
            self.audit(session, client, "refused", "help-desk action without help-desk rights")
            return self._page("Refused", render.message("Help desk only."), session, 403)
        if session.enroll_only and path not in (
            b"/signout",
            b"/enroll",
            b"/enroll/confirm",
            b"/enroll/cancel",
        ):
            return self._page("Refused", render.message("Enroll a device first."), session, 403)
        return await post(form, session, client)

    # -- sign in / out -------------------------------------------------------------------------

    async def get_root(self, request: Any, session: Session | None, client: str) -> Reply:
        return self._redirect("/me" if session else "/signin")

    async def get_signin(self, request: Any, session: Session | None, client: str) -> Reply:
        if session is not None:
            return self._redirect("/me")
        return self._page("Sign in", render.sign_in(), None)

    async def post_signin(self, form: dict[str, str], old: Session | None, client: str) -> Reply:
        name = form.get("username", "").strip()
        password = form.get("password", "")
        otp = form.get("otp", "").strip().replace(" ", "")
        if old is not None:
            self.sessions.drop(old)  # a new session id at every sign-in (no fixation)
        now = self.now()
        if not self.by_client.allow(client, now) or not self.by_name.allow(name.lower(), now):
            self.audit(None, client, "reject", "web sign-in rate limit", user=name)
            return self._page(
                "Sign in", render.sign_in("Too many attempts; wait a minute.", name), None, 429
            )
        if not name or not password or len(name) > 256 or len(password) > 1024:
            return self._page("Sign in", render.sign_in(FAILED, name), None, 401)
        session = await self._sign_in(name, password, otp, client)
        if session is None:
            return self._page("Sign in", render.sign_in(FAILED, name), None, 401)
        return self._redirect("/me", self._cookie(session.id))

    async def _sign_in(self, name: str, password: str, otp: str, client: str) -> Session | None:
        gw = self.gateway
        if not otp and self._password_only_enrollment(client):
            applies, first = await self._first_enrollment(name, password, client)
            if applies:
                return first
        delimiter = self.config.ldap_proxy.otp_delimiter
        secret = password + (delimiter + otp if otp and delimiter else otp)
        request = AuthRequest(name, secret, client, "web")
        result = await gw.authenticator.authenticate(request, gw.check_password)
        if not result.ok or result.dn is None:
            return None
        # Help-desk rights only after an OTP was checked (never on a password alone).
        helpdesk = result.token_id is not None and await self._is_helpdesk(result.dn)
        return self.sessions.new(name, result.dn, self.now(), helpdesk=helpdesk)

    def _password_only_enrollment(self, client: str) -> bool:
        """Whether a user without a token may enroll with the password alone from ``client``:
        from the configured networks, or from anywhere until the rollout window ends."""
        until = self.web.password_only_enrollment_until
        if until is not None and self.now() < until:
            return True
        return _in(client, self.web.password_only_enrollment_networks)

    async def _first_enrollment(
        self, name: str, password: str, client: str
    ) -> tuple[bool, Session | None]:
        """Password alone, allowed only for a user with no token, from the configured networks.

        (False, None) when the rule does not apply (unknown name, user with a token): the
        pipeline decides then.  Otherwise the password decides, and the pipeline is not asked.
        """
        gw = self.gateway
        try:
            user = await gw.store.resolve(name, fresh=True)
            state = gw.store.decode(user)
        except (DirectoryError, CodecError):
            return False, None
        if state.tokens:
            return False, None
        code, _message = await gw.check_password(user.dn, password.encode("utf-8"))
        ok = code == SUCCESS
        gw.audit.record(
            outcome="accept" if ok else "reject",
            front_end="web",
            user=name,
            dn=user.dn,
            client=client,
            token=None,
            reason="password only, first enrollment" if ok else f"wrong password ({code})",
        )
        if not ok:
            return True, None
        return True, self.sessions.new(name, user.dn, self.now(), enroll_only=True)

    async def _is_helpdesk(self, dn: str) -> bool:
        groups = self.web.helpdesk_groups
        if not groups:
            return False
        gw = self.gateway
        try:
            user = await gw.store.resolve(dn, fresh=True)
            if {normalise_dn(g) for g in user.groups} & {normalise_dn(g) for g in groups}:
                return True
            conn = await gw.read_pool.connection()
            for group in groups:  # no memberOf (OpenLDAP without the overlay): ask the group
                member = ber.filter_equal(b"member", dn.encode())
                found = await conn.search(group, member, ["cn"], scope=SCOPE_BASE)
                if found:
                    return True
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
        label = form.get("label", "").strip()[:64] or "phone"
        token, secret = new_oath_token(self.config.otp, TokenType.TOTP, label=label, now=self.now())
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
                found = render.helpdesk_user(
                    user.dn, state, session.csrf, self.now(), self.inventory is not None
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
        what: str,
        change: Callable[[OtpState], StateChange[Any]],
    ) -> Reply:
        target = form.get("user", "")
        try:
            user, _state = await self._state(target)
            await self.gateway.store.update(user, change)
        except (PolicyError, DirectoryError, CodecError) as exc:
            return await self.get_helpdesk(None, session, client, target, error=str(exc))
        token = form.get("token") or None
        self.audit(session, client, f"helpdesk-{what}", what, user=target, dn=user.dn, token=token)
        return await self.get_helpdesk(None, session, client, target, notice=f"Done: {what}.")

    async def hd_revoke(self, form: dict[str, str], session: Session, client: str) -> Reply:
        token_id = form.get("token", "")
        return await self._hd_change(
            form, session, client, f"revoke {token_id}", lambda s: revoke_change(s, token_id)
        )

    async def hd_reset(self, form: dict[str, str], session: Session, client: str) -> Reply:
        return await self._hd_change(form, session, client, "reset", reset_change)

    async def hd_unlock(self, form: dict[str, str], session: Session, client: str) -> Reply:
        return await self._hd_change(form, session, client, "unlock", unlock_change)

    async def hd_scratch(self, form: dict[str, str], session: Session, client: str) -> Reply:
        target = form.get("user", "")
        try:
            codes, token_id = await self._new_scratch(target)
        except (DirectoryError, CodecError) as exc:
            return await self.get_helpdesk(None, session, client, target, error=str(exc))
        self.audit(
            session,
            client,
            "helpdesk-scratch",
            "issued a scratch list",
            user=target,
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
        try:
            token = await assign_token(
                self.inventory, serial, target, self.config.otp.max_tokens_per_user
            )
        except (PolicyError, InventoryError, DirectoryError, CodecError) as exc:
            return await self.get_helpdesk(None, session, client, target, error=str(exc))
        self.audit(
            session,
            client,
            "helpdesk-assign",
            f"assigned serial {serial}",
            user=target,
            token=token.id,
        )
        return await self.get_helpdesk(
            None, session, client, target, notice=f"Assigned {serial} as {token.id}."
        )
