"""``otpgate doctor``: judging what was found in the live directory (pure).

The probing (``doctor_live.py``) collects facts; this module turns them into a checklist
of :class:`Check` items, each with a fix.  It also reads the two things it needs to
understand from the wire: RFC 4512 attribute type descriptions (the subschema) and AD
security descriptors (the DACL of a user entry, to tell who may read or write otpgate's
attributes without having to be every user).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from otpgate.codec import Syntax
from otpgate.directory.config import MappedAttribute

# -- the checklist ---------------------------------------------------------------------


class Status(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True)
class Check:
    area: str
    status: Status
    detail: str
    fix: str = ""

    def to_dict(self) -> dict[str, str]:
        doc = {"area": self.area, "status": self.status.value, "detail": self.detail}
        if self.fix:
            doc["fix"] = self.fix
        return doc


_MARK = {Status.OK: "[ ok ]", Status.WARN: "[warn]", Status.FAIL: "[FAIL]", Status.SKIP: "[skip]"}


def render(checks: Sequence[Check]) -> str:
    lines = []
    for check in checks:
        lines.append(f"{_MARK[check.status]} {check.area}: {check.detail}")
        if check.fix and check.status in (Status.WARN, Status.FAIL):
            lines.extend(f"       fix: {line}" for line in check.fix.splitlines())
    counts = {s: sum(1 for c in checks if c.status is s) for s in Status}
    lines.append(
        f"\n{counts[Status.OK]} ok, {counts[Status.WARN]} warning(s), "
        f"{counts[Status.FAIL]} failure(s), {counts[Status.SKIP]} skipped"
    )
    return "\n".join(lines)


def failed(checks: Sequence[Check]) -> bool:
    return any(c.status is Status.FAIL for c in checks)


# -- schema ------------------------------------------------------------------------------

SYNTAX_OIDS = {
    Syntax.UNICODE: {"1.3.6.1.4.1.1466.115.121.1.15"},
    Syntax.DIRECTORY: {"1.3.6.1.4.1.1466.115.121.1.15"},
    Syntax.OCTET: {"1.3.6.1.4.1.1466.115.121.1.40", "1.3.6.1.4.1.1466.115.121.1.5"},
    Syntax.POSTAL: {"1.3.6.1.4.1.1466.115.121.1.41"},
}
AD_SYNTAX = {Syntax.UNICODE: "2.5.5.12", Syntax.DIRECTORY: "2.5.5.12", Syntax.OCTET: "2.5.5.10"}


@dataclass(frozen=True)
class AttributeType:
    """One RFC 4512 AttributeTypeDescription (only what the doctor needs)."""

    oid: str
    names: tuple[str, ...]
    sup: str | None
    syntax: str | None
    length: int | None
    single_value: bool


_NAMES = re.compile(r"\bNAME\s+(?:'([^']*)'|\(\s*((?:'[^']*'\s*)+)\))")
_SUP = re.compile(r"\bSUP\s+([\w.-]+)")
_SYNTAX = re.compile(r"\bSYNTAX\s+'?([\d.]+)'?(?:\{(\d+)\})?")


def parse_attribute_type(text: str) -> AttributeType | None:
    body = text.strip()
    if not body.startswith("("):
        return None
    oid_match = re.match(r"\(\s*([\w.-]+)", body)
    if oid_match is None:
        return None
    names: tuple[str, ...] = ()
    name_match = _NAMES.search(body)
    if name_match:
        if name_match.group(1) is not None:
            names = (name_match.group(1),)
        else:
            names = tuple(re.findall(r"'([^']*)'", name_match.group(2)))
    sup = _SUP.search(body)
    syntax = _SYNTAX.search(body)
    return AttributeType(
        oid=oid_match.group(1),
        names=names,
        sup=sup.group(1) if sup else None,
        syntax=syntax.group(1) if syntax else None,
        length=int(syntax.group(2)) if syntax and syntax.group(2) else None,
        single_value=bool(re.search(r"\bSINGLE-VALUE\b", body)),
    )


class Subschema:
    """Attribute types by lower-cased name, with SYNTAX inherited through SUP."""

    def __init__(self, descriptions: Iterable[str]) -> None:
        self.types: dict[str, AttributeType] = {}
        for text in descriptions:
            parsed = parse_attribute_type(text)
            if parsed is not None:
                for name in (*parsed.names, parsed.oid):
                    self.types[name.lower()] = parsed

    def get(self, name: str) -> AttributeType | None:
        found = self.types.get(name.lower())
        seen = 0
        resolved = found
        while resolved is not None and resolved.syntax is None and resolved.sup and seen < 10:
            resolved = self.types.get(resolved.sup.lower())
            seen += 1
        if found is None:
            return None
        if resolved is not None and found.syntax is None:
            return AttributeType(
                found.oid,
                found.names,
                found.sup,
                resolved.syntax,
                resolved.length,
                found.single_value,
            )
        return found


@dataclass(frozen=True)
class AdAttributeSchema:
    """What AD's attributeSchema object says (CN=Schema,CN=Configuration)."""

    syntax: str
    single_value: bool
    range_upper: int | None
    schema_id: uuid.UUID | None
    property_set: uuid.UUID | None


ROLES = {"seed": "encrypted seeds", "tokens": "token records", "used": "one-time-use state"}


def check_attribute(
    role: str,
    mapped: MappedAttribute,
    found: AttributeType | None,
    ad: AdAttributeSchema | None = None,
) -> list[Check]:
    name = mapped.spec.name
    area = f"schema {name} ({ROLES.get(role, role)})"
    if found is None:
        return [
            Check(
                area,
                Status.FAIL,
                f"the directory's schema has no attribute {name}",
                "load schema/otpgate.schema (openldap-schema profile) or map this role to an "
                "attribute the server has ([directory.attributes])",
            )
        ]
    checks = []
    expected = SYNTAX_OIDS[mapped.spec.syntax]
    if found.syntax not in expected:
        checks.append(
            Check(
                area,
                Status.FAIL,
                f"syntax {found.syntax} but otpgate is configured for "
                f"{mapped.spec.syntax.value} ({', '.join(sorted(expected))})",
                f'set [directory.attributes].{role} = {{ name = "{name}", syntax = "..." }} '
                "to the attribute's real syntax, or map another attribute",
            )
        )
    elif ad is not None and AD_SYNTAX.get(mapped.spec.syntax) not in (None, ad.syntax):
        checks.append(
            Check(
                area,
                Status.FAIL,
                f"AD attributeSyntax {ad.syntax}, expected {AD_SYNTAX.get(mapped.spec.syntax)}",
            )
        )
    else:
        checks.append(Check(area, Status.OK, f"syntax {found.syntax} ({mapped.spec.syntax.value})"))
    single = ad.single_value if ad is not None else found.single_value
    if role == "tokens" and single:
        checks.append(
            Check(
                area,
                Status.FAIL,
                "single-valued: it can hold only one token record",
                "map tokens to a multi-valued attribute (AD registeredAddress)",
            )
        )
    else:
        checks.append(Check(area, Status.OK, "single-valued" if single else "multi-valued"))
    limit = ad.range_upper if ad is not None and ad.range_upper else found.length
    configured = mapped.spec.max_size
    if limit is None:
        checks.append(
            Check(
                area, Status.OK, f"no size limit published; otpgate uses {configured or 'no limit'}"
            )
        )
    elif configured is None or configured > limit:
        checks.append(
            Check(
                area,
                Status.FAIL if configured is not None else Status.WARN,
                f"the server accepts at most {limit}, otpgate is configured for "
                f"{configured or 'no limit'}: an oversize write would be refused half-way",
                f'set [directory.attributes].{role} = {{ name = "{name}", '
                f'syntax = "{mapped.spec.syntax.value}", max_size = {limit} }}',
            )
        )
    else:
        checks.append(Check(area, Status.OK, f"size limit {limit}, otpgate keeps to {configured}"))
    return checks


# -- TLS and servers -------------------------------------------------------------------------


def check_tls(url: str, how: str, ca_file: str | None) -> Check:
    if how == "plain":
        return Check(
            f"TLS {url}",
            Status.WARN,
            "plain LDAP (allowed only to a loopback host): passwords travel unencrypted",
            "use an ldaps:// URL or [directory].start_tls = true",
        )
    trust = f"CA {ca_file}" if ca_file else "the system trust store"
    label = "LDAPS" if how == "ldaps" else "StartTLS"
    return Check(
        f"TLS {url}", Status.OK, f"{label}, certificate and host name verified against {trust}"
    )


GC_PORTS = (3268, 3269)
RODC_CAPABILITY = "1.2.840.113556.1.4.1920"


def check_write_server(
    url: str, pinned: bool, port: int, capabilities: Sequence[str], server: str, urls: int
) -> list[Check]:
    area = f"write server {url}"
    checks = []
    if port in GC_PORTS:
        checks.append(
            Check(
                area,
                Status.FAIL,
                "a global catalog port: read-only, partial attributes",
                "use the DC's LDAP port (389 with StartTLS, or 636)",
            )
        )
    if RODC_CAPABILITY in capabilities:
        checks.append(
            Check(
                area,
                Status.FAIL,
                "a read-only domain controller (RODC)",
                'set [directory].write_url to a writable DC, or "discover"',
            )
        )
    if not pinned and server == "ad" and urls > 1:
        checks.append(
            Check(
                "write pinning",
                Status.WARN,
                f"{urls} URLs and no write_url: OTP state follows failover, so one code could "
                "be accepted on two DCs before replication",
                'set [directory].write_url = "discover" (the PDC emulator)',
            )
        )
    elif pinned:
        checks.append(Check("write pinning", Status.OK, f"OTP state pinned to {url}"))
    return checks


def check_write_probe(role: str, name: str, url: str, code: int, message: str) -> Check:
    area = f"service account writes {name} ({ROLES.get(role, role)})"
    if code == 0:
        return Check(area, Status.OK, f"allowed on {url} (no-op Modify)")
    if code == 65:
        return Check(
            area,
            Status.OK,
            f"allowed; the probe entry lacks the auxiliary class "
            f"(added at its first enrollment): {message}",
        )
    if code == 10:
        return Check(
            area,
            Status.FAIL,
            f"{url} answered with a referral: a read-only replica",
            "point [directory].write_url at the provider / a writable DC",
        )
    if code == 50:
        return Check(
            area,
            Status.FAIL,
            "insufficient access (50)",
            "grant the service account write access: OpenLDAP schema/acl-openldap.conf; "
            "AD schema/ad/apply-acl.sh (README §5)",
        )
    return Check(area, Status.FAIL, f"refused: {code} {message}")


def check_service_read(name: str, readable: bool | None) -> Check:
    area = f"service account reads {name}"
    if readable is None:
        return Check(area, Status.SKIP, "no value to read and none could be planted")
    if readable:
        return Check(area, Status.OK, "values come back")
    return Check(
        area,
        Status.FAIL,
        "a value is there but does not come back",
        "grant the service account read access to the attribute",
    )


def user_access_checks(
    name: str, user: str, reads: bool | None, write_code: int | None, server: str
) -> list[Check]:
    fix = (
        "run schema/ad/apply-acl.sh for the users' OU (schema/ad/README.md §4-5): it removes "
        "Authenticated Users' read and SELF write on the three attributes"
        if server == "ad"
        else "load schema/acl-openldap.conf's rules (service account write, * none) before "
        "any 'access to * by users read' rule"
    )
    checks = []
    if reads is None:
        checks.append(Check(f"user reads {name}", Status.SKIP, "nothing to read"))
    elif reads:
        checks.append(
            Check(
                f"user reads {name}",
                Status.FAIL,
                f"ordinary user {user} can read it (encrypted, but lockout and token "
                "records leak, and seeds can be attacked offline)",
                fix,
            )
        )
    else:
        checks.append(Check(f"user reads {name}", Status.OK, f"{user} cannot read it"))
    if write_code is None:
        checks.append(Check(f"user writes {name}", Status.SKIP, "not probed"))
    elif write_code in (0, 65, 19, 20):
        checks.append(
            Check(
                f"user writes {name}",
                Status.FAIL,
                f"ordinary user {user} can write their own {name}: they could roll a counter "
                "back and replay a code",
                fix,
            )
        )
    else:
        checks.append(Check(f"user writes {name}", Status.OK, f"refused ({write_code})"))
    return checks


def first_text(values: Any) -> str | None:
    if not values:
        return None
    value = values[0]
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
