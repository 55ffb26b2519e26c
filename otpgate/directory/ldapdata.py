"""Plain LDAP data shared by the async (ldaptor) and sync (ldap3) sides: no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

# LDAP result codes used by otpgate (RFC 4511 §4.1.9).
SUCCESS = 0
PROTOCOL_ERROR = 2
COMPARE_FALSE = 5
COMPARE_TRUE = 6
NO_SUCH_ATTRIBUTE = 16
ATTRIBUTE_OR_VALUE_EXISTS = 20
NO_SUCH_OBJECT = 32
ENTRY_ALREADY_EXISTS = 68
INVALID_CREDENTIALS = 49
UNAVAILABLE = 52
UNWILLING_TO_PERFORM = 53

SCOPE_BASE = 0
SCOPE_SUBTREE = 2


@dataclass(frozen=True)
class LdapUrl:
    url: str
    host: str
    port: int
    ldaps: bool

    @classmethod
    def parse(cls, url: str) -> LdapUrl:
        parts = urlsplit(url)
        if parts.scheme not in ("ldap", "ldaps") or not parts.hostname:
            raise ValueError(f"{url!r} is not an ldap:// or ldaps:// URL")
        ldaps = parts.scheme == "ldaps"
        return cls(url, unquote(parts.hostname), parts.port or (636 if ldaps else 389), ldaps)


@dataclass(frozen=True)
class SearchEntry:
    dn: str
    attributes: dict[str, list[bytes]]
    """Attribute values by lower-cased attribute name."""

    def first(self, name: str) -> bytes | None:
        values = self.attributes.get(name.lower())
        return values[0] if values else None


@dataclass(frozen=True)
class Modification:
    op: int  # 0 add, 1 delete, 2 replace
    attribute: str
    values: tuple[bytes, ...]

    ADD = 0
    DELETE = 1
    REPLACE = 2


def parent_dn(dn: str) -> str:
    """The DN without its first RDN (commas escaped as \\, stay inside the RDN)."""
    i = 0
    while i < len(dn):
        if dn[i] == "\\":
            i += 2
            continue
        if dn[i] == ",":
            return dn[i + 1 :].lstrip()
        i += 1
    return ""
