"""Who needs an OTP: exempt accounts, required groups, trusted networks, admins."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import lru_cache

from ldap3.core.exceptions import LDAPInvalidDnError  # type: ignore[import-untyped]
from ldap3.utils.dn import parse_dn  # type: ignore[import-untyped]

from otpgate.auth.config import PolicyConfig
from otpgate.configfile import Network

_HEX = frozenset("0123456789abcdefABCDEF")
_SPECIAL = ',+"\\<>;=#'


def _unescape(value: str) -> str:
    """An RFC 4514 attribute value without its escapes (``\\,`` and ``\\2C`` are ``,``)."""
    if "\\" not in value:
        return value
    out = bytearray()
    i = 0
    while i < len(value):
        pair = value[i + 1 : i + 3]
        if value[i] == "\\" and len(pair) == 2 and set(pair) <= _HEX:
            out.append(int(pair, 16))  # \XX: one octet of the UTF-8 value
            i += 3
        elif value[i] == "\\" and i + 1 < len(value):
            out += value[i + 1].encode()  # \c: the character itself
            i += 2
        else:
            out += value[i].encode()
            i += 1
    return out.decode("utf-8", "replace")


def _canonical_value(value: str) -> str:
    text = " ".join(_unescape(value).split()).lower()
    return "".join("\\" + c if c in _SPECIAL else c for c in text)


MAX_MEMO_DN = 1024
"""Longer names are never memoised: a bind name can be 256 KiB, and a cache of those would
let anyone who can send binds pin gigabytes (found in review); real DNs are far shorter."""


def dn_key(dn: str) -> tuple[str, ...] | None:
    """The RDNs of ``dn`` (RFC 4514), each canonical: attribute types and values compared
    case- and space-insensitively, escapes resolved (``cn=Smith\\, John`` is one RDN),
    multi-valued RDNs sorted.  None if ``dn`` is not a DN.  Memoised up to ``MAX_MEMO_DN``
    characters (a pure function of the text, asked twice per login and once per group:
    ldap3's parser is slow)."""
    return _dn_key_memo(dn) if len(dn) <= MAX_MEMO_DN else _dn_key(dn)


def _dn_key(dn: str) -> tuple[str, ...] | None:
    try:
        parts = parse_dn(dn, escape=False, strip=True)
    except (LDAPInvalidDnError, ValueError, IndexError):
        return None
    rdns: list[str] = []
    current: list[str] = []
    for attribute, value, separator in parts:
        current.append(f"{attribute.strip().lower()}={_canonical_value(value)}")
        if separator != "+":
            rdns.append("+".join(sorted(current)))
            current = []
    if current or not rdns:
        return None
    return tuple(rdns)


_dn_key_memo = lru_cache(maxsize=4096)(_dn_key)


def same_dn(a: str, b: str) -> bool:
    """Two DNs name the same entry (compared RDN by RDN, see ``dn_key``)."""
    key = dn_key(a)
    return key is not None and key == dn_key(b)


def normalise_dn(dn: str) -> str:
    """A canonical text of ``dn`` for comparisons (see ``dn_key``); unparsable names are
    only lower-cased, so they never equal a real DN's canonical form by accident."""
    key = dn_key(dn)
    return ",".join(key) if key is not None else "\x00" + dn.lower()


@dataclass(frozen=True)
class Decision:
    needs_otp: bool
    reason: str


class Policy:
    def __init__(self, config: PolicyConfig) -> None:
        self.config = config
        self._exempt = {normalise_dn(d) for d in config.exempt_dns}
        self._subtrees = tuple(key for d in config.exempt_subtrees if (key := dn_key(d)))
        self._required = {normalise_dn(g) for g in config.require_otp_groups}
        self._admins = {normalise_dn(g) for g in config.admin_groups}
        # Asked for every login with the same few thousand DNs: remembered per policy.
        self._exempt_memo = lru_cache(maxsize=4096)(self._is_exempt)

    def is_exempt(self, dn: str) -> bool:
        """``dn`` is an exempt DN, or lies below an exempt subtree (compared RDN by RDN)."""
        if not self._exempt and not self._subtrees:
            return False
        return self._exempt_memo(dn) if len(dn) <= MAX_MEMO_DN else self._is_exempt(dn)

    def _is_exempt(self, dn: str) -> bool:
        key = dn_key(dn)
        if key is None:
            return False
        if ",".join(key) in self._exempt:
            return True
        return any(len(key) > len(sub) and key[-len(sub) :] == sub for sub in self._subtrees)

    def decide(self, dn: str, groups: tuple[str, ...], client_ip: str | None) -> Decision:
        groups_norm = {normalise_dn(g) for g in groups}
        is_admin = bool(self._admins & groups_norm)
        if is_admin and self.config.admins_always_need_otp:
            return Decision(True, "administrator")
        if self.is_exempt(dn):
            return Decision(False, "exempt account")
        if client_ip is not None and self._trusted(client_ip):
            return Decision(False, "trusted network")
        if self._required and not (self._required & groups_norm):
            return Decision(False, "not in a group that requires an OTP")
        return Decision(True, "policy")

    def _trusted(self, client_ip: str) -> bool:
        return in_networks(client_ip, self.config.trusted_networks)


def in_networks(address: str | None, networks: tuple[Network, ...]) -> bool:
    """Whether ``address`` (an IP address as text) lies in one of ``networks``."""
    if address is None or not networks:
        return False
    try:
        addr = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(addr in net for net in networks)


def password_only_enrollment(
    network: str | None, now: float, networks: tuple[Network, ...], until: float | None
) -> bool:
    """Whether a user without a token may enroll a first device with the password alone from
    ``network`` (None: an address that grants nothing): from the configured networks, or
    from anywhere until the rollout window ends (``[web]
    password_only_enrollment_networks`` / ``password_only_enrollment_until``)."""
    if until is not None and now < until:
        return True
    return in_networks(network, networks)
