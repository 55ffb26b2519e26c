"""Distinguished names (RFC 4514), compared RDN by RDN, parsed in one linear pass.

Bind names come from anyone who can reach a listener, before any authentication, so the
parser must cost time proportional to the name: ldap3's ``parse_dn`` is quadratic on
escaped commas (``cn=`` + 100,000 x ``\\,`` took 3 s of the reactor's CPU), and names are
also refused above ``[policy] max_name_length`` before they get here.

``dn_key`` turns a DN into canonical RDNs: attribute types and values compared case- and
space-insensitively, escapes (``\\,``, ``\\2C``) and ``#hex`` values resolved, multi-valued
RDNs sorted.  It is memoised for names up to ``MAX_MEMO_DN`` characters.
"""

from __future__ import annotations

from functools import lru_cache

_HEX = frozenset("0123456789abcdefABCDEF")
_SPECIAL = ',+"\\<>;=#'
_TYPE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.;")

MAX_MEMO_DN = 1024
"""Longer names are never memoised: a cache of 256-KiB names would let anyone who can send
binds pin gigabytes; real DNs are far shorter."""


class _NotADn(ValueError):
    pass


def _attribute_value(dn: str, i: int) -> tuple[str, int]:
    """The value starting at ``dn[i]`` (unescaped) and the index of the character after it
    (a separator or the end).  Each character is looked at once."""
    n = len(dn)
    if i < n and dn[i] == "#":  # BER-encoded value: hex digits, kept as text
        j = i + 1
        while j < n and dn[j] in _HEX:
            j += 1
        return dn[i:j].lower(), j
    out = bytearray()
    while i < n:
        c = dn[i]
        if c in ",+":
            break
        if c == "\\":
            pair = dn[i + 1 : i + 3]
            if len(pair) == 2 and pair[0] in _HEX and pair[1] in _HEX:
                out.append(int(pair, 16))  # \XX: one octet of the UTF-8 value
                i += 3
                continue
            if i + 1 >= n:
                raise _NotADn("a trailing backslash")
            out += dn[i + 1].encode("utf-8", "surrogatepass")
            i += 2
            continue
        if c in '"<>;=':
            raise _NotADn(f"an unescaped {c!r} in a value")
        out += c.encode("utf-8", "surrogatepass")
        i += 1
    return out.decode("utf-8", "replace"), i


def _canonical_value(value: str) -> str:
    text = " ".join(value.split()).lower()
    return "".join("\\" + c if c in _SPECIAL else c for c in text)


def _parse(dn: str) -> tuple[str, ...]:
    rdns: list[str] = []
    current: list[str] = []
    n, i = len(dn), 0
    while True:
        while i < n and dn[i] == " ":
            i += 1
        start = i
        while i < n and dn[i] in _TYPE_CHARS:
            i += 1
        attribute = dn[start:i].lower()
        while i < n and dn[i] == " ":
            i += 1
        if not attribute or i >= n or dn[i] != "=":
            raise _NotADn("an attribute type and '=' expected")
        i += 1
        while i < n and dn[i] == " ":
            i += 1
        hexstring = i < n and dn[i] == "#"
        value, i = _attribute_value(dn, i)
        # A #hex value stays as it is: a string value's "#" is escaped, so the two differ.
        current.append(f"{attribute}={value if hexstring else _canonical_value(value)}")
        if i >= n:
            rdns.append("+".join(sorted(current)))
            return tuple(rdns)
        if dn[i] not in ",+":
            raise _NotADn("a ',' or '+' expected after a value")
        if dn[i] == ",":
            rdns.append("+".join(sorted(current)))
            current = []
        i += 1  # past the ',' or '+'


def _dn_key(dn: str) -> tuple[str, ...] | None:
    try:
        return _parse(dn)
    except _NotADn:
        return None


_dn_key_memo = lru_cache(maxsize=4096)(_dn_key)


def dn_key(dn: str) -> tuple[str, ...] | None:
    """The canonical RDNs of ``dn``, or None if it is not a DN."""
    return _dn_key_memo(dn) if len(dn) <= MAX_MEMO_DN else _dn_key(dn)


def same_dn(a: str, b: str) -> bool:
    """Two DNs name the same entry (compared RDN by RDN, see ``dn_key``)."""
    key = dn_key(a)
    return key is not None and key == dn_key(b)


def normalise_dn(dn: str) -> str:
    """A canonical text of ``dn`` for comparisons; unparsable names are only lower-cased, so
    they never equal a real DN's canonical form by accident."""
    key = dn_key(dn)
    return ",".join(key) if key is not None else "\x00" + dn.lower()


def below(dn: str, base: str) -> bool:
    """``dn`` is ``base`` or an entry below it (compared RDN by RDN); an unparsable name is
    below nothing.  An empty ``base`` (the root) holds every DN."""
    key = dn_key(dn)
    if key is None:
        return False
    if not base:
        return True
    root = dn_key(base)
    return root is not None and len(key) >= len(root) and key[len(key) - len(root) :] == root


def first_rdn_value(dn: str) -> str:
    """The value of the DN's first attribute as written, unescaped ("Alice Smith" of
    "CN=Alice Smith,OU=People,..."); "" when ``dn`` is not a DN.  For text shown to the
    user herself (an SMS's ``{user}``): the entry's own name, never the name a client typed."""
    i = dn.find("=")
    if i <= 0:
        return ""
    i += 1
    while i < len(dn) and dn[i] == " ":
        i += 1
    try:
        value, _end = _attribute_value(dn, i)
    except _NotADn:
        return ""
    return value.strip()
