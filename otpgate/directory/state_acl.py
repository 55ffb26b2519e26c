"""May users write their own OTP state?  What a server shows, and the verdict.  (Pure.)

On OpenLDAP the OTP state lives in the users' own entries unless ``[directory] state_dn``
is set.  Encryption stops forged values, not an old genuine value written back: a user who
may write her own state attributes (``by self write``, ``by users write``, ``by * write``
...) saves her use state, logs in, writes it back and replays the code.  So the gateway
(``state_acl_guard.py``) and ``otpgate doctor`` (``admin/doctor_olc.py``) read, as the
service account, what slapd decides by:

* the subschema's attribute types (``attrs=postalAddress`` also selects its subtype
  registeredAddress), from the root DSE's ``subschemaSubentry``;
* ``cn=config``: each database's ``olcSuffix``, ``olcRootDN`` and ``olcAccess``, and the
  frontend's (global) ``olcAccess`` (the service account needs read there:
  ``schema/acl-openldap-config.conf``; never the rest of cn=config);

and evaluate the rules of every database holding entries below base_dn
(``olcaccess.py``).  Anything that cannot be read or evaluated with certainty is
"cannot be proven", which the gateway treats like "writable".  The probe is a step (a
generator of ``Query``), so the gateway and the CLI run the same logic.
"""

from __future__ import annotations

import re
from collections.abc import Generator, Sequence
from dataclasses import dataclass, replace

from otpgate import ber
from otpgate.directory.config import DirectoryConfig
from otpgate.directory.ldapdata import SCOPE_BASE, SCOPE_SUBTREE, SearchEntry
from otpgate.directory.olcaccess import REQUESTERS, Finding, Target, evaluate
from otpgate.directory.olcsyntax import (
    AttributeTypes,
    Rule,
    Unprovable,
    ordered_rules,
    parse_name,
    within,
)
from otpgate.directory.replication import Query
from otpgate.errors import DirectoryError, DirectoryUnavailable

DATABASE_ATTRIBUTES = ("objectClass", "olcSuffix", "olcRootDN", "olcAccess")
FULL_ACL_BACKENDS = ("mdb", "hdb", "bdb")
"""Backends on which slapd applies every access rule (slapd.access(5), "OPERATION
REQUIREMENTS"); others (ldap, meta, sql...) may apply only some of them."""

ACL_FIX = (
    "let nobody but the service account write the state attributes (the otpgate rules of "
    "schema/acl-openldap.conf before any rule of your own) and let the service account read "
    "the access rules in cn=config (schema/acl-openldap-config.conf); or keep the state in "
    "a container only the service account writes ([directory] state_dn, then otpgate "
    "migrate-state); only where users writing their own OTP state is an accepted risk, "
    "allow_self_writable_state = true"
)

_ANY = ber.filter_present(b"objectClass")
_DATABASES = Query(
    "cn=config",
    "(objectClass=olcDatabaseConfig)",
    ber.filter_equal(b"objectClass", b"olcDatabaseConfig"),
    DATABASE_ATTRIBUTES,
    SCOPE_SUBTREE,
)
_KIND = re.compile(r"^\s*olcDatabase\s*=\s*\{-?\d+\}([A-Za-z]+)", re.I)


@dataclass(frozen=True)
class Database:
    dn: str
    suffixes: tuple[str, ...] = ()
    root_dns: tuple[str, ...] = ()
    access: tuple[bytes, ...] = ()
    frontend: bool = False

    @property
    def name(self) -> str:
        return self.dn.split(",", 1)[0]

    @property
    def kind(self) -> str:
        m = _KIND.match(self.dn)
        return m.group(1).lower() if m else ""


@dataclass(frozen=True)
class AclFacts:
    """What one server showed (``unreadable``: why it showed too little to judge)."""

    url: str
    attribute_types: tuple[str, ...] = ()
    databases: tuple[Database, ...] = ()
    unreadable: str | None = None


def _texts(entry: SearchEntry, name: str) -> tuple[str, ...]:
    return tuple(v.decode("utf-8", "replace") for v in entry.attributes.get(name.lower(), []))


def database(entry: SearchEntry) -> Database:
    classes = {c.lower() for c in _texts(entry, "objectClass")}
    return Database(
        entry.dn,
        _texts(entry, "olcSuffix"),
        _texts(entry, "olcRootDN"),
        tuple(entry.attributes.get("olcaccess", [])),
        "olcfrontendconfig" in classes or entry.dn.lower().startswith("olcdatabase={-1}"),
    )


Probe = Generator[Query, list[SearchEntry], AclFacts]


def probe(url: str) -> Probe:
    """The searches that collect one server's :class:`AclFacts`.  A refused search ends
    the probe as "unreadable"; a lost connection (``DirectoryUnavailable``) propagates."""
    try:
        dse = yield Query("", "(objectClass=*)", _ANY, ("subschemaSubentry",), SCOPE_BASE)
        values = dse[0].attributes.get("subschemasubentry", []) if dse else []
        if not values:
            return AclFacts(url, unreadable="the root DSE names no subschemaSubentry")
        subschema = values[0].decode("utf-8", "replace")
        found = yield Query(subschema, "(objectClass=*)", _ANY, ("attributeTypes",), SCOPE_BASE)
        types = tuple(_texts(found[0], "attributeTypes")) if found else ()
    except DirectoryUnavailable:
        raise
    except DirectoryError as exc:
        return AclFacts(url, unreadable=f"the schema could not be read: {exc}")
    try:
        entries = yield _DATABASES
    except DirectoryUnavailable:
        raise
    except DirectoryError as exc:
        return AclFacts(
            url, types, unreadable=f"the service account may not read cn=config ({exc})"
        )
    if not entries:  # slapd answers noSuchObject where it hides an entry
        return AclFacts(url, types, unreadable="the service account may not read cn=config")
    return AclFacts(url, types, tuple(database(e) for e in entries))


@dataclass(frozen=True)
class AclVerdict:
    url: str
    findings: tuple[str, ...] = ()
    """Rules that let users write (or may let them write) their own state."""
    unproven: str | None = None
    """Why it could not be evaluated (counts as writable)."""

    @property
    def safe(self) -> bool:
        return not self.findings and self.unproven is None

    def evidence(self) -> str | None:
        if self.unproven is not None:
            return f"{self.url}: cannot be proven: {self.unproven}"
        if self.findings:
            return f"{self.url}: " + "; ".join(self.findings)
        return None


def state_attributes(config: DirectoryConfig) -> tuple[str, ...]:
    return (config.seed.spec.name, config.tokens.spec.name, config.used.spec.name)


PROXY_AUTHZ = "authzTo"
"""A user who may write her own ``authzTo`` names the service account there and, where
``olcAuthzPolicy`` is ``to``, ``any`` or ``all``, writes her state as the service account
with the proxied authorization control (RFC 4370): as good as writing it herself.  The
policy is not read (its default is not shown in cn=config, so "none" and "hidden" look the
same): ``authzTo`` is held to the state attributes' rule instead."""


def guarded_extra(types: AttributeTypes) -> tuple[str, ...]:
    """Attributes besides the state whose write by a user would let her write the state."""
    return (PROXY_AUTHZ,) if types.oid(PROXY_AUTHZ) is not None else ()


def judge(facts: AclFacts, config: DirectoryConfig) -> AclVerdict:
    """The verdict on one server's facts for the state attributes of ``config``."""
    if facts.unreadable is not None:
        return AclVerdict(facts.url, unproven=facts.unreadable)
    try:
        findings = _findings(facts, config)
    except Unprovable as exc:
        return AclVerdict(facts.url, unproven=str(exc))
    return AclVerdict(facts.url, tuple(findings))


def _holders(
    facts: AclFacts, types: AttributeTypes, base_dn: str
) -> list[tuple[Database, tuple[str, ...]]]:
    """The databases holding entries below base_dn, each with the part it holds."""
    region = parse_name(base_dn, types)
    if region is None:
        raise Unprovable(f"base_dn {base_dn!r} is not a DN the schema's attribute types name")
    holder: tuple[Database, tuple[str, ...]] | None = None  # (database, its suffix)
    below: list[tuple[Database, tuple[str, ...]]] = []
    for db in facts.databases:
        if db.frontend:
            continue
        for text in db.suffixes:
            suffix = parse_name(text, types)
            if suffix is None:
                raise Unprovable(f"{db.name}: its suffix {text!r} cannot be compared")
            if within(region, suffix):  # the deepest of these holds base_dn
                if holder is None or len(suffix) > len(holder[1]):
                    holder = (db, suffix)
            elif within(suffix, region):
                below.append((db, suffix))
    if holder is None:
        shown = "no database" if not facts.databases else "no database it shows"
        raise Unprovable(f"{shown} in cn=config holds {base_dn} (may the service account read it?)")
    return [(holder[0], region), *below]


def _findings(facts: AclFacts, config: DirectoryConfig) -> list[str]:
    types = AttributeTypes(facts.attribute_types)
    if not types:
        raise Unprovable("the subschema shows no attribute types")
    frontend: list[Rule] | None = None  # None: not visible to the service account
    for db in facts.databases:
        if db.frontend and db.access:
            frontend = ordered_rules(db.access, db.name)
    findings: dict[tuple[str, str, str, bool], Finding] = {}
    for db, region in _holders(facts, types, config.base_dn):
        if db.kind not in FULL_ACL_BACKENDS:
            raise Unprovable(f"{db.name}: slapd applies every access rule only on mdb databases")
        if not db.access:
            raise Unprovable(
                f"{db.name}: no olcAccess is visible: either it has none (then everybody may "
                "read the OTP state) or the service account may not read them"
            )
        rules = ordered_rules(db.access, db.name)
        if frontend is None and not _ends_for_everyone(rules):
            # slapd goes on with the frontend's (global) rules after the database's: rules
            # the service account cannot see may grant anything there.
            raise Unprovable(
                f"{db.name}: its rules can end without a decision and the frontend's "
                "(olcDatabase={-1}frontend) access rules are not visible to the service account"
            )
        rules = rules + (frontend or [])
        # The service account and the rootdn write every user's state anyway.
        names = (parse_name(dn, types) for dn in (config.bind_dn, *db.root_dns))
        trusted = frozenset(dn for dn in names if dn is not None)
        for attribute in (*state_attributes(config), *guarded_extra(types)):
            target = Target(region, attribute, trusted, types)
            for requester in REQUESTERS:
                finding = evaluate(rules, target, requester)
                if finding is not None:  # one line per rule, naming every attribute it opens
                    key = (finding.rule.origin, finding.clause.text, requester, finding.certain)
                    seen = findings.get(key)
                    if seen is not None:
                        finding = replace(finding, attributes=seen.attributes + finding.attributes)
                    findings[key] = finding
                    break
    return [str(f) for f in findings.values()]


def _ends_for_everyone(rules: list[Rule]) -> bool:
    """The last rule is ``to * ... by * <access>`` with no control after it: every request
    stops there, and the frontend's rules are never consulted."""
    if not rules:
        return False
    last = rules[-1]
    if [w.lower() for w in last.what] != ["*"] or not last.clauses:
        return False
    final = last.clauses[-1]
    return final.who == ("*",) and final.control == "stop"


def evidence(verdicts: Sequence[AclVerdict]) -> str | None:
    """Why OTP state may not be written (None: every server proved it safe)."""
    parts = [e for e in (v.evidence() for v in verdicts) if e is not None]
    return "; ".join(parts) or None
