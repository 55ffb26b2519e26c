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
   where the client allows them.

Every reply has the Message-Authenticator first.  Rejects can be delayed.
Nothing here logs a password, OTP or secret.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from otpgate.auth.pipeline import Authenticator
from otpgate.auth.requests import (
    Appended,
    AuthResult,
    Channel,
    CodeOnly,
    PasswordCheck,
    PasswordStep,
    Proof,
    Unusable,
)
from otpgate.config import Config
from otpgate.directory.pool import ServerPool
from otpgate.errors import MalformedPacket
from otpgate.radius.access import Chap, Login, MsChapV2, Pap, classify
from otpgate.radius.challenge import ChallengeStore
from otpgate.radius.chap import MsChapV2Success, chap_proof, mschap2_proof
from otpgate.radius.clients import ClientTable
from otpgate.radius.config import RadiusClient
from otpgate.radius.dedup import DuplicateCache, DuplicateKey, Pending
from otpgate.radius.packet import (
    ACCESS_ACCEPT,
    ACCESS_CHALLENGE,
    ACCESS_REJECT,
    ACCESS_REQUEST,
    MS_CHAP2_SUCCESS,
    MS_CHAP_ERROR,
    MS_MPPE_ENCRYPTION_POLICY,
    MS_MPPE_ENCRYPTION_TYPES,
    MS_MPPE_RECV_KEY,
    MS_MPPE_SEND_KEY,
    PROXY_STATE,
    REPLY_MESSAGE,
    SESSION_TIMEOUT,
    STATE,
    STATUS_SERVER,
    AttributeKey,
    Request,
    decode_request,
    decrypt_password,
    encode_reply,
    integer,
    salt_encrypt,
    text,
    verify_message_authenticator,
)
from otpgate.radius.ratelimit import RateLimiter
from otpgate.stats import RadiusCounters

log = Logger(namespace="otpgate.radius")

FRONT_END = "radius"
MPPE_ENCRYPTION_ALLOWED = 1
MPPE_TYPES_40_128 = 6  # what FreeRADIUS sends with require_strong = no
NOTE_INTERVAL = 300.0
"""A warning about one address and one kind of drop is logged at most this often."""

Address = tuple[str, int]
Send = Callable[[bytes, Address], None]


class GatewayLike(Protocol):
    """What the RADIUS front end needs of ``otpgate.service.Gateway``."""

    config: Config
    authenticator: Authenticator
    read_pool: ServerPool
    """Where new connections for users' password binds come from."""
    radius_counters: RadiusCounters
    """Counted here, read by /metrics."""

    async def check_password(self, dn: str, password: bytes) -> tuple[int, str]: ...


@dataclass(frozen=True)
class Outcome:
    code: int | None
    """ACCESS_ACCEPT, ACCESS_REJECT, ACCESS_CHALLENGE, or None for no reply."""
    attributes: tuple[tuple[AttributeKey, bytes], ...] = field(default=(), repr=False)


REJECT = Outcome(ACCESS_REJECT)
NO_REPLY = Outcome(None)


class AccessHandler:
    """One Access-Request's login, through the pipeline, to an Outcome (no packet I/O)."""

    def __init__(
        self,
        gateway: GatewayLike,
        challenges: ChallengeStore,
        clock: Any,
        check_password: PasswordCheck,
    ) -> None:
        self.gateway = gateway
        self.check_password = check_password
        self.config = gateway.config
        self.radius = gateway.config.radius
        self.authenticator = gateway.authenticator
        self.challenges = challenges
        self.clock = clock

    async def handle(
        self, request: Request, login: Login, client: RadiusClient, source: str
    ) -> Outcome:
        if isinstance(login, Pap):
            return await self._pap(request, login, client, source)
        if isinstance(login, Chap):
            return await self._chap(login, client, source)
        if isinstance(login, MsChapV2):
            return await self._mschapv2(request, login, client, source)
        return await self._refuse(login, client, source, login.why)

    @staticmethod
    def _channel(client: RadiusClient, front_end: str = FRONT_END) -> Channel:
        proofs = frozenset(
            kind
            for kind, allowed in (("chap", client.allow_chap), ("mschapv2", client.allow_mschapv2))
            if allowed
        )
        return Channel(front_end, name=client.name or str(client.network), proofs=proofs)

    async def _refuse(self, login: Login, client: RadiusClient, source: str, why: str) -> Outcome:
        """A request with nothing to log in with: the pipeline refuses and audits it."""
        nas = client.name or client.network
        await self.authenticator.login(
            Unusable(
                name=login.name,
                client=source,
                channel=self._channel(client),
                why=f"{why} (NAS {nas})",
            )
        )
        return REJECT

    async def _pap(
        self, request: Request, login: Pap, client: RadiusClient, source: str
    ) -> Outcome:
        try:
            secret = decrypt_password(
                login.hidden_password, client.secret, request.authenticator
            ).decode("utf-8")
        except (MalformedPacket, UnicodeDecodeError):
            return await self._refuse(login, client, source, "User-Password is not UTF-8 text")
        auth = self.authenticator
        channel = self._channel(client)
        if client.mode == "append":
            result = await auth.login(
                Appended(
                    name=login.name,
                    client=source,
                    channel=channel,
                    typed=secret,
                    retransmission=self._identity(request, client, source),
                ),
                self.check_password,
            )
            return self._counted(result)
        if client.mode == "otp-only":
            result = await auth.login(
                CodeOnly(
                    name=login.name,
                    client=source,
                    channel=channel,
                    code=secret,
                    retransmission=self._identity(request, client, source),
                )
            )
            return self._counted(result)
        # challenge mode
        now = self.clock.seconds()
        if login.state is not None:
            pending = self.challenges.take(login.state, login.name, source, now)
            if pending is None:
                return await self._refuse(login, client, source, "unknown, used or expired State")
            result = await auth.login(
                CodeOnly(name=pending.dn, client=source, channel=channel, code=secret)
            )
            if result.unavailable:  # an outage must not cost the user the State
                self.challenges.restore(login.state, pending, self.clock.seconds())
            return self._finish(result)
        first = await auth.login(
            PasswordStep(name=login.name, client=source, channel=channel, password=secret),
            self.check_password,
        )
        if first.unavailable:
            return self._unavailable()
        if not first.ok:
            return REJECT
        if not first.needs_otp:
            return Outcome(ACCESS_ACCEPT)
        if first.dn is None:  # needs_otp comes with the entry's DN; refuse rather than guess
            return REJECT
        state = self.challenges.issue(login.name, first.dn, source, self.clock.seconds())
        return Outcome(
            ACCESS_CHALLENGE,
            (
                (REPLY_MESSAGE, text(self.radius.challenge_message)),
                (STATE, state),
                (SESSION_TIMEOUT, integer(max(1, int(self.radius.challenge_timeout)))),
            ),
        )

    def _counted(self, result: AuthResult) -> Outcome:
        if result.ok and result.retransmission:
            self.gateway.radius_counters.failover_retransmissions += 1
        return self._finish(result)

    def _identity(self, request: Request, client: RadiusClient, source: str) -> bytes | None:
        """This exact request, for ``failover_replay_seconds``: the NAS address, Identifier
        and Request Authenticator (what an identical retransmission repeats), keyed with the
        NAS's shared secret; None when the option is off."""
        if self.radius.failover_replay_seconds <= 0:
            return None
        message = b"%s\x00%d\x00%s" % (source.encode(), request.id, request.authenticator)
        return hmac.digest(client.secret, b"otpgate radius request v1\x00" + message, "sha256")

    async def _chap(self, login: Chap, client: RadiusClient, source: str) -> Outcome:
        result = await self.authenticator.login(
            Proof(
                name=login.name,
                client=source,
                channel=self._channel(client, FRONT_END + "-chap"),
                kind="chap",
                check=chap_proof(login.chap_password, login.challenge),
            )
        )
        return self._finish(result)

    async def _mschapv2(
        self, request: Request, login: MsChapV2, client: RadiusClient, source: str
    ) -> Outcome:
        result = await self.authenticator.login(
            Proof(
                name=login.name,
                client=source,
                channel=self._channel(client, FRONT_END + "-mschapv2"),
                kind="mschapv2",
                check=mschap2_proof(login.raw_name, login.challenge, login.response),
            )
        )
        if result.unavailable:
            return self._unavailable()
        success = result.proof
        if not result.ok or not isinstance(success, MsChapV2Success):
            error = b"E=691 R=0 C=" + login.challenge.hex().upper().encode() + b" V=3 M=Denied"
            return Outcome(
                ACCESS_REJECT, ((MS_CHAP_ERROR, bytes((login.response.ident,)) + error),)
            )
        return Outcome(ACCESS_ACCEPT, self._mschapv2_attributes(request, client, success))

    @staticmethod
    def _mschapv2_attributes(
        request: Request, client: RadiusClient, success: MsChapV2Success
    ) -> tuple[tuple[AttributeKey, bytes], ...]:
        vector = request.authenticator
        return (
            (MS_CHAP2_SUCCESS, success.success),
            (MS_MPPE_RECV_KEY, salt_encrypt(success.recv_key, client.secret, vector)),
            (MS_MPPE_SEND_KEY, salt_encrypt(success.send_key, client.secret, vector)),
            (MS_MPPE_ENCRYPTION_POLICY, integer(MPPE_ENCRYPTION_ALLOWED)),
            (MS_MPPE_ENCRYPTION_TYPES, integer(MPPE_TYPES_40_128)),
        )

    def _unavailable(self) -> Outcome:
        return REJECT if self.radius.unavailable_reply == "reject" else NO_REPLY

    def _finish(self, result: AuthResult) -> Outcome:
        if result.unavailable:
            return self._unavailable()
        if not result.ok:
            return REJECT
        left = result.scratch_remaining
        if left is not None and left < self.config.otp.scratch_low_threshold:
            message = f"Only {left} scratch code{'s' if left != 1 else ''} left: print a new list"
            return Outcome(ACCESS_ACCEPT, ((REPLY_MESSAGE, text(message)),))
        return Outcome(ACCESS_ACCEPT)


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
        raw = encode_reply(request, outcome.code, outcome.attributes)
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
