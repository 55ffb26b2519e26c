"""``otpgate doctor``: probing the live directory (I/O; the judging is in ``doctor.py``).

What it touches: it reads the schema, the root DSEs and one user entry (the test user, or
the first user found).  Write access is probed with Modify operations that change nothing
(``delete v, add v`` of a value that is there, or ``add p, delete p`` of a probe value).
To see whether a value can be *read* it needs one: on an attribute that is empty on the
probe entry (so that user has no otpgate state there) it adds a probe value for the
duration of the read checks and removes it again.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from otpgate.admin import doctor_olc
from otpgate.admin.doctor import (
    AdAttributeSchema,
    Check,
    Status,
    Subschema,
    check_attribute,
    check_service_read,
    check_tls,
    check_write_probe,
    check_write_server,
    first_text,
    user_access_checks,
)
from otpgate.admin.doctor_acl import ad_acl_checks, parse_dacl, sid_text
from otpgate.admin.doctor_container import container_checks
from otpgate.admin.doctor_repl import collect, replication_checks
from otpgate.config import Config
from otpgate.directory.config import MappedAttribute
from otpgate.directory.ldapdata import SCOPE_BASE, SUCCESS, LdapUrl, Modification, SearchEntry
from otpgate.directory.records import UserEntry
from otpgate.directory.sync import SyncConnection, SyncStore, connect
from otpgate.enforcement import warnings as enforcement_warnings
from otpgate.errors import DirectoryError

SD_FLAGS_DACL = 0x04


@dataclass
class Probe:
    role: str
    mapped: MappedAttribute
    values: list[bytes] = field(default_factory=list)
    planted: bytes | None = None

    @property
    def name(self) -> str:
        return self.mapped.spec.name

    def no_op(self, value: bytes | None) -> list[Modification]:
        """A Modify that changes nothing but needs write access to the attribute."""
        present = self.values or ([self.planted] if self.planted is not None else [])
        if present:
            v = present[0]
            return [
                Modification(Modification.DELETE, self.name, (v,)),
                Modification(Modification.ADD, self.name, (v,)),
            ]
        p = value or probe_value()
        return [
            Modification(Modification.ADD, self.name, (p,)),
            Modification(Modification.DELETE, self.name, (p,)),
        ]


def probe_value() -> bytes:
    return f"otpgate-doctor-probe-{secrets.token_hex(6)}".encode()


class Doctor:
    def __init__(
        self,
        config: Config,
        store: SyncStore,
        test_user: str | None = None,
        test_password: str | None = None,
        say: Callable[[str], None] | None = None,
        slapd_configs: Sequence[Path] = (),
    ) -> None:
        self.config = config
        self.slapd_configs = tuple(slapd_configs)
        self.d = config.directory
        self.store = store
        self.directory = store.directory
        self.test_user = test_user
        self.test_password = test_password
        self.checks: list[Check] = []
        self.say = say or (lambda _text: None)
        self.server = self.d.profile.server

    def add(self, *checks: Check) -> None:
        self.checks.extend(checks)

    def run(self) -> list[Check]:
        self.directory_checks()
        self.enforcement()  # last: the directory's own checks keep their places
        return self.checks

    def directory_checks(self) -> None:
        self.servers()
        connects = [c for c in self.checks if c.area.startswith("connect")]
        if all(c.status is Status.FAIL for c in connects):
            return  # nothing answered: every other check would fail the same way
        self.write_server()
        ad_schema = self.schema()
        self.access(ad_schema)
        self.inventory()

    def enforcement(self) -> None:
        """Report-only ways in and exemptions that end: warnings, never hidden."""
        found = enforcement_warnings(self.config)
        for line in found:
            fix = "set enforce = true (or remove the key) once the census shows nobody left"
            self.add(Check("enforcement", Status.WARN, line, fix if "REPORT-ONLY" in line else ""))
        if not found:
            self.add(Check("enforcement", Status.OK, "every listener and NAS enforces"))

    # -- servers ---------------------------------------------------------------------------

    def servers(self) -> None:
        for text in self.d.urls:
            self.say(f"connecting to {text}")
            area = f"connect {text}"
            try:
                conn = connect(LdapUrl.parse(text), self.d, None, None)
            except DirectoryError as exc:
                self.add(
                    Check(
                        area,
                        Status.FAIL,
                        str(exc),
                        "check the URL, the CA file ([directory].ca_file), bind_dn and the "
                        "password; a certificate must name the host in the URL",
                    )
                )
                continue
            self.add(Check(area, Status.OK, f"service account {self.d.bind_dn} bound"))
            self.add(check_tls(text, conn.tls, str(self.d.ca_file) if self.d.ca_file else None))
            conn.close()

    def write_server(self) -> None:
        pinned = self.d.write_url is not None
        try:
            urls = self.directory.resolve_write_urls()
            conn = self.directory.write()
        except DirectoryError as exc:
            self.add(
                Check(
                    "write server",
                    Status.FAIL,
                    f"cannot reach the write server: {exc}",
                    "OTP logins fail closed until it answers; check [directory].write_url",
                )
            )
            return
        url = conn.url
        if self.d.write_url == "discover":
            self.add(Check("write server", Status.OK, f"PDC emulator discovered: {urls[0]}"))
        dse = conn.root_dse(["supportedCapabilities"])
        caps = [
            v.decode("ascii", "replace")
            for v in (dse.attributes.get("supportedcapabilities", []) if dse else [])
        ]
        self.add(
            *check_write_server(url.url, pinned, url.port, caps, self.server, len(self.d.urls))
        )
        if self.server != "ad":
            self.add(*replication_checks(self.d, *collect(self.d, self.slapd_configs)))

    # -- schema ---------------------------------------------------------------------------

    def schema(self) -> dict[str, AdAttributeSchema]:
        conn = self.directory.read()
        dse = conn.root_dse(["subschemaSubentry", "schemaNamingContext"])
        sub_dn = first_text(dse.attributes.get("subschemasubentry")) if dse else None
        if not sub_dn:
            self.add(Check("schema", Status.SKIP, "the server publishes no subschemaSubentry"))
            return {}
        found = conn.search(sub_dn, "(objectClass=*)", ["attributeTypes"], scope=SCOPE_BASE)
        types = [
            v.decode("utf-8", "replace")
            for e in found
            for v in e.attributes.get("attributetypes", [])
        ]
        subschema = Subschema(types)
        ad: dict[str, AdAttributeSchema] = {}
        naming = first_text(dse.attributes.get("schemanamingcontext")) if dse else None
        roles = [("seed", self.d.seed), ("tokens", self.d.tokens), ("used", self.d.used)]
        if self.d.inventory_dn:
            roles.append(("inventory", self.d.inventory))
        for role, mapped in roles:
            info = self._ad_schema(conn, naming, mapped.spec.name) if naming else None
            if info is not None:
                ad[mapped.spec.name.lower()] = info
            self.add(*check_attribute(role, mapped, subschema.get(mapped.spec.name), info))
        return ad

    def _ad_schema(self, conn: SyncConnection, naming: str, name: str) -> AdAttributeSchema | None:
        found = conn.search(
            naming,
            f"(&(objectClass=attributeSchema)(lDAPDisplayName={name}))",
            [
                "attributeSyntax",
                "isSingleValued",
                "rangeUpper",
                "schemaIDGUID",
                "attributeSecurityGUID",
            ],
            size_limit=1,
        )
        if not found:
            return None
        e = found[0]

        def guid(attr: str) -> uuid.UUID | None:
            raw = e.first(attr)
            return uuid.UUID(bytes_le=raw) if raw and len(raw) == 16 else None

        upper = e.first("rangeUpper")
        return AdAttributeSchema(
            syntax=(e.first("attributeSyntax") or b"").decode(),
            single_value=(e.first("isSingleValued") or b"").upper() == b"TRUE",
            range_upper=int(upper) if upper else None,
            schema_id=guid("schemaIDGUID"),
            property_set=guid("attributeSecurityGUID"),
        )

    # -- access ---------------------------------------------------------------------------

    def _probe_entry(self) -> UserEntry | None:
        if self.test_user:
            return self.store.resolve(self.test_user)
        conn = self.directory.write()
        found = conn.search(
            self.d.base_dn, self.d.user_filter, self.store.mapper.attributes, size_limit=1
        )
        return self.store.mapper.entry(found[0]) if found else None

    def _read_values(self, conn: SyncConnection, dn: str, probes: list[Probe]) -> SearchEntry:
        found = conn.search(dn, "(objectClass=*)", [p.name for p in probes], scope=SCOPE_BASE)
        return found[0] if found else SearchEntry(dn, {})

    def access(self, ad_schema: dict[str, AdAttributeSchema]) -> None:
        if self.d.state_dn is not None:
            self.container()
            return
        if self.server != "ad":  # what the gateway checks before it accepts OTP logins
            self.add(*doctor_olc.state_acl_checks(self.d, *doctor_olc.collect(self.d)))
        try:
            entry = self._probe_entry()
        except DirectoryError as exc:
            self.add(Check("probe entry", Status.FAIL, f"cannot find the test user: {exc}"))
            return
        if entry is None:
            self.add(Check("probe entry", Status.SKIP, "no user entry under base_dn to probe"))
            return
        self.add(Check("probe entry", Status.OK, f"probing access on {entry.dn}"))
        probes = [
            Probe("seed", self.d.seed),
            Probe("tokens", self.d.tokens),
            Probe("used", self.d.used),
        ]
        conn = self.directory.write()
        current = self._read_values(conn, entry.dn, probes)
        for p in probes:
            p.values = list(current.attributes.get(p.name.lower(), []))
        writable = set()
        for p in probes:
            code, message = conn.modify(entry.dn, p.no_op(None))
            self.add(check_write_probe(p.role, p.name, conn.url.url, code, message))
            if code in (SUCCESS, 65):
                writable.add(p.role)
        # Plant a probe value in each empty attribute (one Modify, with the auxiliary class
        # when the entry needs it) so that reading can be checked; removed in `finally`.
        empty = [p for p in probes if not p.values and p.role in writable]
        aux = self.d.profile.aux_class
        add_class = bool(empty and aux and aux.lower() not in entry.object_classes)
        planted: list[Modification] = []
        if empty:
            values = {p.role: probe_value() for p in empty}
            planted = [
                *(
                    [Modification(Modification.ADD, "objectClass", (aux.encode(),))]
                    if add_class
                    else []
                ),
                *(Modification(Modification.ADD, p.name, (values[p.role],)) for p in empty),
            ]
            code, _message = conn.modify(entry.dn, planted)
            if code == SUCCESS:
                for p in empty:
                    p.planted = values[p.role]
            else:
                planted = []
        try:
            seen = self._read_values(conn, entry.dn, probes)
            for p in probes:
                got = seen.attributes.get(p.name.lower(), [])
                expect = p.values or ([p.planted] if p.planted else [])
                self.add(check_service_read(p.name, bool(got) if expect else None))
            self._user_probes(entry, probes)
        finally:
            if planted:
                cleanup = [
                    Modification(Modification.DELETE, p.name, (p.planted,))
                    for p in probes
                    if p.planted is not None
                ]
                if add_class:
                    cleanup.append(
                        Modification(Modification.DELETE, "objectClass", (aux.encode(),))
                    )
                code, message = conn.modify(entry.dn, cleanup)
                if code != SUCCESS:
                    self.add(
                        Check(
                            "probe cleanup",
                            Status.FAIL,
                            f"could not remove the probe values from {entry.dn}: {code} {message}",
                            "remove values starting with otpgate-doctor-probe- by hand",
                        )
                    )
        if ad_schema:
            self._ad_acl(conn, entry, probes, ad_schema)

    def container(self) -> None:
        """The state lives in a container: probe that, not the users' own attributes."""
        self.add(
            Check(
                "state layout",
                Status.OK,
                f"OTP state in {self.d.state_dn} (users' own attributes hold none of it, so "
                "their default right to write them does not matter)",
            )
        )
        open_user = None
        user = self.test_user
        if user and self.test_password:
            password = self.test_password

            def open_user() -> SyncConnection:
                dn = self.store.resolve(user).dn
                return self.directory.open_first(self.d.urls, dn, password)

        self.add(*container_checks(self.d, self.directory.write(), open_user, user))

    def _user_probes(self, entry: UserEntry, probes: list[Probe]) -> None:
        if not self.test_user:
            self.add(
                Check(
                    "ordinary user access",
                    Status.SKIP,
                    "give --test-user NAME (and its password) to check what a user can "
                    "read and write",
                )
            )
            return
        if not self.test_password:
            self.add(Check("ordinary user access", Status.SKIP, "no password for the test user"))
            return
        try:
            user_conn = self.directory.open_first(self.d.urls, entry.dn, self.test_password)
        except DirectoryError as exc:
            self.add(
                Check("ordinary user access", Status.FAIL, f"cannot bind as {entry.dn}: {exc}")
            )
            return
        try:
            seen = self._read_values(user_conn, entry.dn, probes)
            for p in probes:
                has_value = bool(p.values or p.planted)
                reads = bool(seen.attributes.get(p.name.lower())) if has_value else None
                code, _ = user_conn.modify(entry.dn, p.no_op(None))
                self.add(
                    *user_access_checks(
                        p.name, self.test_user or entry.dn, reads, code, self.server
                    )
                )
        finally:
            user_conn.close()

    def _ad_acl(
        self,
        conn: SyncConnection,
        entry: UserEntry,
        probes: list[Probe],
        ad_schema: dict[str, AdAttributeSchema],
    ) -> None:
        from ldap3.protocol.microsoft import (  # type: ignore[import-untyped]
            security_descriptor_control,
        )

        found = conn.search(
            entry.dn,
            "(objectClass=*)",
            ["nTSecurityDescriptor", "objectSid"],
            scope=SCOPE_BASE,
            controls=security_descriptor_control(sdflags=SD_FLAGS_DACL),
        )
        raw = found[0].first("nTSecurityDescriptor") if found else None
        if not raw:
            self.add(
                Check("AD ACL", Status.SKIP, f"cannot read the DACL of {entry.dn} (READ_CONTROL)")
            )
            return
        sid = found[0].first("objectSid")
        domain_sid = sid_text(sid).rsplit("-", 1)[0] if sid else None
        service_sid = None
        svc = conn.search(self.d.bind_dn, "(objectClass=*)", ["objectSid"], scope=SCOPE_BASE)
        if svc and svc[0].first("objectSid"):
            service_sid = sid_text(svc[0].first("objectSid") or b"")
        attributes = [
            (p.name, ad_schema[p.name.lower()]) for p in probes if p.name.lower() in ad_schema
        ]
        self.add(*ad_acl_checks(parse_dacl(raw), attributes, entry.dn, domain_sid, service_sid))

    def inventory(self) -> None:
        if not self.d.inventory_dn:
            self.add(Check("inventory", Status.SKIP, "[directory].inventory_dn is not set"))
            return
        conn = self.directory.write()
        found = conn.search(
            self.d.inventory_dn, "(objectClass=*)", ["objectClass"], scope=SCOPE_BASE
        )
        if found:
            self.add(Check("inventory", Status.OK, f"{self.d.inventory_dn} exists"))
        else:
            self.add(
                Check(
                    "inventory",
                    Status.FAIL,
                    f"{self.d.inventory_dn} does not exist or is not readable",
                    "create it (an organizationalUnit) and let only the "
                    "service account read and write below it",
                )
            )
