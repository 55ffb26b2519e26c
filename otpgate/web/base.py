"""The portal's plumbing: state, cookies, security headers, forms, pages, audit.

Decisions (sessions, CSRF, rate limits, HTML) live in ``sessions`` and ``render``; this
module sequences them with the gateway's store, pipeline and audit trail.
"""

from __future__ import annotations

from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

from ldaptor import ldapfilter
from twisted.logger import Logger
from twisted.web import resource

from otpgate.auth.requests import Channel, Sent
from otpgate.auth.rights import Rights
from otpgate.config import Config
from otpgate.directory.store import InventoryStore
from otpgate.web import render
from otpgate.web.bodycap import MAX_BODY
from otpgate.web.clientaddr import ClientAddress, client_address
from otpgate.web.health import health_check
from otpgate.web.metrics import Metrics
from otpgate.web.sentenroll import SentEnroller
from otpgate.web.sessions import RateLimiter, Session, SessionStore

log = Logger()

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
STATIC = {
    b"/static/app.css": ("app.css", b"text/css; charset=utf-8"),
    b"/static/app.js": ("app.js", b"text/javascript; charset=utf-8"),
}
WEB = Channel("web")
"""The portal's way in: HTTPS (or loopback), its own rules on where it listens."""
MATCHES = 20
SIZE_LIMIT_EXCEEDED = 4
FAILED = "Sign-in failed: check your user name, password and code."
CODE_NEEDED = (
    "Sign-in failed. Type your password and the one-time code from your device: the "
    "password alone only signs in to enroll a first device, where that is allowed."
)
CODE_NEEDED_OR_SEND = (
    "Sign-in failed. Type your password and the one-time code from your device, or press "
    '"Send me a code" to have one sent: the password alone only signs in to enroll a first '
    "device, where that is allowed."
)


@dataclass(frozen=True)
class Reply:
    body: bytes
    status: int = 200
    content_type: bytes = b"text/html; charset=utf-8"
    location: str | None = None
    cookie: str | None = None
    headers: tuple[tuple[bytes, bytes], ...] = ()
    """More response headers (a download's Content-Disposition)."""


class PortalBase(resource.Resource):
    """What every page of the portal shares (``Portal`` adds the pages and the routing)."""

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
        self.rights = Rights(gateway.authenticator.settings, gateway.store, gateway.read_pool)
        self.health = health_check(gateway, clock)
        self.sessions = SessionStore(
            self.web.session_idle_seconds, self.web.session_max_seconds, self.web.max_sessions
        )
        # Sign-ins waiting for a code that was sent: a store of their own, so that such a
        # session is no session anywhere else (it opens only its code step).
        self.code_steps = SessionStore(
            self.web.session_idle_seconds, self.web.session_max_seconds, self.web.max_sessions
        )
        self.enroller = SentEnroller(gateway, config)
        self.can_send = gateway.code_sender is not None
        """Codes can be sent: the sign-in form offers "Send me a code"."""
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
        for name, value in reply.headers:
            request.setHeader(name, value)
        request.write(reply.body)
        request.finish()

    def _cookie(self, value: str, max_age: int | None = None) -> str:
        parts = [f"{self.cookie_name}={value}", "Path=/", "HttpOnly", "SameSite=Strict"]
        if self.https:
            parts.append("Secure")
        if max_age is not None:
            parts.append(f"Max-Age={max_age}")
        return "; ".join(parts)

    def _cookie_value(self, request: Any) -> str | None:
        return self._cookie_in(request.getHeader(b"cookie"))

    def _cookie_in(self, raw: bytes | None) -> str | None:
        """The session id in a Cookie header's value."""
        if not raw:
            return None
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(raw.decode("latin-1"))
        except CookieError:
            return None
        morsel = jar.get(self.cookie_name)
        return morsel.value if morsel else None

    def _session(self, request: Any) -> Session | None:
        return self.sessions.get(self._cookie_value(request), self.now())

    def _code_step(self, request: Any) -> Session | None:
        """The sign-in waiting for a sent code that the cookie names, if any."""
        return self.code_steps.get(self._cookie_value(request), self.now())

    def _sign_in_page(self, error: str | None = None, name: str = "", status: int = 200) -> Reply:
        return Reply(render.page("Sign in", render.sign_in(error, name, self.can_send)), status)

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
            peer,
            request.requestHeaders.getRawHeaders(header),
            web.trusted_proxies,
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
        apps = self.manages_apps(session)
        page = render.page(title, body, session.name, session.csrf, session.helpdesk, apps)
        return Reply(page, status)

    def manages_apps(self, session: Session) -> bool:
        """Whether ``session`` may manage app passwords: the feature is on, and the sign-in
        verified a code (an app password replaces password + code, so only someone who
        showed both makes one)."""
        enabled = self.config.app_passwords.enabled
        return enabled and session.otp_verified and not session.enroll_only

    def audit(
        self,
        session: Session | None,
        client: str,
        outcome: str,
        reason: str,
        user: str | None = None,
        dn: str | None = None,
        token: str | None = None,
        send: Sent | None = None,
    ) -> None:
        """A portal action's audit event; ``send``: a code it sent or tried to (the audit's
        ``send`` field, counted in /metrics like the sign-in sends)."""
        actor = session.name if session is not None else None
        extra = {} if send is None else {"send": send.audit}
        self.gateway.audit.record(
            outcome=outcome,
            front_end="web",
            user=user if user is not None else actor,
            dn=dn if dn is not None else (session.dn if session else None),
            client=client,
            token=token,
            reason=reason if user is None else f"by {actor}: {reason}",
            **extra,
        )
