"""Reply rules of a NAS: which attributes its Access-Accepts carry, from the user's groups and
entry.  Pure: parsed and encoded when the configuration loads (``parse_rules``), evaluated
per accepted login on what the pipeline read with the entry (``ReplyRules.reply``).

One ``[[radius.clients.reply]]`` table is one rule: a condition (``member_of`` any of these
groups; ``attribute`` with ``values`` or a ``pattern``; both; or none, which always holds)
and what it adds: ``attributes`` (static, encoded once here), ``from_entry`` (RADIUS
attribute = LDAP attribute of the entry), ``group_names`` (RADIUS attributes that get the
name of each ``member_of`` group the user is in).  ``reply_match = "first"`` (default): the
first rule that holds adds its attributes, and the search stops there unless that rule says
``fall_through = true``; ``"all"``: every rule that holds adds its attributes, in order.
An attribute that may appear once in an Access-Accept (RFC 2865 "0-1") keeps the first
value it gets.

Fail closed: a rule is never skipped on something unknown.  A membership the gateway could
not read (a group that is gone, an unreadable tokenGroups), an entry value that does not
convert, a value too many for a single-valued attribute or a reply that would not fit in a
packet refuse the login (``AuthorizationRefused``: the audited reason, never the packet's).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyrad.dictionary import Dictionary

from otpgate.auth.requests import Entitlement
from otpgate.configfile import Section
from otpgate.dn import dn_key, first_rdn_value
from otpgate.errors import AuthorizationRefused, ConfigError
from otpgate.radius.attributes import (
    ReplyAttribute,
    convert_entry_value,
    encode_value,
    reply_attribute,
)
from otpgate.radius.packet import AttributeKey, encode_attribute

REPLY_MATCHES = ("first", "all")
MAX_MATCHED = 1024
"""Characters of an entry value a ``pattern`` is tried on; longer values never match (a
value a user may write must not buy a long regular-expression search)."""
MAX_REPLY = 4096 - 20 - 18 - 800
"""Octets of attributes the rules may add: a packet holds 4096 (RFC 2865 section 3), less
the header, the Message-Authenticator and room for otpgate's own attributes (Class, the
Reply-Messages, MS-CHAPv2's answer); the request's Proxy-States come off it too."""

NO_VALUES: dict[str, tuple[bytes, ...]] = {}


@dataclass(frozen=True)
class Add:
    """One encoded attribute to add."""

    key: AttributeKey
    value: bytes
    single: bool

    @property
    def wire(self) -> bytes:
        return encode_attribute(self.key, self.value)


@dataclass(frozen=True)
class Copy:
    """An attribute whose values come from the entry."""

    attribute: ReplyAttribute
    source: str
    """The LDAP attribute, lower case."""
    where: str


@dataclass(frozen=True)
class Rule:
    where: str
    """The rule's key ("radius.clients[0].reply[1]"), in refusals."""
    groups: tuple[str, ...] = ()
    attribute: str | None = None
    values: frozenset[str] = frozenset()
    """Case-folded."""
    pattern: re.Pattern[str] | None = None
    adds: tuple[Add, ...] = ()
    copies: tuple[Copy, ...] = ()
    names: tuple[tuple[str, tuple[Add, ...]], ...] = ()
    """Per ``member_of`` group: its name as each ``group_names`` attribute."""
    fall_through: bool = False

    def __post_init__(self) -> None:
        # On the wire once, here: a login that matches the rule copies these bytes.
        wire = b"".join(add.wire for add in self.adds)
        named = tuple((g, b"".join(add.wire for add in adds)) for g, adds in self.names)
        object.__setattr__(self, "wire", wire)
        object.__setattr__(self, "named_wire", named)
        object.__setattr__(self, "conditional", bool(self.groups) or self.attribute is not None)

    wire: bytes = field(init=False, repr=False, compare=False)
    named_wire: tuple[tuple[str, bytes], ...] = field(init=False, repr=False, compare=False)
    conditional: bool = field(init=False, repr=False, compare=False)

    def holds(
        self,
        groups: tuple[str, ...],
        unknown: tuple[str, ...],
        values: dict[str, tuple[bytes, ...]],
    ) -> bool:
        if self.groups:
            for group in self.groups:
                if group in unknown:
                    raise AuthorizationRefused(
                        f"{self.where}: the membership of {group} could not be read"
                    )
            if not any(group in groups for group in self.groups):
                return False
        if self.attribute is None:
            return True
        return any(self._matches(raw) for raw in values.get(self.attribute, ()))

    def _matches(self, raw: bytes) -> bool:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return False
        if self.pattern is not None:
            return len(text) <= MAX_MATCHED and self.pattern.fullmatch(text) is not None
        return text.casefold() in self.values


@dataclass(frozen=True)
class ReplyRules:
    rules: tuple[Rule, ...]
    first: bool = True

    def __post_init__(self) -> None:
        # Only where a single-valued attribute can get two values (two rules, a rule's static
        # value and a copy, several groups' names) does a login need the slower path that
        # keeps the first; most NASes' rules never do.
        counts: dict[AttributeKey, int] = {}
        for rule in self.rules:
            adds = [*rule.adds, *(add for _group, named in rule.names for add in named)]
            keys = [a.key for a in adds if a.single]
            keys += [c.attribute.key for c in rule.copies if c.attribute.single]
            for key in keys:
                counts[key] = counts.get(key, 0) + 1
        object.__setattr__(self, "keep_first", any(n > 1 for n in counts.values()))
        reads = any(r.attribute is not None or r.copies for r in self.rules)
        object.__setattr__(self, "reads", reads)

    keep_first: bool = field(init=False, repr=False, compare=False)
    reads: bool = field(init=False, repr=False, compare=False)

    @property
    def groups(self) -> tuple[str, ...]:
        """The groups whose membership every resolved entry must carry."""
        return tuple(dict.fromkeys(g for rule in self.rules for g in rule.groups))

    @property
    def attributes(self) -> tuple[str, ...]:
        """The LDAP attributes read with every user entry (lower case)."""
        names = [a for rule in self.rules for a in (rule.attribute,) if a is not None]
        names += [copy.source for rule in self.rules for copy in rule.copies]
        return tuple(dict.fromkeys(names))

    def reply(self, facts: Entitlement, room: int = MAX_REPLY) -> bytes:
        """The attributes the rules give this entry, on the wire (Type, Length, Value each);
        AuthorizationRefused when that cannot be decided or does not fit in ``room``
        octets."""
        if self.keep_first:
            return self._reply_keeping_first(facts, room)
        groups = facts.groups
        values = dict(facts.attributes) if self.reads else NO_VALUES
        chunks: list[bytes] = []
        for rule in self.rules:
            if rule.conditional and not rule.holds(groups, facts.unknown_groups, values):
                continue
            chunks.append(rule.wire)
            for group, wire in rule.named_wire:
                if group in groups:
                    chunks.append(wire)
            for copy in rule.copies:
                key = copy.attribute.key
                for value in _copied(copy, values.get(copy.source, ())):
                    chunks.append(encode_attribute(key, value))
            if self.first and not rule.fall_through:
                break
        return _fitting(b"".join(chunks), room)

    def _reply_keeping_first(self, facts: Entitlement, room: int) -> bytes:
        """``reply`` where a single-valued attribute (RFC 2865 "0-1") may get several
        values: the first one stays."""
        groups = facts.groups
        values = dict(facts.attributes) if self.reads else NO_VALUES
        given: set[AttributeKey] = set()
        chunks: list[bytes] = []

        def add(key: AttributeKey, value: bytes, single: bool) -> None:
            if single:
                if key in given:
                    return
                given.add(key)
            chunks.append(encode_attribute(key, value))

        for rule in self.rules:
            if rule.conditional and not rule.holds(groups, facts.unknown_groups, values):
                continue
            for item in rule.adds:
                add(item.key, item.value, item.single)
            for group, names in rule.names:
                if group in groups:
                    for item in names:
                        add(item.key, item.value, item.single)
            for copy in rule.copies:
                for value in _copied(copy, values.get(copy.source, ())):
                    add(copy.attribute.key, value, copy.attribute.single)
            if self.first and not rule.fall_through:
                break
        return _fitting(b"".join(chunks), room)


def _fitting(wire: bytes, room: int) -> bytes:
    if len(wire) > room:
        raise AuthorizationRefused(
            f"the reply attributes take {len(wire)} octets, more than the {room} a reply holds"
        )
    return wire


def _copied(copy: Copy, found: tuple[bytes, ...]) -> list[bytes]:
    attr = copy.attribute
    if attr.single and len(found) > 1:
        raise AuthorizationRefused(
            f"{copy.where}: the entry's {copy.source} has {len(found)} values and "
            f"{attr.name} takes one"
        )
    try:
        return [convert_entry_value(attr, raw) for raw in found]
    except ValueError as exc:
        raise AuthorizationRefused(f"{copy.where}: the entry's {copy.source}: {exc}") from None


# -- the configuration ------------------------------------------------------------------------


def parse_rules(
    sec: Section, dictionary: Callable[[], Dictionary]
) -> ReplyRules | None:
    """``reply`` and ``reply_match`` of one ``[[radius.clients]]`` table (None: no rules).
    ``dictionary``: the RADIUS dictionaries, loaded on first use."""
    match = sec.choice("reply_match", REPLY_MATCHES, REPLY_MATCHES[0])
    raw = sec.raw("reply")
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{sec.key('reply')}: expected [[radius.clients.reply]] tables")
    rules = []
    for i, table in enumerate(raw):
        where = f"{sec.key('reply')}[{i}]"
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: expected a table")
        rules.append(_rule(Section(table, where), where, dictionary()))
    return ReplyRules(tuple(rules), first=match == "first")


def _rule(sec: Section, where: str, dictionary: Dictionary) -> Rule:
    groups = _groups(sec)
    attribute = sec.get("attribute", str, "") or None
    wanted = sec.strings("values")
    pattern_text = sec.get("pattern", str, "")
    if attribute is None and (wanted or pattern_text):
        raise ConfigError(f"{sec.key('attribute')}: values and pattern test an attribute: name it")
    if attribute is not None and bool(wanted) == bool(pattern_text):
        raise ConfigError(f"{sec.key('attribute')}: give values or a pattern, one of them")
    pattern = None
    if pattern_text:
        try:
            pattern = re.compile(pattern_text)
        except re.error as exc:
            raise ConfigError(f"{sec.key('pattern')}: not a regular expression: {exc}") from exc
    adds = _static(sec, dictionary)
    copies = _copies(sec, where, dictionary)
    names = _names(sec, groups, dictionary)
    if not (adds or copies or names):
        raise ConfigError(
            f"{where}: a rule adds attributes: give attributes, from_entry or group_names"
        )
    rule = Rule(
        where=where,
        groups=groups,
        attribute=attribute.lower() if attribute else None,
        values=frozenset(v.casefold() for v in wanted),
        pattern=pattern,
        adds=adds,
        copies=copies,
        names=names,
        fall_through=sec.get("fall_through", bool, False),
    )
    sec.done()
    return rule


def _groups(sec: Section) -> tuple[str, ...]:
    raw = sec.raw("member_of")
    groups = (raw,) if isinstance(raw, str) else sec.strings("member_of")
    for group in groups:
        if dn_key(group) is None:
            raise ConfigError(f"{sec.key('member_of')}: {group!r} is not a DN")
    return tuple(dict.fromkeys(groups))


def _table(sec: Section, name: str) -> dict[str, Any]:
    raw = sec.raw(name)
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{sec.key(name)}: expected a table of RADIUS attributes")
    return raw


def _attribute(sec: Section, table: str, spec: str, dictionary: Dictionary) -> ReplyAttribute:
    try:
        return reply_attribute(dictionary, spec)
    except ValueError as exc:
        raise ConfigError(f"{sec.key(table)}.{spec}: {exc}") from exc


def _static(sec: Section, dictionary: Dictionary) -> tuple[Add, ...]:
    adds: list[Add] = []
    for spec, raw in _table(sec, "attributes").items():
        attr = _attribute(sec, "attributes", spec, dictionary)
        values = raw if isinstance(raw, list) else [raw]
        if not values or (attr.single and len(values) > 1):
            count = "one value" if attr.single else "at least one value"
            raise ConfigError(f"{sec.key('attributes')}.{spec}: give {count}")
        for value in values:
            try:
                encoded = encode_value(attr, value)
            except ValueError as exc:
                raise ConfigError(f"{sec.key('attributes')}.{spec}: {exc}") from exc
            adds.append(Add(attr.key, encoded, attr.single))
    return tuple(adds)


def _copies(sec: Section, where: str, dictionary: Dictionary) -> tuple[Copy, ...]:
    copies = []
    for spec, source in _table(sec, "from_entry").items():
        attr = _attribute(sec, "from_entry", spec, dictionary)
        if not isinstance(source, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]*", source):
            raise ConfigError(
                f"{sec.key('from_entry')}.{spec}: expected an LDAP attribute name, not {source!r}"
            )
        copies.append(Copy(attr, source.lower(), f"{where}.from_entry.{spec}"))
    return tuple(copies)


def _names(
    sec: Section, groups: tuple[str, ...], dictionary: Dictionary
) -> tuple[tuple[str, tuple[Add, ...]], ...]:
    specs = sec.strings("group_names")
    if not specs:
        return ()
    if not groups:
        raise ConfigError(f"{sec.key('group_names')}: names of member_of groups: give member_of")
    named: list[tuple[str, tuple[Add, ...]]] = []
    for group in groups:
        adds = []
        for spec in specs:
            attr = _attribute(sec, "group_names", spec, dictionary)
            if not attr.text:
                raise ConfigError(f"{sec.key('group_names')}.{spec}: a group name is text")
            try:
                encoded = encode_value(attr, first_rdn_value(group))
            except ValueError as exc:
                raise ConfigError(f"{sec.key('group_names')}.{spec}: {group}: {exc}") from exc
            adds.append(Add(attr.key, encoded, attr.single))
        named.append((group, tuple(adds)))
    return tuple(named)


def check_sources(
    rules: ReplyRules, forbidden: dict[str, str]
) -> None:
    """ConfigError when a rule reads an attribute it must not (``forbidden``: lower-case
    name -> why): otpgate's state, passwords, what users may write themselves."""
    for rule in rules.rules:
        if rule.attribute is not None and rule.attribute in forbidden:
            raise ConfigError(f"{rule.where}.attribute: {forbidden[rule.attribute]}")
        for copy in rule.copies:
            if copy.source in forbidden:
                raise ConfigError(f"{copy.where}: {forbidden[copy.source]}")
