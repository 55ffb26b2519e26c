"""RADIUS packets (RFC 2865, 2869, 3579, 5997): strict decoding and signed replies.

Pure: bytes in, bytes out.  pyrad does the attribute mapping and the
Message-Authenticator check of requests.  Written out here: the layout check
before decoding (pyrad silently truncates an attribute that runs past the packet,
accepts several Message-Authenticators and packets up to 8192 octets), the
User-Password decryption (pyrad decodes it as UTF-8 with errors ignored, which
silently drops octets of the password), and the reply encoding (pyrad encodes
every attribute twice, about 2 µs each: the reply attributes of a NAS's rules
would have cost more than the rules).  Every reply has the Message-Authenticator
first and the request's Proxy-States in order, as BlastRADIUS / CVE-2024-3596
countermeasures want; tests check each reply with pyrad and radclient.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pyrad import packet as pyrad_packet
from pyrad.dictionary import Dictionary

from otpgate.errors import MalformedPacket

# Packet codes
ACCESS_REQUEST = 1
ACCESS_ACCEPT = 2
ACCESS_REJECT = 3
ACCESS_CHALLENGE = 11
STATUS_SERVER = 12

# Attributes (RFC 2865, 2869, 3579)
USER_NAME = 1
USER_PASSWORD = 2
CHAP_PASSWORD = 3
REPLY_MESSAGE = 18
STATE = 24
CLASS = 25
VENDOR_SPECIFIC = 26
SESSION_TIMEOUT = 27
PROXY_STATE = 33
CHAP_CHALLENGE = 60
EAP_MESSAGE = 79
MESSAGE_AUTHENTICATOR = 80

# Microsoft vendor attributes (RFC 2548), keyed (vendor, type) as pyrad decodes them
MICROSOFT = 311
MS_CHAP_RESPONSE = (MICROSOFT, 1)
MS_CHAP_ERROR = (MICROSOFT, 2)
MS_MPPE_ENCRYPTION_POLICY = (MICROSOFT, 7)
MS_MPPE_ENCRYPTION_TYPES = (MICROSOFT, 8)
MS_CHAP_CHALLENGE = (MICROSOFT, 11)
MS_MPPE_SEND_KEY = (MICROSOFT, 16)
MS_MPPE_RECV_KEY = (MICROSOFT, 17)
MS_CHAP2_RESPONSE = (MICROSOFT, 25)
MS_CHAP2_SUCCESS = (MICROSOFT, 26)

AttributeKey = int | tuple[int, int]

HEADER_LENGTH = 20
MAX_PACKET_LENGTH = 4096  # RFC 2865 §3
MAX_PASSWORD_LENGTH = 128  # RFC 2865 §5.2
MAX_TEXT_LENGTH = 253

_EMPTY_DICTIONARY = Dictionary()
"""Attributes are handled by number: no dictionary file to ship or parse."""


@dataclass(frozen=True)
class Request:
    """A received request, layout checked and decoded (not yet authenticated)."""

    code: int
    id: int
    authenticator: bytes
    attribute_count: int
    has_message_authenticator: bool
    packet: Any = field(repr=False)
    """The pyrad AuthPacket, with the client's secret set (used to build the reply)."""

    def values(self, key: AttributeKey) -> list[bytes]:
        found: list[bytes] | None = self.packet.get(key)
        return list(found) if found else []

    def one(self, key: AttributeKey) -> bytes | None:
        """The attribute's only value; None if absent; MalformedPacket if repeated."""
        found = self.values(key)
        if len(found) > 1:
            raise MalformedPacket(f"attribute {key} appears {len(found)} times")
        return found[0] if found else None

    def has(self, key: AttributeKey) -> bool:
        return bool(self.packet.get(key))


def check_layout(data: bytes, max_attributes: int) -> tuple[bytes, int, bool]:
    """Check the header and every attribute's length; return (packet, attributes, has MA).

    Octets after the Length field are padding and dropped (RFC 2865 §3).
    """
    if len(data) < HEADER_LENGTH:
        raise MalformedPacket(f"{len(data)} octets is shorter than a RADIUS header")
    (length,) = struct.unpack_from("!H", data, 2)
    if not HEADER_LENGTH <= length <= MAX_PACKET_LENGTH:
        raise MalformedPacket(
            f"Length field {length} is outside {HEADER_LENGTH}-{MAX_PACKET_LENGTH}"
        )
    if len(data) < length:
        raise MalformedPacket(f"Length field {length} but only {len(data)} octets received")
    data = data[:length]
    count = 0
    authenticators = 0
    pos = HEADER_LENGTH
    while pos < length:
        if pos + 2 > length:
            raise MalformedPacket("truncated attribute header")
        kind, size = data[pos], data[pos + 1]
        if size < 2 or pos + size > length:
            raise MalformedPacket(f"attribute {kind} has a bad length {size}")
        if kind == MESSAGE_AUTHENTICATOR:
            authenticators += 1
            if size != 18:
                raise MalformedPacket("Message-Authenticator is not 16 octets")
        count += 1
        if count > max_attributes:
            raise MalformedPacket(f"more than {max_attributes} attributes")
        pos += size
    if authenticators > 1:
        raise MalformedPacket("more than one Message-Authenticator")
    return data, count, authenticators == 1


def decode_request(data: bytes, secret: bytes, max_attributes: int) -> Request:
    """Check and decode a datagram; raises MalformedPacket and nothing else for bad input."""
    data, count, has_ma = check_layout(data, max_attributes)
    try:
        pkt = pyrad_packet.AuthPacket(packet=data, secret=secret, dict=_EMPTY_DICTIONARY)
    except pyrad_packet.PacketError as exc:  # not reached after check_layout; kept as a guard
        raise MalformedPacket(str(exc)) from exc
    return Request(pkt.code, pkt.id, pkt.authenticator, count, has_ma, pkt)


def verify_message_authenticator(request: Request) -> bool:
    """HMAC-MD5 over the packet as received, compared in constant time (pyrad)."""
    if not request.has_message_authenticator:
        return False
    return bool(request.packet.verify_message_authenticator())


def decrypt_password(hidden: bytes, secret: bytes, authenticator: bytes) -> bytes:
    """Undo the User-Password hiding of RFC 2865 §5.2; the trailing NUL padding is removed."""
    if not hidden or len(hidden) % 16 or len(hidden) > MAX_PASSWORD_LENGTH:
        raise MalformedPacket(f"User-Password of {len(hidden)} octets")
    out = bytearray()
    last = authenticator
    for i in range(0, len(hidden), 16):
        block = hidden[i : i + 16]
        pad = hashlib.md5(secret + last, usedforsecurity=False).digest()
        out += (int.from_bytes(block, "big") ^ int.from_bytes(pad, "big")).to_bytes(16, "big")
        last = block
    return bytes(out).rstrip(b"\x00")


def hide_password(password: bytes, secret: bytes, authenticator: bytes) -> bytes:
    """RFC 2865 §5.2 (for tests and tools; the server only decrypts)."""
    padded = password.ljust(max(16, -(-len(password) // 16) * 16), b"\x00")
    out = bytearray()
    last = authenticator
    for i in range(0, len(padded), 16):
        pad = hashlib.md5(secret + last, usedforsecurity=False).digest()
        block = (int.from_bytes(padded[i : i + 16], "big") ^ int.from_bytes(pad, "big")).to_bytes(
            16, "big"
        )
        out += block
        last = block
    return bytes(out)


def salt_encrypt(value: bytes, secret: bytes, request_authenticator: bytes) -> bytes:
    """RFC 2548 §2.4.2 salt encryption (MS-MPPE-Send/Recv-Key), via pyrad's SaltCrypt."""
    holder = pyrad_packet.Packet(
        code=ACCESS_ACCEPT, id=0, secret=secret, authenticator=request_authenticator
    )
    encrypted: bytes = holder.SaltCrypt(value)
    return encrypted


_EMPTY_AUTHENTICATOR = bytes((MESSAGE_AUTHENTICATOR, 18)) + bytes(16)


def encode_reply(
    request: Request,
    code: int,
    attributes: Sequence[tuple[AttributeKey, bytes]] = (),
    encoded: bytes = b"",
) -> bytes:
    """A signed reply: Message-Authenticator first, then Proxy-State copied, then ``attributes``
    (a vendor's (vendor id, type) in a Vendor-Specific of its own, RFC 2865 section 5.26),
    then ``encoded``: attributes already on the wire (``encode_attribute``).

    The Message-Authenticator is HMAC-MD5 with the shared secret over the reply with the
    Request Authenticator in place and the Message-Authenticator zeroed (RFC 3579 section
    3.2); then the Response Authenticator is MD5(Code, Identifier, Length, Request
    Authenticator, attributes, secret) (RFC 2865 section 3).  ValueError for a reply that
    would not fit in a packet (4096 octets) or an attribute that would not fit in one."""
    secret: bytes = request.packet.secret
    parts = [_EMPTY_AUTHENTICATOR]
    parts.extend(encode_attribute(PROXY_STATE, value) for value in request.values(PROXY_STATE))
    parts.extend(encode_attribute(key, value) for key, value in attributes)
    parts.append(encoded)
    body = b"".join(parts)
    length = HEADER_LENGTH + len(body)
    if length > MAX_PACKET_LENGTH:
        raise ValueError(f"a reply of {length} octets is over {MAX_PACKET_LENGTH}")
    head = struct.pack("!BBH", code, request.id, length)
    signature = hmac.digest(secret, head + request.authenticator + body, "md5")
    body = _EMPTY_AUTHENTICATOR[:2] + signature + body[18:]
    response = hashlib.md5(
        head + request.authenticator + body + secret, usedforsecurity=False
    ).digest()
    return head + response + body


def encode_attribute(key: AttributeKey, value: bytes) -> bytes:
    """One attribute on the wire: Type, Length, Value; a vendor attribute inside its own
    Vendor-Specific (Type 26, Length, Vendor-Id, vendor type, vendor length, value)."""
    size = len(value)
    if isinstance(key, tuple):
        if size > MAX_TEXT_LENGTH - 6:
            raise ValueError(f"vendor attribute {key}: {size} octets do not fit")
        return struct.pack("!BBIBB", VENDOR_SPECIFIC, size + 8, key[0], key[1], size + 2) + value
    if size > MAX_TEXT_LENGTH:
        raise ValueError(f"attribute {key}: {size} octets do not fit")
    return bytes((key, size + 2)) + value


def text(value: str) -> bytes:
    """A text attribute value, cut to what fits in one attribute (at a character boundary:
    RFC 8044 text is UTF-8, and a masked destination holds multi-octet characters)."""
    return value.encode("utf-8")[:MAX_TEXT_LENGTH].decode("utf-8", "ignore").encode("utf-8")


def integer(value: int) -> bytes:
    return struct.pack("!I", value)
