"""The proxy's connection to the real directory, one per client connection.

Frames response PDUs and hands them to the client side raw, except answers
to the proxy's own requests.  Connects to the configured URLs in order
(failover); LDAPS or StartTLS are verified like every other connection of
otpgate's, and the connection is handed over only after the TLS handshake
has completed.  The StartTLS response must come alone: anything in the same
read was sent in clear text (someone on the path could append a forged
BindResponse), so the connection is aborted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer, protocol
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IHandshakeListener
from twisted.logger import Logger
from zope.interface import implementer

from otpgate import ber
from otpgate.directory.config import cleartext_ldap_problem
from otpgate.directory.connection import TlsSettings, no_delay
from otpgate.directory.ldapdata import SUCCESS, LdapUrl
from otpgate.errors import BerError, DirectoryError, DirectoryUnavailable

log = Logger()

MAX_RESPONSE_PDU = 64 * 1024 * 1024
STARTTLS_ID = 1


@implementer(IHandshakeListener)
class UpstreamProtocol(protocol.Protocol):
    # A TCP/TLS transport (write, startTLS, abortConnection, producer API); Twisted types
    # Protocol.transport only as Optional[ITransport].
    transport: Any

    def __init__(self) -> None:
        self._pdus = ber.PduBuffer()
        self.on_pdu: Callable[[bytes, ber.Header], None] = lambda pdu, header: None
        self.on_lost: Callable[[], None] = lambda: None
        self.ready: defer.Deferred[UpstreamProtocol] = defer.Deferred()
        self._starttls: defer.Deferred[int] | None = None
        self._awaiting_tls = False
        """StartTLS was answered and the TLS layer is not in place yet: nothing may be read."""
        self._handshake: defer.Deferred[None] | None = None
        self._handshake_done = False
        self.closed = False

    def connectionMade(self) -> None:
        no_delay(self.transport)
        self.ready.callback(self)

    def abort(self, why: str) -> None:
        """Fail closed at once: nothing more is read or believed from this connection."""
        log.warn("aborting the upstream connection: {why}", why=why)
        self.closed = True
        self._pdus.clear()
        self.transport.abortConnection()
        self._fail_setup(DirectoryUnavailable(why))

    def _fail_setup(self, error: DirectoryError) -> None:
        starttls, self._starttls = self._starttls, None
        if starttls is not None and not starttls.called:
            starttls.errback(error)
        handshake, self._handshake = self._handshake, None
        if handshake is not None and not handshake.called:
            handshake.errback(error)

    def dataReceived(self, data: bytes) -> None:
        if self.closed:
            return
        if self._awaiting_tls:
            self.abort("data in clear text after the StartTLS response")
            return
        self._pdus.feed(data)
        while not self.closed:
            try:
                item = self._pdus.next(MAX_RESPONSE_PDU)
                if item is None:
                    return
                pdu, header = item
                if self._starttls is not None:
                    self._starttls_answered(pdu, header)
                    return
            except BerError as exc:
                self.abort(f"malformed PDU from the directory ({exc})")
                return
            self.on_pdu(pdu, header)

    def _starttls_answered(self, pdu: bytes, header: ber.Header) -> None:
        if header.message_id != STARTTLS_ID or header.op_tag != ber.EXTENDED_RESPONSE:
            self.abort("the directory answered StartTLS with something else")
            return
        if self._pdus.buffered():
            # Sent in the same segment as the StartTLS response, hence in clear text.
            self.abort("bytes pipelined behind the StartTLS response")
            return
        code = ber.result_code(pdu, header)
        d, self._starttls = self._starttls, None
        self._awaiting_tls = True
        if d is not None and not d.called:
            d.callback(code)

    def handshakeCompleted(self) -> None:
        """IHandshakeListener: the TLS handshake (certificate verified) is done."""
        self._handshake_done = True
        handshake, self._handshake = self._handshake, None
        if handshake is not None and not handshake.called:
            handshake.callback(None)

    def tls_established(self) -> defer.Deferred[None]:
        if self._handshake_done:
            return defer.succeed(None)
        if self.closed:
            return defer.fail(DirectoryUnavailable("connection lost before the TLS handshake"))
        if self._handshake is None:
            self._handshake = defer.Deferred()
        return self._handshake

    def connectionLost(self, reason: Any = None) -> None:
        self.closed = True
        why = reason.getErrorMessage() if hasattr(reason, "getErrorMessage") else "closed"
        self._fail_setup(DirectoryUnavailable(f"connection lost during TLS setup: {why}"))
        self.on_lost()

    async def start_tls(self, options: Any) -> None:
        """StartTLS; returns once the verified TLS handshake has completed."""
        self._starttls = defer.Deferred()
        self.transport.write(ber.start_tls_request(STARTTLS_ID))
        code = await self._starttls
        if code != SUCCESS:
            raise DirectoryUnavailable(f"upstream refused StartTLS ({code})")
        self._awaiting_tls = False
        self.transport.startTLS(options)
        await self.tls_established()


class _Factory(protocol.Factory):
    protocol = UpstreamProtocol


async def _set_up(upstream: UpstreamProtocol, url: LdapUrl, tls: TlsSettings) -> None:
    if url.ldaps:
        await upstream.tls_established()
    elif tls.start_tls:
        await upstream.start_tls(tls.client_options(url.host))


async def connect_upstream(
    reactor: Any, urls: list[LdapUrl], tls: TlsSettings, timeout: float
) -> UpstreamProtocol:
    """A raw connection to the first URL that answers, TLS set up and verified."""
    errors = []
    for url in urls:
        problem = cleartext_ldap_problem(url.url, tls.start_tls)
        if problem is not None:
            errors.append(problem)
            continue
        endpoint: Any = HostnameEndpoint(reactor, url.host, url.port, timeout=timeout)
        if url.ldaps:
            endpoint = wrapClientTLS(tls.client_options(url.host), endpoint)
        upstream: UpstreamProtocol | None = None
        try:
            upstream = await endpoint.connect(_Factory())
            setup = defer.ensureDeferred(_set_up(upstream, url, tls))
            setup.addTimeout(timeout, reactor)
            await setup
            return upstream
        except Exception as exc:  # every failure of this URL: try the next one
            if upstream is not None and not upstream.closed:
                upstream.abort(f"TLS setup failed: {exc}")
            errors.append(f"{url.url}: {exc}")
    raise DirectoryUnavailable("no directory server answered: " + "; ".join(errors))
