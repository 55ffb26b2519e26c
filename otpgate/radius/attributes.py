"""RADIUS attributes by name, for reply rules: the dictionaries, which attributes may go in an
Access-Accept, and their values encoded as they go on the wire.  Pure; used when the
configuration loads (static values) and per login (values copied from the entry).

The dictionaries are otpgate's own files in FreeRADIUS syntax (``dictionaries/``, read with
pyrad's parser), plus any the operator lists in ``[radius] dictionaries``.  A name may carry
an RFC 2868 tag: ``Tunnel-Type:1``.  What is refused, and why:

* attributes that RFC 2865 section 5.44, RFC 2868 section 4 or RFC 2869 section 5.19 do not
  allow in an Access-Accept ("0" in the Accept column): request-only and accounting
  attributes, Password-Retry, Prompt;
* attributes otpgate writes itself: State, Proxy-State, EAP-Message, Message-Authenticator,
  and the MS-CHAP and MPPE attributes of its MS-CHAPv2 answer;
* salt-encrypted values (Tunnel-Password, MS-MPPE keys): their encryption depends on each
  request, and a secret does not belong in a reply rule;
* data types other than text, octets, numbers, dates and addresses (TLVs, Ascend filters).
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from pyrad import tools
from pyrad.dictionary import Dictionary, ParseError

from otpgate.radius.packet import AttributeKey

MAX_VALUE = 253
"""Octets of one attribute's value (RFC 2865 section 5: Length is one octet)."""
MAX_VENDOR_VALUE = MAX_VALUE - 6
"""A vendor attribute inside Vendor-Specific: Vendor-Id (4), type and length (1 + 1)."""
MAX_TAG = 0x1F
"""RFC 2868 section 3: tags 0x01-0x1F group a tunnel's attributes; 0 means unused."""

SINGLE = 1
MANY = 0
ACCEPT: dict[int, int] = {
    # RFC 2865 section 5.44, the Accept column: "0-1" (SINGLE) or "0+" (MANY)
    1: SINGLE,  # User-Name
    6: SINGLE,  # Service-Type
    7: SINGLE,  # Framed-Protocol
    8: SINGLE,  # Framed-IP-Address
    9: SINGLE,  # Framed-IP-Netmask
    10: SINGLE,  # Framed-Routing
    11: MANY,  # Filter-Id
    12: SINGLE,  # Framed-MTU
    13: MANY,  # Framed-Compression
    14: MANY,  # Login-IP-Host
    15: SINGLE,  # Login-Service
    16: SINGLE,  # Login-TCP-Port
    18: MANY,  # Reply-Message
    19: SINGLE,  # Callback-Number
    20: SINGLE,  # Callback-Id
    22: MANY,  # Framed-Route
    23: SINGLE,  # Framed-IPX-Network
    25: MANY,  # Class
    27: SINGLE,  # Session-Timeout
    28: SINGLE,  # Idle-Timeout
    29: SINGLE,  # Termination-Action
    34: SINGLE,  # Login-LAT-Service
    35: SINGLE,  # Login-LAT-Node
    36: SINGLE,  # Login-LAT-Group
    37: SINGLE,  # Framed-AppleTalk-Link
    38: MANY,  # Framed-AppleTalk-Network
    39: SINGLE,  # Framed-AppleTalk-Zone
    62: SINGLE,  # Port-Limit
    63: SINGLE,  # Login-LAT-Port
    # RFC 2868 section 4: every tunnel attribute "0+" in an Access-Accept
    64: MANY,  # Tunnel-Type
    65: MANY,  # Tunnel-Medium-Type
    66: MANY,  # Tunnel-Client-Endpoint
    67: MANY,  # Tunnel-Server-Endpoint
    81: MANY,  # Tunnel-Private-Group-Id
    82: MANY,  # Tunnel-Assignment-Id
    83: MANY,  # Tunnel-Preference
    90: MANY,  # Tunnel-Client-Auth-Id
    91: MANY,  # Tunnel-Server-Auth-Id
    # RFC 2869 section 5.19
    71: SINGLE,  # ARAP-Features
    72: SINGLE,  # ARAP-Zone-Access
    78: MANY,  # Configuration-Token
    84: SINGLE,  # ARAP-Challenge-Response
    85: SINGLE,  # Acct-Interim-Interval
    88: SINGLE,  # Framed-Pool
}
"""Standard attributes a reply rule may put in an Access-Accept, and how many of each."""

OWN: dict[AttributeKey, str] = {
    24: "State belongs to otpgate's challenges",
    33: "Proxy-State is copied from the request",
    79: "otpgate does no EAP",
    80: "otpgate signs every reply itself",
    **{
        (311, code): "otpgate's MS-CHAPv2 answer sets the MS-CHAP and MPPE attributes"
        for code in (1, 2, 7, 8, 11, 16, 17, 25, 26)
    },
}
"""Attributes otpgate writes itself: never from a rule."""

ENCODABLE = frozenset(
    {"string", "octets", "integer", "signed", "short", "byte", "integer64", "date",
     "ipaddr", "ipv6addr", "ipv6prefix"}
)  # fmt: skip
INTEGER_RANGES = {
    "integer": (0, 2**32 - 1),
    "date": (0, 2**32 - 1),
    "signed": (-(2**31), 2**31 - 1),
    "short": (0, 2**16 - 1),
    "byte": (0, 2**8 - 1),
    "integer64": (0, 2**64 - 1),
}
INTEGER_FORMATS = {
    "integer": "!I", "date": "!I", "signed": "!i", "short": "!H", "byte": "!B",
    "integer64": "!Q",
}  # fmt: skip


@dataclass(frozen=True)
class ReplyAttribute:
    """One attribute a rule may add to an Access-Accept (with its tag, if one was given)."""

    name: str
    """As written in the configuration ("Tunnel-Type:1")."""
    key: AttributeKey
    """How ``packet.encode_reply`` takes it: the code, or (vendor id, vendor type)."""
    type: str
    single: bool
    """At most one in an Access-Accept (RFC 2865 section 5.44 "0-1")."""
    tag: int | None = None
    has_tag: bool = False
    named: tuple[tuple[str, bytes], ...] = ()
    """The dictionary's named values (VALUE lines), encoded."""

    @property
    def room(self) -> int:
        """Octets the value may take (a string's tag octet included)."""
        return MAX_VENDOR_VALUE if isinstance(self.key, tuple) else MAX_VALUE

    @property
    def text(self) -> bool:
        return self.type in ("string", "octets")


def load_dictionary(extra: Sequence[Path] = ()) -> Dictionary:
    """otpgate's dictionaries, then ``extra`` (later definitions of a name replace earlier
    ones).  OSError or pyrad's ParseError for a file that cannot be read."""
    shipped = resources.files("otpgate.radius").joinpath("dictionaries", "dictionary")
    with resources.as_file(shipped) as path:
        dictionary = Dictionary(str(path))
    for more in extra:
        dictionary.ReadDictionary(str(more))
    return dictionary


def dictionary_error(exc: Exception) -> str:
    """What to say about a dictionary file that could not be read."""
    if isinstance(exc, ParseError):
        return str(exc)
    if isinstance(exc, OSError):
        return f"cannot read {exc.filename}: {exc.strerror}"
    return str(exc)


def reply_attribute(dictionary: Dictionary, spec: str) -> ReplyAttribute:
    """The attribute ``spec`` names ("Class", "Tunnel-Type:1", "Cisco-AVPair"), checked for
    an Access-Accept; ValueError says why not."""
    name, colon, tag_text = spec.partition(":")
    if name not in dictionary:
        raise ValueError(f"no attribute {name!r} in the RADIUS dictionaries")
    defn = dictionary[name]
    if defn.is_sub_attribute or defn.type not in ENCODABLE:
        raise ValueError(f"{name} is of type {defn.type}, which a reply rule cannot set")
    if defn.vendor:
        key: AttributeKey = (dictionary.vendors.GetForward(defn.vendor), defn.code)
    else:
        key = defn.code
    own = OWN.get(key)
    if own is not None:
        raise ValueError(f"{name} is not for reply rules: {own}")
    if defn.encrypt:
        raise ValueError(f"{name} is an encrypted attribute, which reply rules do not set")
    if isinstance(key, int) and key not in ACCEPT:
        raise ValueError(f"{name} ({key}) may not be in an Access-Accept (RFC 2865, 2868, 2869)")
    tag: int | None = None
    if colon:
        if not defn.has_tag:
            raise ValueError(f"{name} takes no tag (only RFC 2868 tunnel attributes do)")
        if not tag_text.isdigit() or int(tag_text) > MAX_TAG:
            raise ValueError(f"{spec!r}: a tag is 0 to {MAX_TAG} (RFC 2868 section 3)")
        tag = int(tag_text)
    single = isinstance(key, int) and ACCEPT[key] == SINGLE
    named = tuple((n, bytes(v)) for n, v in defn.values.forward.items())
    return ReplyAttribute(spec, key, defn.type, single, tag, defn.has_tag, named)


# -- values -------------------------------------------------------------------------------


def encode_value(attr: ReplyAttribute, value: Any) -> bytes:
    """A value from the configuration file (TOML string or integer), on the wire; ValueError
    says why it does not fit."""
    if isinstance(value, bool):
        raise ValueError(f"expected a {attr.type} value, not true/false")
    if attr.type in INTEGER_RANGES:
        if isinstance(value, str):
            for label, encoded in attr.named:
                if label == value:
                    return _tagged(attr, encoded)
            if not value.isdigit():
                known = ", ".join(label for label, _ in attr.named) or "none"
                raise ValueError(f"{value!r} is not a number nor a value of {attr.name} "
                                 f"(named values: {known})")
            value = int(value)
        if not isinstance(value, int):
            raise ValueError(f"expected a number or a named value, not {value!r}")
        return _tagged(attr, _integer(attr, value))
    if not isinstance(value, str):
        raise ValueError(f"expected text for this {attr.type} attribute, not {value!r}")
    if attr.type == "string":
        return _tagged(attr, value.encode("utf-8"))
    if attr.type == "octets":
        if value.startswith("0x"):
            try:
                return _tagged(attr, bytes.fromhex(value[2:]))
            except ValueError:
                raise ValueError(f"{value!r} is not 0x followed by hex digits") from None
        return _tagged(attr, value.encode("utf-8"))
    return _tagged(attr, _address(attr, value))


def convert_entry_value(attr: ReplyAttribute, raw: bytes) -> bytes:
    """A value of the user's entry, on the wire; ValueError says why it cannot be.

    Addresses come as text ("192.0.2.7") or as the number AD stores in
    msRADIUSFramedIPAddress: a signed 32-bit INTEGER holding the address's four octets
    (192.168.1.10 = 0xC0A8010A is stored as -1062731510).  Numbers come as decimal text
    (LDAP INTEGER syntax).  Text and octets are taken as they are."""
    if attr.text:
        return _tagged(attr, raw)
    try:
        text = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ValueError("not ASCII text") from None
    if attr.type in INTEGER_RANGES:
        number = _decimal(text)
        if number is None:
            raise ValueError(f"{_shown(text)} is not a number")
        return _tagged(attr, _integer(attr, number))
    if attr.type == "ipaddr":
        number = _decimal(text)
        if number is not None:
            if not -(2**31) <= number < 2**32:
                raise ValueError(f"{number} is not a 32-bit address")
            return struct.pack("!I", number & 0xFFFFFFFF)
    return _tagged(attr, _address(attr, text))


def _decimal(text: str) -> int | None:
    digits = text[1:] if text[:1] == "-" else text
    return int(text) if digits.isdigit() and len(digits) <= 20 else None


def _shown(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:40] + "...")


def _integer(attr: ReplyAttribute, value: int) -> bytes:
    low, high = INTEGER_RANGES[attr.type]
    if attr.has_tag:
        high = 2**24 - 1  # RFC 2868: the tag takes the first of the four octets
    if not low <= value <= high:
        raise ValueError(f"{value} is outside {low}-{high} ({attr.type})")
    return struct.pack(INTEGER_FORMATS[attr.type], value)


def _address(attr: ReplyAttribute, text: str) -> bytes:
    try:
        if attr.type == "ipaddr":
            return ipaddress.IPv4Address(text).packed
        encoded: bytes = tools.EncodeAttr(attr.type, text)
        return encoded
    except (ValueError, TypeError, struct.error):
        raise ValueError(f"{_shown(text)} is not an {attr.type} value") from None


def _tagged(attr: ReplyAttribute, value: bytes) -> bytes:
    """``value`` with the RFC 2868 tag: the first octet of a tagged integer; a separate
    first octet of a tagged string, also tag 0 when the text itself starts with an octet up
    to 0x1F (which a NAS would read as a tag)."""
    if attr.has_tag:
        tag = attr.tag or 0
        if attr.type in INTEGER_RANGES:
            value = bytes((tag,)) + value[1:]
        elif attr.tag is not None or (value and value[0] <= MAX_TAG):
            value = bytes((tag,)) + value
    if not value and attr.text:
        raise ValueError("an empty value (RFC 2865 section 5: at least one octet)")
    if len(value) > attr.room:
        raise ValueError(f"{len(value)} octets do not fit in one attribute (at most {attr.room})")
    return value
