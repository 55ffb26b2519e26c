"""The PROXY protocol (v1 and v2) in front of the LDAP proxy, for a load balancer.

A TCP load balancer (HAProxy ``send-proxy-v2``) opens its own connection to the gateway, so
the gateway's peer is the balancer; the balancer writes a PROXY header first, naming the
client it took the connection from.  Trusted networks, per-client limits and the audit
trail depend on that address, so the header is believed only from the balancers listed in
``[ldap_proxy] proxy_protocol_from``, and the rules fail closed:

- a listed peer MUST start with a complete, valid v1 or v2 header, within ``MAX_HEADER``
  bytes and ``HEADER_TIMEOUT`` seconds; anything else closes the connection;
- any other peer that starts with a PROXY signature is refused (nobody else may name an
  address); its other connections are served as they are;
- the connection's own protocol (the LDAP proxy, TLS for an ``ssl:`` listener) is built only
  after the header, with the header's source address: one address for limits, policy and
  audit (``ProxyFactory.buildProtocol``).  A LOCAL (v2) or UNKNOWN (v1) header is the
  balancer's own connection (a health check) and keeps the balancer's address.

Twisted's ``twisted.protocols.haproxy`` is not used: its wrapper starts the wrapped protocol
before the header arrives (the LDAP proxy would see the balancer's address), trusts every
peer, has no timeout, needs the first read to hold 8 or 16 bytes, and its parsers accept
addresses they do not check (docs/DECISIONS.md).  ``parse_header`` here is small and strict.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import protocol
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.logger import Logger
from twisted.protocols import policies
from zope.interface import directlyProvides, providedBy

from otpgate.configfile import Network
from otpgate.errors import FormatError
from otpgate.netio import send

log = Logger()

V1_PREFIX = b"PROXY "
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX = 107
"""The longest v1 line, CRLF included (the specification's own bound)."""
MAX_HEADER = 1024
"""A v2 header with more TLVs than this is refused (HAProxy's send-proxy-v2 sends 28 bytes
for IPv4, 52 for IPv6, plus a few TLVs when configured to)."""
HEADER_TIMEOUT = 5.0
"""Seconds a listed balancer has to send the whole header (HAProxy sends it at once)."""
_FIRST_BYTES = (V1_PREFIX[:1], V2_SIGNATURE[:1])


class ProxyHeaderError(FormatError):
    """The bytes are not a valid PROXY header."""


@dataclass(frozen=True)
class ProxyHeader:
    size: int
    """Bytes of the header (what follows is the client's own stream)."""
    source: tuple[str, int] | None
    """The client's address and port; None for LOCAL / UNKNOWN (the balancer itself)."""


def _address(text: str, version: int) -> str:
    if "%" in text:  # an IPv6 zone id: one address under any number of names
        raise ProxyHeaderError(f"{text[:50]!r} carries a zone id")
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyHeaderError(f"{text[:50]!r} is not an IP address") from None
    if address.version != version:
        raise ProxyHeaderError(f"{text!r} is not an IPv{version} address")
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def _port(text: str) -> int:
    if not text.isdigit() or len(text) > 5 or int(text) > 65535 or text != str(int(text)):
        raise ProxyHeaderError(f"{text[:10]!r} is not a port")
    return int(text)


def _v1(buffer: bytes) -> ProxyHeader | None:
    end = buffer.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(buffer) >= V1_MAX:
            raise ProxyHeaderError(f"v1 header longer than {V1_MAX} bytes")
        return None
    try:
        fields = buffer[:end].decode("ascii").split(" ")
    except UnicodeDecodeError:
        raise ProxyHeaderError("v1 header is not ASCII") from None
    size = end + 2
    if len(fields) >= 2 and fields[1] == "UNKNOWN":
        return ProxyHeader(size, None)  # the balancer's own connection; the rest is ignored
    if len(fields) != 6 or fields[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError("v1 header is not 'PROXY TCP4|TCP6 SRC DST SPORT DPORT'")
    version = 4 if fields[1] == "TCP4" else 6
    source = _address(fields[2], version)
    _address(fields[3], version)
    port = _port(fields[4])
    _port(fields[5])
    return ProxyHeader(size, (source, port))


def _v2(buffer: bytes) -> ProxyHeader | None:
    if len(buffer) < 16:
        return None
    version_command, family, length = buffer[12], buffer[13], struct.unpack("!H", buffer[14:16])[0]
    size = 16 + length
    if version_command >> 4 != 2 or version_command & 0x0F > 1:
        raise ProxyHeaderError(f"v2 version/command byte 0x{version_command:02x}")
    if size > MAX_HEADER:
        raise ProxyHeaderError(f"v2 header of {size} bytes (at most {MAX_HEADER})")
    if len(buffer) < size:
        return None
    if version_command & 0x0F == 0 or family == 0x00:  # LOCAL, or PROXY with UNSPEC
        return ProxyHeader(size, None)
    if family == 0x11:  # TCP over IPv4
        if length < 12:
            raise ProxyHeaderError("v2 TCP4 header too short for its addresses")
        source = str(ipaddress.IPv4Address(buffer[16:20]))
        return ProxyHeader(size, (source, struct.unpack("!H", buffer[24:26])[0]))
    if family == 0x21:  # TCP over IPv6
        if length < 36:
            raise ProxyHeaderError("v2 TCP6 header too short for its addresses")
        source = _address(str(ipaddress.IPv6Address(buffer[16:32])), 6)
        return ProxyHeader(size, (source, struct.unpack("!H", buffer[48:50])[0]))
    raise ProxyHeaderError(f"v2 family/protocol 0x{family:02x} is not TCP")


def parse_header(buffer: bytes) -> ProxyHeader | None:
    """The header at the start of ``buffer``; None while more bytes are needed; raises
    ProxyHeaderError as soon as the bytes cannot become a valid header."""
    for prefix, parse in ((V1_PREFIX, _v1), (V2_SIGNATURE, _v2)):
        head = buffer[: len(prefix)]
        if prefix.startswith(head):
            return parse(buffer) if len(head) == len(prefix) else None
    raise ProxyHeaderError("no PROXY protocol signature")


@dataclass(frozen=True)
class NoClientAddress:
    """The client of a LOCAL / UNKNOWN header: HAProxy's own health check, or a client it
    could not name (a unix-socket or abns@ frontend).  Its ``host`` ("local:" + the
    balancer's address) is no IP address, so it matches no trusted network and is its own
    per-client key; with the balancer's address, a password alone would pass wherever the
    balancer's address is trusted."""

    host: str
    port: int = 0
    type: str = "TCP"


def _twisted_address(host: str, port: int) -> IPv4Address | IPv6Address:
    if ":" in host:
        return IPv6Address("TCP", host, port)
    return IPv4Address("TCP", host, port)


class ProxyHeaderFactory(protocol.Factory):
    """Wraps the listener's factory: the PROXY header first from ``trusted`` peers."""

    def __init__(
        self,
        wrapped: protocol.Factory,
        trusted: tuple[Network, ...],
        clock: Any,
        count: Callable[[str], None],
        timeout: float = HEADER_TIMEOUT,
    ) -> None:
        self.wrapped = wrapped
        self.trusted = trusted
        self.clock = clock
        self.count = count
        self.timeout = timeout

    def trusts(self, host: str | None) -> bool:
        try:
            address = ipaddress.ip_address(host or "")
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address.version == n.version and address in n for n in self.trusted)

    def buildProtocol(self, addr: Any) -> ProxyHeaderProtocol:
        return ProxyHeaderProtocol(self, addr)


class ProxyHeaderProtocol(policies.ProtocolWrapper):
    """Reads the header (listed peers), then hands the connection to the wrapped protocol
    built with the client's address; the wrapped protocol's transport is this object."""

    wrappedProtocol: Any
    transport: Any

    def __init__(self, factory: ProxyHeaderFactory, peer: Any) -> None:
        self.factory: Any = factory
        self.wrappedProtocol = None
        self.peer = peer
        self.client: Any = peer
        self.trusted = factory.trusts(getattr(peer, "host", None))
        self._buffer = b""
        self._timer: Any = None
        self._first = True
        self._refused = False

    def makeConnection(self, transport: Any) -> None:
        directlyProvides(self, providedBy(transport))
        protocol.Protocol.makeConnection(self, transport)

    def connectionMade(self) -> None:
        if self.trusted:
            self._timer = self.factory.clock.callLater(self.factory.timeout, self._timed_out)
        else:
            self._start(self.peer)

    def _start(self, address: Any) -> bool:
        self.client = address
        inner = self.factory.wrapped.buildProtocol(address)
        if inner is None:  # a connection limit: the wrapped factory counted and logged it
            self._refused = True
            self.transport.abortConnection()
            return False
        self.wrappedProtocol = inner
        inner.makeConnection(self)
        return True

    def _refuse(self, counter: str, why: str) -> None:
        self._refused = True
        self._buffer = b""
        self.factory.count(counter)
        log.warn("refusing {peer}: {why}", peer=getattr(self.peer, "host", None), why=why)
        self.transport.abortConnection()

    def _timed_out(self) -> None:
        self._timer = None
        self._refuse("proxy_header_timeout", "no complete PROXY header in time")

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return
        if self.wrappedProtocol is not None:
            first, self._first = self._first, False
            if first and not self.trusted and data[:1] in _FIRST_BYTES:
                # LDAP starts with 0x30 and TLS with 0x16: this is a PROXY header (or junk).
                self._refuse("proxy_header_untrusted", "PROXY header from a peer not listed")
                self.wrappedProtocol.connectionLost(None)
                self.wrappedProtocol = None
                return
            self.wrappedProtocol.dataReceived(data)
            return
        self._buffer += data
        try:
            header = parse_header(self._buffer)
        except ProxyHeaderError as exc:
            self._refuse("proxy_header_invalid", f"bad PROXY header: {exc}")
            return
        if header is None:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        rest, self._buffer = self._buffer[header.size :], b""
        self._first = False
        if header.source is None:
            address: Any = NoClientAddress(f"local:{getattr(self.peer, 'host', '?')}")
        else:
            address = _twisted_address(*header.source)
        if self._start(address) and rest:
            inner: Any = self.wrappedProtocol
            inner.dataReceived(rest)

    def connectionLost(self, reason: Any = None) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        inner, self.wrappedProtocol = self.wrappedProtocol, None
        if inner is not None:
            inner.connectionLost(reason)

    def write(self, data: bytes) -> None:
        send(self.transport, data)  # keeps netio's direct path for clear-text TCP

    def getPeer(self) -> Any:
        return self.client

    def getHost(self) -> Any:
        return self.transport.getHost()

    def logPrefix(self) -> str:
        return "ProxyHeader"
