"""The portal client's address behind trusted reverse proxies (pure: no I/O).

A forwarding header (``X-Forwarded-For`` or RFC 7239 ``Forwarded``) is read only when the
TCP peer is one of ``[web] trusted_proxies``, and only the one header the configuration
names: a client may send either header itself, and a proxy appends to only one of them.
Each proxy appends the address it received the request from, so the list is walked from the
right and the first address that is not a trusted proxy is the client; everything to the
left of it was written by that client and is worth nothing.  When all of them are trusted
proxies the left-most is taken (a request that started on a proxy host).

A header that cannot be read at the position that matters (garbage, ``unknown``, an
obfuscated RFC 7239 node) gives the peer's address for logs and rate limits but *no*
address for network-based rights (``ClientAddress.network`` is None): a client must not be
able to turn itself into the proxy's own, usually privileged, loopback address by sending
a malformed header.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from otpgate.configfile import Network

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_HEADER = 4096
"""Longer forwarding headers are refused as malformed (a proxy chain is a few addresses)."""
_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


@dataclass(frozen=True)
class ClientAddress:
    address: str
    """Who the portal counts and logs the request as."""
    network: str | None
    """The address that network-based rights (metrics, password-only enrollment) are checked
    against; None when the forwarding header was unusable."""
    problem: str | None = None
    """Why the forwarding header was not used (for the log)."""


def _in(address: IpAddress, networks: tuple[Network, ...]) -> bool:
    return any(address.version == n.version and address in n for n in networks)


def _plain(address: IpAddress) -> IpAddress:
    """``::ffff:10.0.0.1`` (a dual-stack socket's IPv4 peer) is ``10.0.0.1``."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def parse_node(text: str) -> IpAddress | None:
    """An address as proxies write it: ``1.2.3.4``, ``1.2.3.4:80``, ``::1``, ``[::1]``,
    ``[::1]:80``.  None for anything else (``unknown``, ``_hidden``, names, garbage)."""
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        rest = text[end + 1 :]
        if rest and not (rest.startswith(":") and rest[1:].isdigit()):
            return None
        host = text[1:end]
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return None
        return _plain(address) if address.version == 6 else None
    if text.count(":") == 1:  # IPv4 with a port
        host, port = text.split(":")
        if not port.isdigit():
            return None
        text = host
    try:
        return _plain(ipaddress.ip_address(text))
    except ValueError:
        return None


def parse_x_forwarded_for(value: str) -> list[IpAddress | None]:
    """Each comma-separated element of ``X-Forwarded-For``, None where it is no address."""
    return [parse_node(part) for part in value.split(",")]


def _quoted(value: str, pos: int) -> tuple[str, int]:
    """An RFC 7230 quoted-string starting at value[pos] == '"'; (text, position after it)."""
    out = []
    i = pos + 1
    while i < len(value):
        c = value[i]
        if c == "\\":
            if i + 1 >= len(value):
                break
            out.append(value[i + 1])
            i += 2
            continue
        if c == '"':
            return "".join(out), i + 1
        out.append(c)
        i += 1
    raise ValueError("unterminated quoted-string")


def parse_forwarded(value: str) -> list[IpAddress | None]:
    """The ``for=`` node of each element of an RFC 7239 ``Forwarded`` header, in order.

    None where an element has no ``for`` or its node is not an address (``unknown``,
    obfuscated).  Raises ValueError when the header does not follow the RFC 7239 grammar.
    """
    elements: list[IpAddress | None] = []
    pairs: dict[str, str] = {}
    i, n = 0, len(value)
    while True:
        while i < n and value[i] in " \t":
            i += 1
        start = i
        while i < n and value[i] in _TCHAR:
            i += 1
        name = value[start:i].lower()
        if not name or i >= n or value[i] != "=":
            raise ValueError("expected name=value")
        i += 1
        if i < n and value[i] == '"':
            text, i = _quoted(value, i)
        else:
            start = i
            while i < n and value[i] in _TCHAR:
                i += 1
            text = value[start:i]
            if not text:
                raise ValueError(f"empty value for {name}")
        if name in pairs:
            raise ValueError(f"{name} twice in one element")
        pairs[name] = text
        while i < n and value[i] in " \t":
            i += 1
        if i >= n or value[i] == ",":
            elements.append(parse_node(pairs["for"]) if "for" in pairs else None)
            pairs = {}
            if i >= n:
                return elements
            i += 1
        elif value[i] == ";":
            i += 1
        else:
            raise ValueError(f"unexpected {value[i]!r}")


def client_address(
    peer: str,
    headers: list[bytes] | None,
    trusted_proxies: tuple[Network, ...],
    header: str,
) -> ClientAddress:
    """Who sent the request: ``peer`` (the TCP peer) unless it is a trusted proxy that added
    ``header`` (``x-forwarded-for`` or ``forwarded``; ``headers`` are all its lines)."""
    try:
        peer_address = _plain(ipaddress.ip_address(peer))
    except ValueError:
        return ClientAddress(peer, None, "peer is not an IP address")
    peer = str(peer_address)
    if not trusted_proxies or not _in(peer_address, trusted_proxies):
        return ClientAddress(peer, peer)  # anything it claims is its own word: ignored
    if not headers:
        return ClientAddress(peer, peer)  # the proxy host itself (or no forwarding set up)
    try:
        raw = b",".join(headers).decode("ascii")
    except UnicodeDecodeError:
        return ClientAddress(peer, None, f"{header}: not ASCII")
    if len(raw) > MAX_HEADER:
        return ClientAddress(peer, None, f"{header}: longer than {MAX_HEADER} characters")
    try:
        nodes = parse_forwarded(raw) if header == "forwarded" else parse_x_forwarded_for(raw)
    except ValueError as exc:
        return ClientAddress(peer, None, f"{header}: {exc}")
    for node in reversed(nodes):
        if node is None:
            return ClientAddress(peer, None, f"{header}: no usable address where one is needed")
        if not _in(node, trusted_proxies):
            return ClientAddress(str(node), str(node))
    left = str(nodes[0])  # every hop is a trusted proxy: the request started on one of them
    return ClientAddress(left, left)
