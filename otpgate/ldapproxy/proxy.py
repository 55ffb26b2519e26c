"""The LDAP bind proxy: binds go through the OTP pipeline, everything else passes through.

Each client connection gets its own upstream connection.  PDUs other than
Bind, StartTLS and Unbind are forwarded as the raw bytes received, with the
client's message ids, so controls (paged results, ...), referrals, Abandon
and extended operations behave exactly as against the directory itself.

Message ids are checked, because the proxy sends requests of its own (the
password bind of the OTP pipeline, Who Am I? after a SASL bind) on the
client's upstream connection under the id of the client's BindRequest:

- every forwarded request that has a response is *outstanding* until its final
  response (BindResponse, SearchResultDone, ...) comes back; Abandon removes
  nothing (the server sends no more answers for an abandoned id, so that id
  stays taken for the life of the connection: clients do not reuse ids);
- a request whose id is 0 or outstanding is a protocol error (RFC 4511 §4.1.1):
  Notice of Disconnection and close;
- while a bind runs (the pipeline's or a forwarded one) nothing else is sent
  upstream (RFC 4511 §4.2.1): later requests wait, bounded by count
  (``max_queued_requests``) and by bytes, and the bind's answer is matched by
  id *and* type.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet import defer, protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from otpgate import ber
from otpgate.auth.requests import Appended, Channel, Sasl
from otpgate.auth.sasl import SASL_BIND_IN_PROGRESS
from otpgate.directory.connection import no_delay
from otpgate.directory.ldapdata import INVALID_CREDENTIALS, PROTOCOL_ERROR, SUCCESS, UNAVAILABLE
from otpgate.errors import BerError, DirectoryUnavailable
from otpgate.ldapproxy.upstream import UpstreamProtocol
from otpgate.netio import send

if TYPE_CHECKING:
    from otpgate.ldapproxy.factory import ProxyFactory

log = Logger()

OPERATIONS_ERROR = 1
CONFIDENTIALITY_REQUIRED = 13
INVALID = b"invalid credentials"
MAX_QUEUED_BYTES = 1024 * 1024  # requests held while upstream connects or a bind runs
MAX_OUTSTANDING = 10_000
"""Forwarded requests awaiting their answer (abandoned ones included) on one connection."""


@dataclass
class _OwnRequest:
    """A request the proxy itself sent upstream, under the id of the client's bind."""

    message_id: int
    response_tag: int
    deferred: defer.Deferred[tuple[bytes, ber.Header]]


class LdapProxyProtocol(protocol.Protocol):
    # A TCP/TLS transport (write, startTLS, abortConnection, producer API); Twisted types
    # Protocol.transport only as Optional[ITransport].
    transport: Any

    def __init__(self, factory: ProxyFactory, peer_host: str | None) -> None:
        self.factory = factory
        self.peer_host = peer_host
        """The client's address: the TCP peer, or the PROXY header's source behind a listed
        balancer (``ProxyFactory.buildProtocol``); limits, policy and audit all use it."""
        self._pdus = ber.PduBuffer()
        self._pending: deque[tuple[bytes, ber.Header]] = deque()
        self._pending_bytes = 0
        self.upstream: UpstreamProtocol | None = None
        self._upstream_failed = False
        self._busy = False  # a bind is running: hold later requests
        self._bound = False
        self._upstream_identity = False
        """The upstream connection is bound as someone (a bind of ours or a forwarded one
        succeeded there)."""
        self._refused_bind = False
        self._tls = False
        self._closing = False
        self._outstanding: set[int] = set()
        self._own: _OwnRequest | None = None
        self._idle: Any = None

    # -- connection ---------------------------------------------------------------------

    def connectionMade(self) -> None:
        no_delay(self.transport)
        self._tls = self.factory.is_tls_listener
        self._idle = self.factory.clock.callLater(
            self.factory.config.idle_timeout, self.timeoutConnection
        )
        d = defer.ensureDeferred(self.factory.connect_upstream())
        d.addCallbacks(self._upstream_ready, self._upstream_unreachable)

    def _upstream_ready(self, upstream: UpstreamProtocol) -> None:
        if not self.connected or self._closing:
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
        own, self._own = self._own, None
        if own is not None and not own.deferred.called:
            own.deferred.errback(DirectoryUnavailable("upstream connection lost"))
        self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self._closing = True
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
        self._abort("idle")

    def _abort(self, counter: str | None) -> None:
        """Drop the connection at once (and its upstream): nothing more is processed."""
        if counter and not self._closing:
            self.factory.count(counter)
        self._closing = True
        self._pending.clear()
        self._pdus.clear()
        self.transport.abortConnection()
        if self.upstream is not None and not self.upstream.closed:
            self.upstream.transport.loseConnection()

    def _close(self, counter: str, why: str) -> None:
        """Send what was written, then close this connection and its upstream."""
        self.factory.count(counter)
        log.warn("closing {peer}: {why}", peer=self.peer_host, why=why)
        self._closing = True
        self._pending.clear()
        self._pdus.clear()
        self.transport.loseConnection()
        if self.upstream is not None and not self.upstream.closed:
            self.upstream.transport.loseConnection()

    def _protocol_violation(self, why: str) -> None:
        """RFC 4511 §4.4.1: a Notice of Disconnection (protocolError), then close."""
        self._write(ber.notice_of_disconnection(PROTOCOL_ERROR, why.encode()))
        self._close("protocol_error", why)

    # -- client PDUs ------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self.resetTimeout()
        self._pdus.feed(data)
        while not self._closing:
            try:
                item = self._pdus.next(self.factory.pdu_limit(self._bound))
                if item is None:
                    return
                pdu, header = item
                start_tls = self._is_start_tls(pdu, header)
            except BerError as exc:
                log.warn("closing {peer}: {err}", peer=self.peer_host, err=exc)
                self._abort("malformed")
                return
            if start_tls:
                # Bytes pipelined after a StartTLS request were sent in clear text:
                # they must not be treated as protected, so they are dropped.
                if self._pdus.buffered():
                    self.factory.count("starttls_pipelined_dropped")
                self._pdus.clear()
                self._start_tls(header)
                return
            self._enqueue(pdu, header)

    def _enqueue(self, pdu: bytes, header: ber.Header) -> None:
        if (
            len(self._pending) >= self.factory.config.max_queued_requests
            or self._pending_bytes + len(pdu) > MAX_QUEUED_BYTES
        ):
            log.warn("closing {peer}: too many requests queued", peer=self.peer_host)
            self._abort("queue_full")
            return
        self._pending.append((pdu, header))
        self._pending_bytes += len(pdu)
        self._drain()

    def _drain(self) -> None:
        while self._pending and not self._busy and not self._closing:
            if self.upstream is None and not self._upstream_failed:
                return  # wait for the upstream connection
            pdu, header = self._pending.popleft()
            self._pending_bytes -= len(pdu)
            self._dispatch(pdu, header)

    def _dispatch(self, pdu: bytes, header: ber.Header) -> None:
        op = header.op_tag
        if op == ber.UNBIND_REQUEST:
            if self.upstream is not None:
                send(self.upstream.transport, pdu)
            self._closing = True
            self.transport.loseConnection()
            return
        if op == ber.ABANDON_REQUEST:
            # No answer; the abandoned id stays outstanding (see the module docstring).
            if self.upstream is not None:
                send(self.upstream.transport, pdu)
            return
        final = ber.FINAL_RESPONSE.get(op)
        if final is None:
            self._protocol_violation(f"0x{op:02x} is not an LDAP request")
            return
        mid = header.message_id
        if mid == 0 or mid in self._outstanding:
            self._protocol_violation(f"message id {mid} is in use by an outstanding request")
            return
        if op == ber.BIND_REQUEST:
            self._busy = True
            d = defer.ensureDeferred(self._bind_and_reset(pdu, header))
            d.addBoth(self._bind_done)
            return
        if self.upstream is None:  # unreachable: answer what needs an answer, fail closed
            self._answer(mid, final, UNAVAILABLE, b"directory unavailable")
            return
        if len(self._outstanding) >= MAX_OUTSTANDING:
            log.warn("closing {peer}: too many outstanding requests", peer=self.peer_host)
            self._abort("too_many_outstanding")
            return
        self._outstanding.add(mid)
        send(self.upstream.transport, pdu)

    def _from_upstream(self, pdu: bytes, header: ber.Header) -> None:
        self.resetTimeout()
        own = self._own
        if own is not None and header.message_id == own.message_id:
            self._own = None
            if header.op_tag != own.response_tag:
                # Only one PDU of the expected kind answers the proxy's own request.
                log.warn(
                    "closing {peer}: the directory answered the proxy's request with 0x{tag:02x}",
                    peer=self.peer_host,
                    tag=header.op_tag,
                )
                self._abort("upstream_protocol_error")
                own.deferred.errback(DirectoryUnavailable("unexpected answer from the directory"))
                return
            own.deferred.callback((pdu, header))
            return
        if header.op_tag in ber.FINAL_RESPONSES:
            self._outstanding.discard(header.message_id)
        self._write(pdu)

    def _write(self, data: bytes) -> None:
        if self.connected and not self._closing:
            send(self.transport, data)

    def _answer(self, message_id: int, op_tag: int, code: int, diagnostic: bytes = b"") -> None:
        if op_tag == ber.BIND_RESPONSE and code != SUCCESS:
            self._refused_bind = True
        self._write(ber.message(message_id, ber.ldap_result(op_tag, code, diagnostic)))

    async def _own_request(
        self, message_id: int, pdu: bytes, response_tag: int
    ) -> tuple[bytes, ber.Header]:
        """Send ``pdu`` upstream and wait for its one answer (matched by id and type)."""
        if self.upstream is None or self.upstream.closed or self._closing:
            raise DirectoryUnavailable("no upstream connection")
        if self._own is not None:  # one at a time: a bind holds everything else
            raise DirectoryUnavailable("the proxy's previous request is still unanswered")
        d: defer.Deferred[tuple[bytes, ber.Header]] = defer.Deferred()
        self._own = _OwnRequest(message_id, response_tag, d)
        send(self.upstream.transport, pdu)
        return await d

    # -- StartTLS ---------------------------------------------------------------------------

    def _is_start_tls(self, pdu: bytes, header: ber.Header) -> bool:
        return (
            header.op_tag == ber.EXTENDED_REQUEST
            and ber.extended_request_name(pdu, header) == ber.START_TLS_OID
        )

    def _start_tls(self, header: ber.Header) -> None:
        options = self.factory.tls_options
        if options is None or self._tls or self._pending or self._busy or self._outstanding:
            code = UNAVAILABLE if options is None else OPERATIONS_ERROR
            self._write(ber.extended_response(header.message_id, code, None))
            return
        self._write(ber.extended_response(header.message_id, SUCCESS, ber.START_TLS_OID))
        self.transport.startTLS(options)
        self._tls = True

    # -- binds -----------------------------------------------------------------------------

    def _bind_done(self, result: Any) -> None:
        self._busy = False
        if isinstance(result, Failure):
            if result.check(DirectoryUnavailable):  # the upstream connection went away
                log.warn("closing {peer}: {err}", peer=self.peer_host, err=result.value)
            else:
                log.failure("bind handling failed", result)
            self._abort("bind_failed")
            return
        self._drain()

    def _tls_required(self, mid: int) -> None:
        """RFC 4513 §5.1.2/§6.3.1: credentials on a plain connection where TLS is required."""
        self.factory.count("bind_without_tls")
        self._answer(
            mid,
            ber.BIND_RESPONSE,
            CONFIDENTIALITY_REQUIRED,
            b"TLS is required for binds: use StartTLS or LDAPS",
        )

    def _channel(self) -> Channel:
        channel: Channel = self.factory.channels[self._tls]
        return channel

    async def _bind_and_reset(self, pdu: bytes, header: ber.Header) -> None:
        """A bind, then, if the proxy refused it on a connection bound upstream as someone,
        an anonymous bind upstream: after a failed bind the connection is anonymous (RFC
        4511 §4.2.1), and the next request must not run as the previous identity.  Later
        requests wait for it (the connection is busy)."""
        self._refused_bind = False
        await self._bind(pdu, header)
        if self._refused_bind and self._upstream_identity and not self._closing:
            await self._anonymous_upstream(header.message_id)

    async def _anonymous_upstream(self, mid: int) -> bool:
        """Bind the upstream connection anonymously (False: refused, the connection closed)."""
        answer, answer_header = await self._own_request(
            mid, ber.bind_request(mid, b"", b""), ber.BIND_RESPONSE
        )
        if ber.result_code(answer, answer_header) != SUCCESS:
            self._close("identity_reset_failed", "the upstream refused an anonymous bind")
            return False
        self._upstream_identity = False
        return True

    async def _bind(self, pdu: bytes, header: ber.Header) -> None:
        mid = header.message_id
        try:
            request = ber.parse_bind(pdu, header)
        except BerError:
            self.factory.count("malformed_bind")
            self._answer(mid, ber.BIND_RESPONSE, PROTOCOL_ERROR, b"malformed bind")
            return
        self._bound = False
        if request.version != 3:
            self._answer(mid, ber.BIND_RESPONSE, PROTOCOL_ERROR, b"only LDAPv3 is supported")
            return
        name = request.name.decode("utf-8", "replace")
        if request.simple is None:
            await self._sasl_bind(pdu, mid, name, request.sasl_mechanism or b"")
            return
        if not name and not request.simple:
            answer = await self._forward_bind(pdu, mid)  # anonymous: the directory's business
            if answer is not None:
                self._upstream_identity = False
                self._write(answer[0])
            return
        try:
            secret = request.simple.decode("utf-8")
        except UnicodeDecodeError:
            secret = ""  # refused by the pipeline as a missing password, never forwarded

        bound_here: list[bool] = []

        async def check_password(dn: str, password: bytes) -> tuple[int, str]:
            bound_here.append(True)
            return await self._upstream_bind(mid, dn.encode(), password)

        # A name with an empty password is an unauthenticated bind (RFC 4513 §5.1.2): the
        # pipeline refuses it, and it is never forwarded.
        login = Appended(
            name=name, client=self.peer_host, channel=self._channel(), typed=secret, rebind=True
        )
        result = await self.factory.gateway.authenticator.login(login, check_password)
        # Accepted with nothing bound upstream as the user (an app password): the connection
        # must not go on as whoever bound on it before.  Her requests run anonymously
        # (docs/APP-PASSWORDS.md).
        reset = result.ok and not bound_here and self._upstream_identity and not self._closing
        if reset and not await self._anonymous_upstream(mid):
            return
        if result.ok:
            self._bound = True
            self._answer(mid, ber.BIND_RESPONSE, SUCCESS)
        elif result.tls_required:
            self._tls_required(mid)
        elif result.unavailable:
            self._answer(mid, ber.BIND_RESPONSE, UNAVAILABLE, b"directory unavailable")
        elif result.challenge:  # a code was sent: say where, the user binds again with it
            self._answer(mid, ber.BIND_RESPONSE, INVALID_CREDENTIALS, result.challenge.encode())
        else:
            self._answer(mid, ber.BIND_RESPONSE, INVALID_CREDENTIALS, INVALID)

    async def _forward_bind(self, pdu: bytes, mid: int) -> tuple[bytes, ber.Header] | None:
        """Forward the client's bind as is and wait for its answer (None: answered 52)."""
        if self.upstream is None:
            self._answer(mid, ber.BIND_RESPONSE, UNAVAILABLE, b"directory unavailable")
            return None
        return await self._own_request(mid, pdu, ber.BIND_RESPONSE)

    async def _upstream_bind(self, mid: int, dn: bytes, password: bytes) -> tuple[int, str]:
        pdu, header = await self._own_request(
            mid, ber.bind_request(mid, dn, password), ber.BIND_RESPONSE
        )
        code = ber.result_code(pdu, header)
        self._upstream_identity = code == SUCCESS  # a failed bind leaves it anonymous
        return code, ""

    # -- SASL --------------------------------------------------------------------------------

    async def _sasl_bind(self, pdu: bytes, mid: int, name: str, mechanism: bytes) -> None:
        """The pipeline decides (``auth/sasl.py``); here only the two protocol steps: the
        client's own bind forwarded, and Who Am I? on the same upstream connection."""
        response: list[bytes] = []

        async def forward() -> int:
            if self.upstream is None:
                raise DirectoryUnavailable("no upstream connection")
            pdu_back, header = await self._own_request(mid, pdu, ber.BIND_RESPONSE)
            response.append(pdu_back)
            return ber.result_code(pdu_back, header)

        async def who_am_i() -> tuple[int, bytes]:
            try:
                answer, header = await self._own_request(
                    mid, ber.who_am_i_request(mid), ber.EXTENDED_RESPONSE
                )
                result = ber.decode_extended_response(answer, header)
            except BerError:
                return PROTOCOL_ERROR, b""
            return result.code, result.value or b""

        login = Sasl(
            name=name,
            client=self.peer_host,
            channel=self._channel(),
            mechanism=mechanism.decode("ascii", "replace"),
            forward=forward,
            who_am_i=who_am_i,
        )
        done = await self.factory.gateway.authenticator.login(login)
        in_progress = done.directory_code == SASL_BIND_IN_PROGRESS
        if done.ok:
            self.factory.count("sasl_accepted")
            self._bound = self._upstream_identity = True
            self._write(response[0])
        elif done.tls_required:
            self._tls_required(mid)
        elif in_progress or (response and not done.disconnect):
            self._write(response[0])  # a challenge, or the directory's own refusal
        elif done.unavailable:
            self._answer(mid, ber.BIND_RESPONSE, UNAVAILABLE, b"directory unavailable")
        else:
            self.factory.count("sasl_refused")
            self._answer(mid, ber.BIND_RESPONSE, INVALID_CREDENTIALS, INVALID)
            if done.disconnect:  # bound upstream as someone else, or nobody knows whom
                self._close("sasl_identity_mismatch", f"SASL bind named {name!r}: refused")
