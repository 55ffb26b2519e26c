"""OpenLDAP access rules (``olcAccess``): may a user write her own OTP state?  (Pure.)

How slapd applies them (slapd.access(5)): the rules of the database holding the entry,
followed by the global (frontend) rules, are tried in order.  The first rule whose
``<what>`` (``dn``, ``filter``, ``attrs``) matches the entry and attribute is used: its
first ``by <who>`` clause matching the requester grants its access and stops, unless its
control says ``continue`` (the next clause of the same rule too) or ``break`` (the next
matching rule too).  Every rule ends with an implicit ``by * none``; a database with no
rules at all lets everyone read and only the rootdn write.  The rootdn bypasses the rules.

The question asked, for each state attribute of a user entry (any entry below base_dn):
can its own user, bound with her password or not bound at all (anonymous: she can always
do that), be granted write, add, delete or manage on it?  Either lets her roll the state
back to an old genuine value and replay a spent code.  The service account and the
rootdn may write (they write everyone's state anyway).

Nothing uncertain is read as safe.  A part that cannot be decided without the entry or
the requester at hand (a regex, a filter, a group, an object class, a peer address, a DN
that is not a plain name below a known one) counts both ways: the rule may apply, so a
write it grants counts; and it may not, so the evaluation goes on past it.  A value that
cannot be parsed makes the whole answer "cannot be proven".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from otpgate.directory.olcsyntax import (
    AttributeTypes,
    Clause,
    Dn,
    Match,
    Rule,
    Unprovable,
    parse_name,
    spec,
    within,
)

Requester = Literal["self", "anonymous"]
REQUESTERS: tuple[Requester, ...] = ("self", "anonymous")
"""The user bound with her own password, or not bound at all."""
_READ_LEVELS = frozenset({"none", "disclose", "auth", "compare", "search", "read"})
_WRITE_LEVELS = frozenset({"write", "add", "delete", "manage"})
_PRIVILEGES = frozenset("0dxcsrwazm")
_ANY_DN = ("*", ".*", "^.*$")


@dataclass(frozen=True)
class Target:
    """A state attribute of user entries below ``region`` (base_dn, or a database's
    suffix below it); ``trusted``: the service account and the rootdn."""

    region: Dn
    attribute: str
    trusted: frozenset[Dn]
    types: AttributeTypes


def _scoped(style: str, dn: Dn, region: Dn) -> Match:
    """Entries named by ``dn.<style>=dn`` against the entries of ``region``."""
    if style in ("base", "baseobject", "exact"):
        return Match.MAYBE if within(dn, region) else Match.NO
    if style in ("sub", "subtree"):
        return Match.YES if within(region, dn) else Match.MAYBE if within(dn, region) else Match.NO
    if style == "children":
        if within(region, dn) and region != dn:
            return Match.YES
        return Match.MAYBE if within(dn, region) else Match.NO
    if style in ("one", "onelevel") or style.startswith("level"):
        return Match.MAYBE if within(dn, region) or within(region, dn) else Match.NO
    return Match.MAYBE


def _what_part(token: str, target: Target) -> Match:
    s = spec(token)
    if s.key == "*":
        return Match.YES
    if s.key == "dn":
        if s.style in ("", "regex") or s.value is None:
            return Match.YES if s.value in _ANY_DN else Match.MAYBE
        dn = parse_name(s.value, target.types)
        return Match.MAYBE if dn is None else _scoped(s.style, dn, target.region)
    if s.key in ("attrs", "attr"):
        found = Match.NO
        for item in (s.value or "").split(","):
            name = item.strip()
            if name.lower() in ("entry", "children"):
                continue
            if not name or name[0] in "@!" or ";" in name:
                found = max(found, Match.MAYBE)  # object classes, options: not resolved
            else:
                found = max(found, target.types.covers(name, target.attribute))
        return found
    if s.key == "val":
        return Match.MAYBE  # some values only
    if s.key == "filter":
        return Match.MAYBE
    raise Unprovable(f"unknown <what> {token!r}")


def what_matches(rule: Rule, target: Target) -> Match:
    return min((_what_part(t, target) for t in rule.what), default=Match.YES)


def _who_part(token: str, target: Target, requester: Requester) -> Match:
    s = spec(token)
    bound = requester == "self"
    if s.key == "*":
        return Match.YES
    if s.key in ("anonymous", "realanonymous"):
        return Match.NO if bound else Match.YES
    if s.key in ("users", "realusers"):
        return Match.YES if bound else Match.NO
    if s.key in ("self", "realself"):
        if not bound:
            return Match.NO
        return Match.YES if not s.style and s.value is None else Match.MAYBE
    if s.key in ("dn", "realdn"):
        style, _, modifier = s.style.partition(",")
        value = s.value or ""
        if style in ("", "regex") or "expand" in modifier or "$" in value:
            return Match.YES if value in _ANY_DN else Match.MAYBE
        dn = parse_name(value, target.types)
        if dn is None:
            return Match.MAYBE
        if not bound:  # an anonymous client's name is empty
            return Match.MAYBE if dn == () else Match.NO
        if style in ("base", "baseobject", "exact") and dn in target.trusted:
            return Match.NO
        return _scoped(style, dn, target.region)
    if s.key in ("dnattr", "realdnattr", "group") and not bound:
        return Match.NO  # membership and DN-valued attributes name bound users only
    return Match.MAYBE  # dnattr, group, set, peer, ssf, dynacl: not decided here


def who_matches(clause: Clause, target: Target, requester: Requester) -> Match:
    return min(_who_part(t, target, requester) for t in clause.who)


def grants_write(access: str) -> bool:
    """Whether ``<access>`` grants write, add, delete or manage (unknown: yes)."""
    a = access.lower()
    for prefix in ("realself", "self"):
        if a.startswith(prefix):
            a = a[len(prefix) :]
            break
    if a == "" or a in _READ_LEVELS:
        return False  # no access given means +0
    if a in _WRITE_LEVELS:
        return True
    if a[:1] in ("=", "+", "-") and a[1:] and set(a[1:]) <= _PRIVILEGES:
        return a[0] != "-" and bool(set(a[1:]) & set("wazm"))
    return True


@dataclass(frozen=True)
class Finding:
    rule: Rule
    clause: Clause
    attributes: tuple[str, ...]
    requester: Requester
    certain: bool

    def __str__(self) -> str:
        verb = "lets" if self.certain else "may let"
        who = (
            "a user write her own"
            if self.requester == "self"
            else "anonymous clients (any user, unbound) write a user's"
        )
        return (
            f"{self.rule.origin} ({self.rule.text}): {self.clause.text!r} {verb} {who} "
            f"{', '.join(self.attributes)}"
        )


def evaluate(rules: Sequence[Rule], target: Target, requester: Requester) -> Finding | None:
    """The first clause that may grant ``requester`` write on ``target``, or None."""
    for rule in rules:
        applies = what_matches(rule, target)
        if applies is Match.NO:
            continue
        falls_through = False
        for clause in rule.clauses:
            matched = who_matches(clause, target, requester)
            if matched is Match.NO:
                continue
            if grants_write(clause.access):
                certain = applies is Match.YES and matched is Match.YES
                return Finding(rule, clause, (target.attribute,), requester, certain)
            if clause.control == "continue":
                continue
            if clause.control == "break":
                falls_through = True
            if matched is Match.YES:
                break  # stop or break: no later clause of this rule
        if applies is Match.YES and not falls_through:
            return None  # this rule decides (at worst its implicit "by * none")
    return None  # the implicit "access to * by * none", or read for all without rules
