"""The LDAP bind proxy: binds go through the OTP pipeline, everything else passes through.

Each client connection gets its own upstream connection.  PDUs other than
Bind, StartTLS and Unbind are forwarded as the raw bytes received, with the
client's message ids, so controls (paged results, ...), referrals, Abandon
and extended operations behave exactly as against the directory itself.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from twisted.internet import defer, protocol
from twisted.logger import Logger

from otpgate import ber
from otpgate.auth.pipeline import AuthRequest
from otpgate.directory.connection import no_delay
from otpgate.directory.ldapdata import (
    INVALID_CREDENTIALS,
    PROTOCOL_ERROR,
    SUCCESS,
    UNAVAILABLE,
    DirectoryUnavailable,
)
from otpgate.ldapproxy.upstream import UpstreamProtocol

if TYPE_CHECKING:
    from otpgate.ldapproxy.factory import ProxyFactory

log = Logger()

OPERATIONS_ERROR = 1
INVALID = b"invalid credentials"
MAX_QUEUED_BYTES = 1024 * 1024  # requests held while upstream connects or a bind runs


class LdapProxyProtocol(protocol.Protocol):
    # A TCP/TLS transport (write, startTLS, abortConnection, producer API); Twisted types
    # Protocol.transport only as Optional[ITransport].
    transport: Any

    def __init__(self, factory: ProxyFactory) -> None:
        self.factory = factory
        self._pdus = ber.PduBuffer()
        self._pending: deque[tuple[bytes, ber.Header]] = deque()
        self._pending_bytes = 0
        self.upstream: UpstreamProtocol | None = None
        self._upstream_failed = False
        self._busy = False  # a bind is being verified: hold later requests
        self._bound = False
        self._tls = False
        self._own_binds: dict[int, defer.Deferred[tuple[int, bytes]]] = {}
        self.peer_host: str | None = None
        self._idle: Any = None

    # -- connection ---------------------------------------------------------------------

    def connectionMade(self) -> None:
        no_delay(self.transport)
        peer = self.transport.getPeer()
        self.peer_host = getattr(peer, "host", None)
        self._tls = self.factory.is_tls_listener
        self._idle = self.factory.clock.callLater(
            self.factory.config.idle_timeout, self.timeoutConnection
        )
        d = defer.ensureDeferred(self.factory.connect_upstream())
        d.addCallbacks(self._upstream_ready, self._upstream_unreachable)

    def _upstream_ready(self, upstream: UpstreamProtocol) -> None:
        if not self.connected:
            upstream.transport.loseConnection()
            return
        self.upstream = upstream
        upstream.on_pdu = self._from_upstream
        upstream.on_lost = self._upstream_lost
        # Backpressure both ways: a slow reader pauses the other side instead of queueing.
        upstream.transport.registerProducer(self.transport, True)
        self.transport.registerProducer(upstream.transport, True)
        self._drain()

    def _upstream_unreachable(self, failure: Any) -> None:
        log.warn("upstream directory unreachable: {err}", err=failure.getErrorMessage())
        self._upstream_failed = True
        self._drain()

    def _upstream_lost(self) -> None:
        for d in self._own_binds.values():
            d.errback(DirectoryUnavailable("upstream connection lost"))
        self._own_binds.clear()
        self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self.factory.forget(self)
        if self.upstream is not None and not self.upstream.closed:
            self.upstream.transport.loseConnection()

    def resetTimeout(self) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.reset(self.factory.config.idle_timeout)

    def timeoutConnection(self) -> None:
        log.info("idle client {peer} disconnected", peer=self.peer_host)
        self.transport.abortConnection()

    # -- client PDUs ------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        self._pdus.feed(data)
        while True:
            try:
                item = self._pdus.next(self.factory.pdu_limit(self._bound))
                if item is None:
                    return
                pdu, header = item
            except ber.BerError as exc:
                self.factory.count("malformed")
                log.warn("closing {peer}: {err}", peer=self.peer_host, err=exc)
                self.transport.abortConnection()
                return
            if self._is_start_tls(pdu, header):
                # Bytes pipelined after a StartTLS request were sent in clear text:
                # they must not be treated as protected, so they are dropped.
                self._pdus.clear()
                self._start_tls(header)
                return
            self._enqueue(pdu, header)

    def _enqueue(self, pdu: bytes, header: ber.Header) -> None:
        self._pending.append((pdu, header))
        self._pending_bytes += len(pdu)
        if self._pending_bytes > MAX_QUEUED_BYTES:
            log.warn("closing {peer}: too many requests queued", peer=self.peer_host)
            self.transport.abortConnection()
            return
        self._drain()

    def _drain(self) -> None:
        while self._pending and not self._busy:
            if self.upstream is None and not self._upstream_failed:
                return  # wait for the upstream connection
            pdu, header = self._pending.popleft()
            self._pending_bytes -= len(pdu)
            self._dispatch(pdu, header)

    def _dispatch(self, pdu: bytes, header: ber.Header) -> None:
        if header.op_tag == ber.BIND_REQUEST:
            self._busy = True
            d = defer.ensureDeferred(self._bind(pdu, header))
            d.addBoth(self._bind_done)
            return
        if header.op_tag == ber.UNBIND_REQUEST:
            if self.upstream is not None:
                self.upstream.transport.write(pdu)
            self.transport.loseConnection()
            return
        if self.upstream is None:  # unreachable: answer what needs an answer, fail closed
            final = ber.FINAL_RESPONSE.get(header.op_tag)
            if final is not None:
                self._answer(header.message_id, final, UNAVAILABLE, b"directory unavailable")
            return
        self.upstream.transport.write(pdu)

    def _from_upstream(self, pdu: bytes, header: ber.Header) -> None:
        self.resetTimeout()
        own = self._own_binds.pop(header.message_id, None)
        if own is not None and header.op_tag == ber.BIND_RESPONSE:
            own.callback((ber.result_code(pdu, header), pdu))
            return
        self.transport.write(pdu)

    def _answer(self, message_id: int, op_tag: int, code: int, diagnostic: bytes = b"") -> None:
        if self.connected:
            self.transport.write(ber.message(message_id, ber.ldap_result(op_tag, code, diagnostic)))

    # -- StartTLS ---------------------------------------------------------------------------

    def _is_start_tls(self, pdu: bytes, header: ber.Header) -> bool:
        return (
            header.op_tag == ber.EXTENDED_REQUEST
            and ber.extended_request_name(pdu, header) == ber.START_TLS_OID
        )

    def _start_tls(self, header: ber.Header) -> None:
        options = self.factory.tls_options
        if options is None or self._tls or self._pending or self._busy:
            code = UNAVAILABLE if options is None else OPERATIONS_ERROR
            self.transport.write(ber.extended_response(header.message_id, code, None))
            return
        self.transport.write(ber.extended_response(header.message_id, SUCCESS, ber.START_TLS_OID))
        self.transport.startTLS(options)
        self._tls = True

    # -- binds -----------------------------------------------------------------------------

    def _bind_done(self, result: Any) -> None:
        self._busy = False
        if isinstance(result, Exception) or hasattr(result, "getErrorMessage"):
            log.failure("bind handling failed", result)
            self.transport.abortConnection()
            return
        self._drain()

    async def _bind(self, pdu: bytes, header: ber.Header) -> None:
        mid = header.message_id
        try:
            request = ber.parse_bind(pdu, header)
        except ber.BerError:
            self._answer(mid, ber.BIND_RESPONSE, PROTOCOL_ERROR, b"malformed bind")
            return
        self._bound = False
        if request.version != 3:
            self._answer(mid, ber.BIND_RESPONSE, PROTOCOL_ERROR, b"only LDAPv3 is supported")
            return
        name = request.name.decode("utf-8", "replace")
        if request.simple is None:  # SASL: only for exempt accounts, when allowed
            policy = self.factory.gateway.authenticator.policy
            if policy.config.allow_sasl_for_exempt and name and policy.is_exempt(name):
                self._forward_bind(pdu)
                return
            self._answer(mid, ber.BIND_RESPONSE, INVALID_CREDENTIALS, INVALID)
            return
        if not name and not request.simple:
            self._forward_bind(pdu)  # anonymous: the directory's own business
            return
        if not name or not request.simple:
            # A name with an empty password is an unauthenticated bind: never forwarded.
            self._answer(mid, ber.BIND_RESPONSE, INVALID_CREDENTIALS, INVALID)
            return
        try:
            secret = request.simple.decode("utf-8")
        except UnicodeDecodeError:
            self._answer(mid, ber.BIND_RESPONSE, INVALID_CREDENTIALS, INVALID)
            return

        async def check_password(dn: str, password: bytes) -> tuple[int, str]:
            return await self._upstream_bind(mid, dn.encode(), password)

        cache = self.factory.bind_cache
        now = self.factory.clock.seconds()
        cached = cache.lookup(name, self.peer_host, secret, now) if cache else None
        if cached is not None:
            code, _ = await check_password(cached.dn, secret[: cached.password_length].encode())
            if code == SUCCESS:
                self.factory.gateway.audit.record(
                    outcome="accept",
                    front_end="ldap",
                    user=name,
                    dn=cached.dn,
                    client=self.peer_host,
                    token=None,
                    reason="bind cache",
                )
                self._bound = True
                self._answer(mid, ber.BIND_RESPONSE, SUCCESS)
                return
            cache.forget(name, self.peer_host)
        result = await self.factory.gateway.authenticator.authenticate(
            AuthRequest(name, secret, self.peer_host, "ldap"), check_password
        )
        if cache and result.ok and result.dn and result.password_length is not None:
            cache.remember(name, self.peer_host, secret, result.password_length, result.dn, now)
        if result.ok:
            self._bound = True
            self._answer(mid, ber.BIND_RESPONSE, SUCCESS)
        elif result.unavailable:
            self._answer(mid, ber.BIND_RESPONSE, UNAVAILABLE, b"directory unavailable")
        else:
            self._answer(mid, ber.BIND_RESPONSE, INVALID_CREDENTIALS, INVALID)

    def _forward_bind(self, pdu: bytes) -> None:
        if self.upstream is None:
            header = ber.parse_header(pdu)
            self._answer(
                header.message_id, ber.BIND_RESPONSE, UNAVAILABLE, b"directory unavailable"
            )
            return
        self.upstream.transport.write(pdu)

    async def _upstream_bind(self, mid: int, dn: bytes, password: bytes) -> tuple[int, str]:
        if self.upstream is None or self.upstream.closed:
            raise DirectoryUnavailable("no upstream connection")
        d: defer.Deferred[tuple[int, bytes]] = defer.Deferred()
        self._own_binds[mid] = d
        self.upstream.transport.write(ber.bind_request(mid, dn, password))
        code, _response = await d
        return code, ""
