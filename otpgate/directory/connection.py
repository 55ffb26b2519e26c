"""One LDAP connection of the gateway's own (service account, password checks).

Speaks LDAP through ``otpgate.ber`` rather than ldaptor's client: the gateway
sends a search and a modify for every OTP login, and ldaptor's object-per-
element BER took most of the CPU time (profiled with py-spy, bench/ldap_proxy.py).
Many operations may be outstanding on one connection (message ids).

TLS is always verified: ``optionsForClientTLS`` checks the certificate chain
and the host name against the configured CA file or the system trust store, and
nothing is sent or believed before the handshake has completed.  With StartTLS,
the StartTLS response must be the only thing the server sent: bytes that come
with it were not protected (anyone on the path could have appended a forged
BindResponse), so the connection is aborted.  Plain ``ldap://`` without
StartTLS is refused unless the host is loopback (``config.cleartext_ldap_problem``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from OpenSSL import SSL
from twisted.internet import defer, protocol, ssl
from twisted.internet import error as neterror
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IHandshakeListener, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from otpgate import ber
from otpgate.directory.config import cleartext_ldap_problem
from otpgate.directory.ldapdata import (
    INVALID_CREDENTIALS,
    NO_SUCH_OBJECT,
    SCOPE_SUBTREE,
    SUCCESS,
    LdapUrl,
    Modification,
    SearchEntry,
)
from otpgate.errors import BerError, DirectoryError, DirectoryUnavailable
from otpgate.netio import send
from otpgate.stats import DirectoryStats

log = Logger()

_LOST = (
    neterror.ConnectionClosed,
    neterror.ConnectError,
    SSL.Error,  # certificate verification failed (surfaces on the first operation)
)
MAX_RESPONSE_PDU = 64 * 1024 * 1024


@dataclass(frozen=True)
class TlsSettings:
    start_tls: bool = False
    ca_file: Path | None = None

    def client_options(self, host: str) -> Any:
        if self.ca_file is not None:
            trust = ssl.Certificate.loadPEM(self.ca_file.read_bytes())
            return ssl.optionsForClientTLS(host, trustRoot=trust)
        return ssl.optionsForClientTLS(host)


class OperationTimedOut(DirectoryUnavailable):
    """No answer within the connection's timeout."""


@dataclass(slots=True)
class _Operation:
    deferred: defer.Deferred[Any]
    entries: list[SearchEntry] | None = None
    """Collected entries of a search; None for single-response operations."""
    start_tls: bool = False
    """The StartTLS request: its answer must come alone, and nothing is read after it."""
    deadline: float = 0.0
    paged: bool = False
    """A search that asked for one page: answered with (entries, the next page's cookie)."""


def no_delay(transport: Any) -> None:
    """Turn Nagle's algorithm off: LDAP sends small PDUs and waits for their answers, so a
    request queued behind an unacknowledged one must not wait for the peer's delayed ACK.
    TLS transports (ProtocolWrapper) pass the call on to their TCP transport."""
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is not None:
        set_no_delay(True)


@implementer(IHandshakeListener)
class LdapClientProtocol(protocol.Protocol):
    # A TCP/TLS transport; Twisted types Protocol.transport only as Optional[ITransport].
    transport: Any

    def __init__(self) -> None:
        self._pdus = ber.PduBuffer()
        self._next_id = 0
        self._operations: dict[int, _Operation] = {}
        """Outstanding operations, oldest first (so the first has the nearest deadline)."""
        self.clock: IReactorTime | None = None
        self.timeout = 0.0
        """Set by LdapConnection: an operation unanswered after ``timeout`` seconds fails
        with OperationTimedOut.  One timer per connection, not one per operation (a
        ``callLater`` per operation measured ~25 µs of the gateway's CPU per login)."""
        self._timer: Any = None
        self.connected = 0
        self._awaiting_tls = False
        """StartTLS was answered, the TLS layer is not in place yet: nothing may be read."""
        self._handshake: defer.Deferred[None] | None = None
        self._handshake_done = False

    def connectionMade(self) -> None:
        self.connected = 1
        no_delay(self.transport)

    def connectionLost(self, reason: Any = None) -> None:
        self.connected = 0
        self._stop_timer()
        self._fail_all(DirectoryUnavailable("connection lost"), reason)

    def _stop_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _check_deadlines(self) -> None:
        """The timer: when the oldest operation is overdue the connection is dead: abort it
        and fail every operation on it at once (a polite close can hang for ever over TLS,
        waiting for a stalled server's close_notify); else wait for that deadline."""
        self._timer = None
        if not self._operations or self.clock is None:
            return
        mid, oldest = next(iter(self._operations.items()))
        left = oldest.deadline - self.clock.seconds()
        if left > 0:
            self._timer = self.clock.callLater(left, self._check_deadlines)
            return
        del self._operations[mid]
        self.connected = 0
        self._pdus.clear()
        self.transport.abortConnection()
        oldest.deferred.errback(OperationTimedOut(f"no answer in {self.timeout}s"))
        self._fail_all(
            DirectoryUnavailable(f"connection aborted: an operation had no answer in "
                                 f"{self.timeout}s")
        )

    def _fail_all(self, error: DirectoryUnavailable, reason: Any = None) -> None:
        operations, self._operations = self._operations, {}
        for op in operations.values():
            op.deferred.errback(error)
        handshake, self._handshake = self._handshake, None
        if handshake is not None and not handshake.called:
            why = reason.getErrorMessage() if hasattr(reason, "getErrorMessage") else error
            handshake.errback(DirectoryUnavailable(f"TLS handshake failed: {why}"))

    def _abort(self, why: str) -> None:
        """Fail closed at once: nothing more is read or believed from this connection."""
        log.warn("aborting the directory connection: {why}", why=why)
        self.connected = 0
        self._pdus.clear()
        self.transport.abortConnection()
        self._fail_all(DirectoryUnavailable(why))

    def handshakeCompleted(self) -> None:
        """IHandshakeListener: the TLS handshake (certificate verified) is done."""
        self._handshake_done = True
        handshake, self._handshake = self._handshake, None
        if handshake is not None and not handshake.called:
            handshake.callback(None)

    def tls_established(self) -> defer.Deferred[None]:
        """Fires once the TLS handshake has completed (LDAPS, or after start_tls_layer)."""
        if self._handshake_done:
            return defer.succeed(None)
        if not self.connected:
            return defer.fail(DirectoryUnavailable("connection lost before the TLS handshake"))
        if self._handshake is None:
            self._handshake = defer.Deferred()
        return self._handshake

    def start_tls_layer(self, options: Any) -> defer.Deferred[None]:
        """After a successful StartTLS response: switch to TLS; fires after the handshake."""
        self._awaiting_tls = False
        self.transport.startTLS(options)
        return self.tls_established()

    def request(
        self, build: Any, search: bool = False, start_tls: bool = False, paged: bool = False
    ) -> defer.Deferred[Any]:
        """Send ``build(message_id)``; the deferred fires with the decoded response."""
        if not self.connected:
            return defer.fail(DirectoryUnavailable("not connected"))
        self._next_id = self._next_id % 0x7FFFFFFF + 1
        mid = self._next_id
        op = _Operation(defer.Deferred(), [] if search else None, start_tls, paged=paged)
        if self.clock is not None and self.timeout > 0:
            op.deadline = self.clock.seconds() + self.timeout
            if self._timer is None:
                self._timer = self.clock.callLater(self.timeout, self._check_deadlines)
        self._operations[mid] = op
        send(self.transport, build(mid))
        return op.deferred

    def dataReceived(self, data: bytes) -> None:
        if not self.connected:
            return  # aborted: nothing more is believed
        if self._awaiting_tls:
            # Clear text after the StartTLS response, before the TLS layer: never believed.
            self._abort("data in clear text after the StartTLS response")
            return
        self._pdus.feed(data)
        while self.connected:
            try:
                item = self._pdus.next(MAX_RESPONSE_PDU)
                if item is None:
                    return
                pdu, header = item
                op = self._operations.get(header.message_id)
                if op is not None and op.start_tls:
                    if header.op_tag != ber.EXTENDED_RESPONSE:
                        self._abort("the answer to StartTLS is not an ExtendedResponse")
                        return
                    if self._pdus.buffered():
                        # Sent in the same segment as the StartTLS response, so sent in
                        # clear: someone on the path may have appended a forged answer.
                        self._abort("bytes pipelined behind the StartTLS response")
                        return
                    self._awaiting_tls = True
                self._handle(pdu, header)
            except BerError as exc:
                log.warn("malformed response from the directory ({err}); closing", err=exc)
                self._abort(f"malformed response: {exc}")
                return

    def _handle(self, pdu: bytes, header: ber.Header) -> None:
        op = self._operations.get(header.message_id)
        if op is None:
            return  # a notice of disconnection (id 0) or an answer nobody waits for any more
        if header.op_tag == ber.SEARCH_RESULT_ENTRY and op.entries is not None:
            name, attributes = ber.decode_search_entry(pdu, header)
            op.entries.append(SearchEntry(name.decode("utf-8", "replace"), attributes))
            return
        if header.op_tag in (ber.SEARCH_RESULT_REFERENCE, ber.INTERMEDIATE_RESPONSE):
            return  # OTP state lives on the server asked; references are not followed
        del self._operations[header.message_id]
        code, _matched, diagnostic = ber.decode_result(pdu, header)
        message = diagnostic.decode("utf-8", "replace")
        if op.paged:
            cookie = ber.paged_results_cookie(pdu, header)
            op.deferred.callback((code, message, (op.entries, cookie)))
            return
        op.deferred.callback((code, message, op.entries))


class LdapConnection:
    """A connected client with per-operation timeouts and plain results."""

    def __init__(
        self,
        client: LdapClientProtocol,
        url: LdapUrl,
        clock: IReactorTime,
        timeout: float,
        stats: DirectoryStats | None = None,
    ) -> None:
        self.client = client
        self.url = url
        self.clock = clock
        self.timeout = timeout
        client.clock, client.timeout = clock, timeout
        self.stats = stats if stats is not None else DirectoryStats()

    @property
    def connected(self) -> bool:
        return bool(self.client.connected)

    def close(self) -> None:
        """Close politely; no new operation is sent here from now on (over TLS the close
        waits for the server's close_notify: the deadline timer still fails what is left)."""
        if self.client.connected:
            self.client.transport.loseConnection()
            self.client.connected = 0

    async def _call(
        self,
        operation: str,
        build: Any,
        search: bool = False,
        start_tls: bool = False,
        paged: bool = False,
    ) -> tuple[int, str, Any]:
        start = time.monotonic()
        try:
            result: tuple[int, str, Any] = await self.client.request(
                build, search, start_tls, paged
            )
        except OperationTimedOut as exc:
            self.stats.error("timeout")
            self.close()
            raise DirectoryUnavailable(f"{self.url.url}: no answer in {self.timeout}s") from exc
        except _LOST as exc:
            self.stats.error("connection lost")
            raise DirectoryUnavailable(f"{self.url.url}: connection lost ({exc})") from exc
        except DirectoryUnavailable as exc:
            self.stats.error("connection lost")
            raise DirectoryUnavailable(f"{self.url.url}: {exc}") from exc
        self.stats.observe(operation, time.monotonic() - start)
        return result

    async def simple_bind(self, dn: str, password: bytes) -> tuple[int, str]:
        """Bind; returns (resultCode, diagnostic message).  Refuses an empty password."""
        if not password:
            # An empty password is an unauthenticated bind that "succeeds" (RFC 4513 §5.1.2).
            return INVALID_CREDENTIALS, "empty password refused"
        code, message, _ = await self._call(
            "bind", lambda mid: ber.bind_request(mid, dn.encode(), password)
        )
        return code, message

    async def search(
        self,
        base: str,
        filter_ber: bytes,
        attributes: Sequence[str],
        scope: int = SCOPE_SUBTREE,
        size_limit: int = 0,
    ) -> list[SearchEntry]:
        attrs = tuple(a.encode() for a in attributes)
        time_limit = int(self.timeout) + 1
        code, message, entries = await self._call(
            "search",
            lambda mid: ber.search_request(
                mid, base.encode(), scope, filter_ber, attrs, size_limit, time_limit
            ),
            search=True,
        )
        if code == NO_SUCH_OBJECT:
            return []
        if code != SUCCESS:
            raise DirectoryError(f"search under {base} failed: {code} {message}", code)
        found: list[SearchEntry] = entries
        return found

    async def search_page(
        self,
        base: str,
        filter_ber: bytes,
        attributes: Sequence[str],
        scope: int,
        page_size: int,
        cookie: bytes,
    ) -> tuple[list[SearchEntry], bytes]:
        """One page of a paged search (RFC 2696) and the cookie of the next (b"": done).
        The pages of one search must be asked for on the same connection."""
        attrs = tuple(a.encode() for a in attributes)
        control = ber.paged_results_control(page_size, cookie)
        code, message, (entries, next_cookie) = await self._call(
            "search",
            lambda mid: ber.search_request(
                mid, base.encode(), scope, filter_ber, attrs, 0, int(self.timeout) + 1, control
            ),
            search=True,
            paged=True,
        )
        if code == NO_SUCH_OBJECT:
            return [], b""
        if code != SUCCESS:
            raise DirectoryError(f"search under {base} failed: {code} {message}", code)
        return entries, next_cookie

    async def modify(self, dn: str, changes: Sequence[Modification]) -> tuple[int, str]:
        """One Modify operation (applied atomically by the server); returns (code, message)."""
        wire = [(c.op, c.attribute.encode(), c.values) for c in changes]
        code, message, _ = await self._call(
            "modify", lambda mid: ber.modify_request(mid, dn.encode(), wire)
        )
        return code, message

    async def add(self, dn: str, attributes: dict[str, tuple[bytes, ...]]) -> tuple[int, str]:
        wire = [(name.encode(), values) for name, values in attributes.items()]
        code, message, _ = await self._call(
            "add", lambda mid: ber.add_request(mid, dn.encode(), wire)
        )
        return code, message

    async def delete(self, dn: str) -> tuple[int, str]:
        code, message, _ = await self._call(
            "delete", lambda mid: ber.delete_request(mid, dn.encode())
        )
        return code, message

    async def start_tls(self, options: Any) -> None:
        """StartTLS, then wait for the verified handshake before anything else is sent."""
        code, message, _ = await self._call("starttls", ber.start_tls_request, start_tls=True)
        if code != SUCCESS:
            self.close()
            raise DirectoryError(f"{self.url.url}: StartTLS refused: {code} {message}", code)
        await self.handshake(self.client.start_tls_layer(options))

    async def handshake(self, established: defer.Deferred[None] | None = None) -> None:
        """Wait (at most ``timeout``) for the TLS handshake; fail closed if it does not end."""
        d = established if established is not None else self.client.tls_established()
        d.addTimeout(self.timeout, self.clock)
        try:
            await d
        except defer.TimeoutError as exc:
            self.close()
            raise DirectoryUnavailable(
                f"{self.url.url}: no TLS handshake in {self.timeout}s"
            ) from exc
        except DirectoryUnavailable as exc:
            self.stats.error("connection lost")
            raise DirectoryUnavailable(f"{self.url.url}: {exc}") from exc


class _ClientFactory(protocol.Factory):
    protocol = LdapClientProtocol


async def connect(
    reactor: Any,
    url: LdapUrl,
    tls: TlsSettings,
    timeout: float,
    stats: DirectoryStats | None = None,
) -> LdapConnection:
    """Open a connection (LDAPS, or LDAP with verified StartTLS when configured; plain
    LDAP only to a loopback host).  Returns after the TLS handshake has completed."""
    problem = cleartext_ldap_problem(url.url, tls.start_tls)
    if problem is not None:
        raise DirectoryError(problem)
    endpoint: Any = HostnameEndpoint(reactor, url.host, url.port, timeout=timeout)
    if url.ldaps:
        endpoint = wrapClientTLS(tls.client_options(url.host), endpoint)
    try:
        client = await endpoint.connect(_ClientFactory())
    except Exception as exc:
        if stats is not None:
            stats.error("connect")
        raise DirectoryUnavailable(f"{url.url}: cannot connect: {exc}") from exc
    conn = LdapConnection(client, url, reactor, timeout, stats)
    if url.ldaps:
        await conn.handshake()
    elif tls.start_tls:
        await conn.start_tls(tls.client_options(url.host))
    return conn
