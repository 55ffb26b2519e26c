"""Exemptions and the grace for users not yet enrolled: who may log in without a code, where,
from where and until when (``[[policy.exempt]]``, ``[[policy.grace]]``).  Pure: the policy
step (``policy.py``) asks them with the entry the pipeline resolved, the channel and the
time; parsing lives in ``exemptconfig.py``.

An exemption names accounts one way (an exact DN, a subtree, a DN pattern or a group; or
none, for an exemption by source network alone) and may narrow itself to source networks,
to LDAP listeners and RADIUS clients, and to a time: after ``until`` it is gone, and the
decision says which exemption ended (the audit shows it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from otpgate.auth.requests import Channel
from otpgate.configfile import Network, in_networks
from otpgate.dn import MAX_MEMO_DN, dn_key, normalise_dn

KINDS = ("dn", "subtree", "pattern", "group")

_WILDCARD = r"(?:[^+\\]|\\.)*"
"""What ``*`` in a pattern's value stands for: any characters of that one value (an escaped
character counts as one; an unescaped ``+`` would start another value of the RDN)."""


def rdn_pattern(rdn: str) -> re.Pattern[str]:
    """One canonical RDN of a pattern (``uid=svc-*``) as a regular expression matched on the
    canonical RDN of a DN (``dn.py``): the type exactly, ``*`` anywhere in the value."""
    attribute, _, value = rdn.partition("=")
    parts = (re.escape(p) for p in value.split("*"))
    return re.compile(re.escape(attribute) + "=" + _WILDCARD.join(parts))


def pattern_rdns(pattern: str) -> tuple[str, ...]:
    """The canonical RDNs of a DN pattern; ValueError says why it is not one."""
    key = dn_key(pattern)
    if not key:
        raise ValueError(f"{pattern!r} is not a DN pattern (a DN whose values may hold *)")
    for rdn in key:
        if "+" in rdn.replace("\\+", ""):
            raise ValueError(f"{pattern!r}: a pattern's RDNs have one value each")
    return key


@dataclass(frozen=True)
class Exemption:
    kind: str
    """"dn", "subtree", "pattern", "group", or "network" (source networks alone)."""
    value: str = ""
    """The DN, subtree, pattern or group as written ("" for "network")."""
    networks: tuple[Network, ...] = ()
    """Only logins from these source addresses (empty: from anywhere)."""
    listeners: tuple[str, ...] = ()
    """Only through these LDAP listeners (listen strings); with ``nas`` empty too: anywhere."""
    nas: tuple[str, ...] = ()
    """Only through these RADIUS clients (their names, or their networks as written)."""
    until: float | None = None
    """When the exemption ends (Unix time); None: it does not."""
    until_text: str = ""
    """``until`` as the admin wrote it, for reasons and reports."""
    note: str = ""

    @property
    def label(self) -> str:
        if self.kind == "network":
            return "network " + ", ".join(str(n) for n in self.networks)
        return f"{self.kind} {self.value}"

    @property
    def by_name(self) -> bool:
        """It is decided by the bind name alone (no lookup needed)."""
        return self.kind in ("dn", "subtree", "pattern")

    def scoped(self, channel: Channel) -> bool:
        """Whether the exemption holds on ``channel`` (by its listener or NAS)."""
        if not self.listeners and not self.nas:
            return True
        if channel.kind == "listener":
            return channel.where in self.listeners
        if channel.kind == "NAS":
            return channel.where in self.nas
        return False

    def holds(self, channel: Channel, client: str | None) -> bool:
        """The exemption's scope and networks admit this login (its accounts aside)."""
        if not self.scoped(channel):
            return False
        return not self.networks or in_networks(client, self.networks)

    def reason(self) -> str:
        until = f" until {self.until_text}" if self.until is not None else ""
        return f"exempt: {self.label}{until}"

    def ended(self) -> str:
        return f"exemption {self.label} ended {self.until_text}"


@dataclass(frozen=True)
class Grace:
    """Members of ``group`` who hold no token yet need no code until ``until``."""

    group: str
    until: float
    until_text: str

    def reason(self) -> str:
        return f"grace: not yet enrolled (member of {self.group} until {self.until_text})"

    def ended(self) -> str:
        return f"grace for {self.group} ended {self.until_text}"


class Exemptions:
    """The exemptions of a policy, compiled: DN kinds matched on canonical RDNs, each DN's
    matches remembered (the same few thousand DNs log in all day; a DN's matches do not
    change with the time, which is checked on every login)."""

    def __init__(self, exemptions: tuple[Exemption, ...]) -> None:
        self.all = exemptions
        self._dns: dict[str, list[int]] = {}
        self._subtrees: list[tuple[tuple[str, ...], int]] = []
        self._patterns: list[tuple[tuple[re.Pattern[str], ...], int]] = []
        self._groups: dict[str, list[int]] = {}
        self._networks: list[int] = []
        for i, e in enumerate(exemptions):
            if e.kind == "dn":
                self._dns.setdefault(normalise_dn(e.value), []).append(i)
            elif e.kind == "subtree" and (key := dn_key(e.value)):
                self._subtrees.append((key, i))
            elif e.kind == "pattern":
                self._patterns.append((tuple(rdn_pattern(r) for r in pattern_rdns(e.value)), i))
            elif e.kind == "group":
                self._groups.setdefault(normalise_dn(e.value), []).append(i)
            elif e.kind == "network":
                self._networks.append(i)
        self._memo = lru_cache(maxsize=4096)(self._by_dn)

    def __bool__(self) -> bool:
        return bool(self.all)

    @property
    def by_name(self) -> bool:
        return any(e.by_name for e in self.all)

    def named(self, dn: str) -> tuple[Exemption, ...]:
        """The exemptions whose DN, subtree or pattern covers ``dn``."""
        if not (self._dns or self._subtrees or self._patterns):
            return ()
        found = self._memo(dn) if len(dn) <= MAX_MEMO_DN else self._by_dn(dn)
        return tuple(self.all[i] for i in found)

    def _by_dn(self, dn: str) -> tuple[int, ...]:
        key = dn_key(dn)
        if key is None:
            return ()
        found = list(self._dns.get(",".join(key), ()))
        found += [i for sub, i in self._subtrees if len(key) > len(sub) and key[-len(sub) :] == sub]
        found += [
            i
            for rdns, i in self._patterns
            if len(rdns) == len(key) and all(r.fullmatch(k) for r, k in zip(rdns, key, strict=True))
        ]
        return tuple(sorted(found))

    def matching(self, dn: str, groups: set[str]) -> list[Exemption]:
        """Every exemption that names this account (by DN, subtree, pattern or one of its
        ``groups``, canonical) or names no account at all (source networks alone)."""
        found = list(self.named(dn))
        for group in groups & self._groups.keys():
            found += [self.all[i] for i in self._groups[group]]
        found += [self.all[i] for i in self._networks]
        return found


def first_active(
    candidates: list[Exemption] | tuple[Exemption, ...],
    channel: Channel,
    client: str | None,
    now: float,
) -> tuple[Exemption | None, Exemption | None]:
    """(the first exemption that holds now, the first that would have but has ended)."""
    ended: Exemption | None = None
    for exemption in candidates:
        if not exemption.holds(channel, client):
            continue
        if exemption.until is None or now < exemption.until:
            return exemption, None
        ended = ended or exemption
    return None, ended


def grace_for(
    graces: tuple[Grace, ...], groups: set[str], now: float
) -> tuple[Grace | None, Grace | None]:
    """(the grace a user without a token is in now, the first one of hers that has ended)."""
    ended: Grace | None = None
    for grace in graces:
        if normalise_dn(grace.group) not in groups:
            continue
        if now < grace.until:
            return grace, None
        ended = ended or grace
    return None, ended
