"""OpenLDAP access rules as slapd reads them: olcAccess values, attribute types, DNs.

Pure parsing for ``olcaccess.py``: a value is split into words as slapd splits it, then
into ``<what>`` words and ``by`` clauses (who, access, control); attribute type names are
resolved to OIDs and their SUP chains from the subschema; DNs are compared RDN by RDN with
types as OIDs.  What cannot be read raises :class:`Unprovable`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum

from ldap3.core.exceptions import LDAPInvalidDnError  # type: ignore[import-untyped]
from ldap3.utils.dn import parse_dn  # type: ignore[import-untyped]


class Unprovable(ValueError):
    """The rules cannot be evaluated with certainty (unparsable, unknown, not visible)."""


class Match(IntEnum):
    """Three-valued: AND is ``min``, OR is ``max``."""

    NO = 0
    MAYBE = 1
    YES = 2


CONTROLS = ("stop", "continue", "break")
_WHO = frozenset(
    {
        "*", "anonymous", "users", "self", "dn", "dnattr", "group", "peername", "sockname",
        "domain", "sockurl", "set", "ssf", "transport_ssf", "tls_ssf", "sasl_ssf", "dynacl",
        "aci", "realanonymous", "realusers", "realself", "realdn", "realdnattr",
    }
)  # fmt: skip
_SPEC = re.compile(r"^([A-Za-z_]+)(/[^.=]*)?(?:\.([^=]*))?(?:=(.*))?$", re.S)
_INDEX = re.compile(r"^\{(-?\d+)\}")


def words(text: str) -> list[str]:
    """Split a rule as slapd does: spaces and tabs separate, double quotes group (and are
    dropped), a backslash keeps the next character as it is.  Any other white space or
    control character makes the rule unprovable."""
    out: list[str] = []
    current: list[str] = []
    started = quoted = False
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            current.append(text[i + 1])
            started = True
            i += 2
            continue
        if c not in " \t" and (c.isspace() or ord(c) < 32 or ord(c) == 127):
            # slapd separates words by space and tab only: a no-break space, a control
            # character or a Unicode space would be part of a word for slapd, and a word
            # boundary for str.split; no reading of such a rule can be trusted.
            raise Unprovable(f"a character slapd does not read as white space in {text!r}")
        if c == '"':
            quoted = not quoted
            started = True
        elif c in " \t" and not quoted:
            if started:
                out.append("".join(current))
                current, started = [], False
        else:
            current.append(c)
            started = True
        i += 1
    if quoted:
        raise Unprovable(f"unbalanced quotes in {text!r}")
    if started:
        out.append("".join(current))
    return out


@dataclass(frozen=True)
class Spec:
    """``key[/ext][.style]=value`` (``group/groupOfNames/member.exact=cn=x``)."""

    key: str
    ext: str
    style: str
    value: str | None


def spec(word: str) -> Spec:
    if word == "*":
        return Spec("*", "", "", None)
    m = _SPEC.match(word)
    if m is None:
        return Spec("", "", "", word)
    return Spec(m.group(1).lower(), m.group(2) or "", (m.group(3) or "").lower(), m.group(4))


def _is_who(token: str) -> bool:
    s = spec(token)
    if s.key in ("self", "realself") and token[len(s.key) : len(s.key) + 1] in ("=", "+", "-"):
        return False  # "self=w": an access with the self modifier, not a <who>
    return s.key in _WHO


@dataclass(frozen=True)
class Clause:
    who: tuple[str, ...]
    access: str
    control: str

    @property
    def text(self) -> str:
        control = "" if self.control == "stop" else f" {self.control}"
        return f"by {' '.join(self.who)} {self.access}".rstrip() + control


@dataclass(frozen=True)
class Rule:
    origin: str
    """Where it was read, for messages: ``olcDatabase={1}mdb olcAccess {3}``."""
    what: tuple[str, ...]
    clauses: tuple[Clause, ...]
    text: str


def parse_rule(value: str, origin: str) -> Rule:
    """One olcAccess value (its ``{n}`` index already taken off)."""
    w = words(value)
    if not w or w[0].lower() != "to":
        raise Unprovable(f"{origin}: not an access rule: {value!r}")
    i = 1
    what: list[str] = []
    while i < len(w) and w[i].lower() != "by":
        what.append(w[i])
        i += 1
    if not what:
        raise Unprovable(f"{origin}: no <what> in {value!r}")
    clauses: list[Clause] = []
    while i < len(w):
        i += 1  # "by"
        who: list[str] = []
        while i < len(w) and _is_who(w[i]):
            who.append(w[i])
            i += 1
        if not who:
            raise Unprovable(f"{origin}: a 'by' without a <who> in {value!r}")
        access = ""
        if i < len(w) and w[i].lower() not in ("by", *CONTROLS):
            access = w[i]
            i += 1
        control = "stop"
        if i < len(w) and w[i].lower() in CONTROLS:
            control = w[i].lower()
            i += 1
        if i < len(w) and w[i].lower() != "by":
            raise Unprovable(f"{origin}: cannot read {w[i]!r} in {value!r}")
        clauses.append(Clause(tuple(who), access, control))
    return Rule(origin, tuple(what), tuple(clauses), " ".join(w))


def ordered_rules(values: Iterable[bytes | str], origin: str) -> list[Rule]:
    """The olcAccess values of one database, in their ``{n}`` order; a missing index
    (a value the service account may not read) makes the list unprovable."""
    indexed: list[tuple[int, str]] = []
    for raw in values:
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        m = _INDEX.match(text)
        if m is None:
            raise Unprovable(f"{origin}: an olcAccess value without its {{n}} index: {text!r}")
        indexed.append((int(m.group(1)), text[m.end() :]))
    indexed.sort()
    if [n for n, _ in indexed] != list(range(len(indexed))):
        raise Unprovable(f"{origin}: olcAccess values missing (not all of them are readable)")
    return [parse_rule(text, f"{origin} olcAccess {{{n}}}") for n, text in indexed]


# -- names: attribute types and DNs ----------------------------------------------------

_TOKENS = re.compile(r"'[^']*'|[()]|[^\s()']+")


def _description(text: str) -> tuple[str, list[str], str | None] | None:
    """An RFC 4512 AttributeTypeDescription -> (OID, NAMEs, SUP), read token by token so
    that words inside quoted strings (DESC) are never taken for keywords."""
    tokens = _TOKENS.findall(text)
    if len(tokens) < 2 or tokens[0] != "(":
        return None
    names: list[str] = []
    sup: str | None = None
    i = 2
    while i < len(tokens):
        word = tokens[i].upper()
        if word == "NAME" and i + 1 < len(tokens):
            if tokens[i + 1] == "(":
                j = i + 2
                while j < len(tokens) and tokens[j] != ")":
                    names.append(tokens[j].strip("'"))
                    j += 1
                i = j
            else:
                names.append(tokens[i + 1].strip("'"))
                i += 1
        elif word == "SUP" and i + 1 < len(tokens):
            sup = tokens[i + 1].strip("'")
            i += 1
        i += 1
    return tokens[1], names, sup


class AttributeTypes:
    """Attribute names, OIDs and SUP chains from the subschema's attributeTypes."""

    def __init__(self, descriptions: Iterable[str]) -> None:
        self._oid: dict[str, str] = {}
        self._sup: dict[str, str] = {}
        for text in descriptions:
            parsed = _description(text)
            if parsed is None:
                continue
            number, names, sup = parsed[0].lower(), parsed[1], parsed[2]
            for name in (number, *names):
                self._oid[name.lower()] = number
            if sup is not None:
                self._sup[number] = sup.lower()

    def __bool__(self) -> bool:
        return bool(self._oid)

    def oid(self, name: str) -> str | None:
        return self._oid.get(name.strip().lower())

    def covers(self, listed: str, attribute: str) -> Match:
        """Does ``attrs=<listed>`` select ``attribute`` (itself or a subtype of it)?"""
        want = self.oid(listed)
        current = self.oid(attribute)
        if want is None or current is None:
            return Match.MAYBE
        for _ in range(32):
            if current == want:
                return Match.YES
            sup = self._sup.get(current)
            if sup is None:
                return Match.NO
            current = self.oid(sup)
            if current is None:
                return Match.MAYBE
        return Match.MAYBE


Dn = tuple[str, ...]
_HEX = frozenset("0123456789abcdefABCDEF")


def _value(text: str) -> str:
    """An RDN value without its escapes (``\\,`` and ``\\2C`` are both ``,``), folded."""
    out = bytearray()
    i = 0
    while i < len(text):
        pair = text[i + 1 : i + 3]
        if text[i] == "\\" and len(pair) == 2 and set(pair) <= _HEX:
            out.append(int(pair, 16))
            i += 3
        elif text[i] == "\\" and i + 1 < len(text):
            out += text[i + 1].encode()
            i += 2
        else:
            out += text[i].encode()
            i += 1
    return " ".join(out.decode("utf-8", "replace").split()).lower()


def parse_name(text: str, types: AttributeTypes) -> Dn | None:
    """A DN as RDNs (leaf first), attribute types as OIDs, values case- and
    space-insensitive; None if it is not a DN whose types the schema knows."""
    if not text.strip():
        return ()
    try:
        parts = parse_dn(text, escape=False, strip=True)
    except (LDAPInvalidDnError, ValueError, IndexError):
        return None
    rdns: list[str] = []
    current: list[str] = []
    for attribute, value, separator in parts:
        oid = types.oid(attribute)
        if oid is None:
            return None
        current.append(f"{oid}={_value(value)}")
        if separator != "+":
            rdns.append("+".join(sorted(current)))
            current = []
    return None if current else tuple(rdns)


def within(dn: Dn, top: Dn) -> bool:
    """``dn`` is ``top`` or below it."""
    return len(dn) >= len(top) and dn[len(dn) - len(top) :] == top
