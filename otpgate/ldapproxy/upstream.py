"""The proxy's connection to the real directory, one per client connection.

Frames response PDUs and hands them to the client side raw, except answers
to the proxy's own bind requests.  Connects to the configured URLs in
order (failover); LDAPS or StartTLS are verified like every other
connection of otpgate's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer, protocol
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.logger import Logger

from otpgate import ber
from otpgate.directory.connection import TlsSettings, no_delay
from otpgate.directory.ldapdata import SUCCESS, DirectoryUnavailable, LdapUrl

log = Logger()

MAX_RESPONSE_PDU = 64 * 1024 * 1024
STARTTLS_ID = 1


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
        self.closed = False

    def connectionMade(self) -> None:
        no_delay(self.transport)
        self.ready.callback(self)

    def dataReceived(self, data: bytes) -> None:
        self._pdus.feed(data)
        while True:
            try:
                item = self._pdus.next(MAX_RESPONSE_PDU)
                if item is None:
                    return
                pdu, header = item
            except ber.BerError as exc:
                log.warn("malformed PDU from the directory ({err}); closing", err=exc)
                self.transport.loseConnection()
                return
            if self._starttls is not None and header.message_id == STARTTLS_ID:
                d, self._starttls = self._starttls, None
                d.callback(ber.result_code(pdu, header))
                continue
            self.on_pdu(pdu, header)

    def connectionLost(self, reason: Any = None) -> None:
        self.closed = True
        if self._starttls is not None:
            self._starttls.errback(DirectoryUnavailable("connection lost during StartTLS"))
            self._starttls = None
        self.on_lost()

    async def start_tls(self, options: Any) -> None:
        self._starttls = defer.Deferred()
        self.transport.write(ber.start_tls_request(STARTTLS_ID))
        code = await self._starttls
        if code != SUCCESS:
            raise DirectoryUnavailable(f"upstream refused StartTLS ({code})")
        self.transport.startTLS(options)


class _Factory(protocol.Factory):
    protocol = UpstreamProtocol


async def connect_upstream(
    reactor: Any, urls: list[LdapUrl], tls: TlsSettings, timeout: float
) -> UpstreamProtocol:
    """A raw connection to the first URL that answers, TLS set up and verified."""
    errors = []
    for url in urls:
        endpoint: Any = HostnameEndpoint(reactor, url.host, url.port, timeout=timeout)
        if url.ldaps:
            endpoint = wrapClientTLS(tls.client_options(url.host), endpoint)
        try:
            upstream: UpstreamProtocol = await endpoint.connect(_Factory())
            if tls.start_tls and not url.ldaps:
                await upstream.start_tls(tls.client_options(url.host))
            return upstream
        except Exception as exc:
            errors.append(f"{url.url}: {exc}")
    raise DirectoryUnavailable("no directory server answered: " + "; ".join(errors))
