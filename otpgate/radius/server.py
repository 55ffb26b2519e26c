"""The RADIUS authentication server: datagrams in, the auth pipeline, signed replies out.

``RadiusServer`` holds what all listening sockets share (clients, duplicate cache,
rate limits, pending challenges, counters); each socket is a ``RadiusProtocol``.
Order of checks for every datagram, cheapest first:

1. the source address must belong to a configured client (else dropped, counted);
2. the layout must be sound (lengths, at most ``max_attributes``, one
   Message-Authenticator) and the code Access-Request or Status-Server;
3. the Message-Authenticator must be valid; it is required on Status-Server and,
   unless the client opts out, on Access-Request; a request without one that
   carries Proxy-State is dropped anyway (BlastRADIUS, CVE-2024-3596);
4. a retransmission (same address, port, Identifier, Request Authenticator) gets
   the reply already sent, or is dropped while the first copy is in progress
   (RFC 5080): it is never verified twice;
5. the per-NAS rate limit;
6. the login: append, challenge or otp-only (per client), or CHAP / MS-CHAPv2
   where the client allows them, translated for the pipeline by ``handler.py``.

Every reply has the Message-Authenticator first.  Rejects can be delayed.
Nothing here logs a password, OTP or secret.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from otpgate.auth.requests import (
    PasswordCheck,
)
from otpgate.errors import MalformedPacket
from otpgate.radius.access import classify
from otpgate.radius.challenge import ChallengeStore
from otpgate.radius.clients import ClientTable
from otpgate.radius.config import RadiusClient
from otpgate.radius.dedup import DuplicateCache, DuplicateKey, Pending
from otpgate.radius.handler import AccessHandler, GatewayLike, Outcome
from otpgate.radius.packet import (
    ACCESS_ACCEPT,
    ACCESS_CHALLENGE,
    ACCESS_REQUEST,
    PROXY_STATE,
    STATUS_SERVER,
    Request,
    decode_request,
    encode_reply,
    verify_message_authenticator,
)
from otpgate.radius.ratelimit import RateLimiter

log = Logger(namespace="otpgate.radius")

NOTE_INTERVAL = 300.0
"""A warning about one address and one kind of drop is logged at most this often."""

Address = tuple[str, int]
Send = Callable[[bytes, Address], None]


class RadiusServer:
    """State shared by all RADIUS sockets of one gateway.

    ``check_password`` does the users' password binds (default: the gateway's,
    a new connection per bind; ``radius_services`` passes a ``BindPool``'s).
    """

    def __init__(
        self, gateway: GatewayLike, reactor: Any, check_password: PasswordCheck | None = None
    ) -> None:
        radius = gateway.config.radius
        self.config = radius
        self.reactor = reactor
        self.clients = ClientTable(radius.clients)
        self.duplicates = DuplicateCache(
            radius.duplicate_cache_seconds, radius.duplicate_cache_size
        )
        self.limiter = RateLimiter(radius.rate_limit_per_client, radius.rate_limit_burst)
        self.challenges = ChallengeStore(radius.challenge_timeout, radius.max_challenges)
        self.handler = AccessHandler(
            gateway, self.challenges, reactor, check_password or gateway.check_password
        )
        self.counters = gateway.radius_counters
        self._noted: dict[tuple[str, str], float] = {}
        self._last_logged: dict[str, int] = {}

    def protocol(self) -> RadiusProtocol:
        return RadiusProtocol(self)

    # -- one datagram ---------------------------------------------------------------------

    def datagram(self, data: bytes, source: Address, send: Send) -> None:
        counters = self.counters
        counters.received += 1
        host = source[0]
        client = self.clients.match(host)
        if client is None:
            counters.dropped_unknown_client += 1
            self._note("unknown client", host)
            return
        try:
            request = decode_request(data, client.secret, self.config.max_attributes)
        except MalformedPacket as exc:
            counters.dropped_malformed += 1
            self._note("malformed packet", host, str(exc))
            return
        if request.code == STATUS_SERVER and self.config.status_server:
            self._status_server(request, client, source, send)
            return
        if request.code != ACCESS_REQUEST:
            counters.dropped_unsupported_code += 1
            self._note(f"packet code {request.code}", host)
            return
        if not self._authentic(request, client, host):
            return
        now = self.reactor.seconds()
        key: DuplicateKey = (host, source[1], request.id, request.authenticator)
        seen = self.duplicates.begin(key, now)
        if seen is Pending.IN_FLIGHT:
            counters.duplicates_in_flight += 1
            return
        if isinstance(seen, bytes):
            counters.duplicates_answered += 1
            send(seen, source)
            return
        if not self.limiter.allow(host, now):
            counters.dropped_rate_limited += 1
            self.duplicates.finish(key, None, now)
            self._note("rate limit exceeded", host)
            return
        try:
            login = classify(request)
        except MalformedPacket as exc:
            counters.dropped_malformed += 1
            self.duplicates.finish(key, None, now)
            self._note("malformed Access-Request", host, str(exc))
            return
        d = defer.ensureDeferred(self.handler.handle(request, login, client, host))
        d.addCallback(self._reply, request, key, source, send)
        d.addErrback(self._failed, key, host)

    def _authentic(self, request: Request, client: RadiusClient, host: str) -> bool:
        counters = self.counters
        if request.has_message_authenticator:
            if verify_message_authenticator(request):
                return True
            counters.dropped_bad_authenticator += 1
            self._note("bad Message-Authenticator (wrong shared secret?)", host)
            return False
        if request.code == STATUS_SERVER or client.require_message_authenticator:
            counters.dropped_missing_authenticator += 1
            self._note("no Message-Authenticator", host)
            return False
        if request.has(PROXY_STATE):  # FreeRADIUS's limit_proxy_state: the BlastRADIUS shape
            counters.dropped_missing_authenticator += 1
            self._note("Proxy-State without Message-Authenticator", host)
            return False
        return True

    def _status_server(
        self, request: Request, client: RadiusClient, source: Address, send: Send
    ) -> None:
        if not self._authentic(request, client, source[0]):
            return
        if not self.limiter.allow(source[0], self.reactor.seconds()):
            self.counters.dropped_rate_limited += 1
            return
        self.counters.status_server += 1
        send(encode_reply(request, ACCESS_ACCEPT), source)

    def _reply(
        self, outcome: Outcome, request: Request, key: DuplicateKey, source: Address, send: Send
    ) -> None:
        counters = self.counters
        if outcome.code is None:
            counters.no_reply_unavailable += 1
            self.duplicates.finish(key, None, self.reactor.seconds())
            return
        raw = encode_reply(request, outcome.code, outcome.attributes, outcome.encoded)
        if outcome.code == ACCESS_ACCEPT:
            counters.accepted += 1
        elif outcome.code == ACCESS_CHALLENGE:
            counters.challenged += 1
        else:
            counters.rejected += 1
            if self.config.reject_delay > 0:
                self.reactor.callLater(self.config.reject_delay, self._send, raw, key, source, send)
                return
        self._send(raw, key, source, send)

    def _send(self, raw: bytes, key: DuplicateKey, source: Address, send: Send) -> None:
        send(raw, source)
        self.duplicates.finish(key, raw, self.reactor.seconds())

    def _failed(self, failure: Failure, key: DuplicateKey, host: str) -> None:
        self.counters.errors += 1
        self.duplicates.finish(key, None, self.reactor.seconds())
        log.failure("RADIUS request from {client} failed; no reply sent", failure, client=host)

    # -- logging ----------------------------------------------------------------------------

    def _note(self, what: str, host: str, detail: str = "") -> None:
        """Warn about a kind of dropped packet from one address, at most every NOTE_INTERVAL."""
        now = self.reactor.seconds()
        key = (what, host)
        last = self._noted.get(key)
        if last is not None and now - last < NOTE_INTERVAL:
            return
        if len(self._noted) >= 4096:
            self._noted.clear()
        self._noted[key] = now
        log.warn(
            "RADIUS packet from {client} dropped: {what}{detail} "
            "(more like it are only counted for {interval:.0f} s)",
            client=host,
            what=what,
            detail=f" ({detail})" if detail else "",
            interval=NOTE_INTERVAL,
        )

    def log_counters(self) -> None:
        """Log the counters if they changed since the last call (run by a TimerService)."""
        now = self.counters.snapshot()
        if now != self._last_logged:
            log.info("RADIUS counters {counters}", counters=now)
            self._last_logged = now


class RadiusProtocol(DatagramProtocol):
    """One listening UDP socket of a RadiusServer."""

    def __init__(self, server: RadiusServer) -> None:
        self.server = server

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.server.datagram(datagram, (addr[0], addr[1]), self._send)

    def _send(self, data: bytes, addr: Address) -> None:
        transport = self.transport
        if transport is not None:  # None once the port stopped listening
            transport.write(data, addr)
