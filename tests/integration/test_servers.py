"""Smoke tests for the directory-server fixtures and the shipped OpenLDAP schema/ACL files.

They prove what the rest of the suite relies on: both servers answer over LDAPS and
StartTLS with certificates that verify against the fixture's CA, the ACLs keep otpgate
state away from everyone but the service account, Samba refuses simple binds without
TLS, and a delete-old-value + add-new-value Modify is a compare-and-swap.
"""

from __future__ import annotations

import os
import re
import ssl
import subprocess
import uuid
from pathlib import Path

import ldap3
import pytest
from ldap3.core.exceptions import LDAPSocketOpenError

from tests.servers import SambaDC, Slapd, make_server_tls
from tests.servers.slapd import REPO_SCHEMA_DIR, SYSTEM_SCHEMA_DIR

NO_SUCH_ATTRIBUTE = 16
NO_SUCH_OBJECT = 32
STRONGER_AUTH_REQUIRED = 8
INSUFFICIENT_ACCESS = 50


def _tls(ca_file: Path) -> ldap3.Tls:
    return ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=str(ca_file))


def _ldap_env(**extra: str) -> dict[str, str]:
    """Environment for ldap-utils: no ldap.conf / .ldaprc, only the LDAPTLS_* given here.

    (Not LDAPNOINIT: it also makes libldap ignore LDAPTLS_* variables.)
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("LDAP")}
    env["LDAPCONF"] = os.devnull
    env["LDAPRC"] = "otpgate-tests-no-ldaprc"
    env.update(extra)
    return env


def _ldapwhoami(url: str, dn: str, password: str, *extra: str, env: dict[str, str]) -> str:
    result = subprocess.run(
        ["ldapwhoami", "-x", "-H", url, "-D", dn, "-w", password, *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def _value(conn: ldap3.Connection, dn: str, attribute: str) -> list[bytes]:
    assert conn.search(dn, "(objectClass=*)", ldap3.BASE, attributes=[attribute])
    values: list[bytes] = conn.entries[0][attribute].raw_values if conn.entries else []
    return values


# -- slapd ---------------------------------------------------------------------------------


def test_slapd_urls_are_loopback(slapd: Slapd, slapd_otpgate: Slapd) -> None:
    for server in (slapd, slapd_otpgate):
        assert server.url.startswith("ldap://127.0.0.1:")
        assert server.ldaps_url.startswith("ldaps://127.0.0.1:")
    assert len({slapd.port, slapd.ldaps_port, slapd_otpgate.port, slapd_otpgate.ldaps_port}) == 4


def test_slapd_ldapwhoami_plain(slapd: Slapd) -> None:
    out = _ldapwhoami(slapd.url, slapd.service_dn, slapd.service_password, env=_ldap_env())
    assert out == f"dn:{slapd.service_dn}"


def test_slapd_ldapwhoami_starttls(slapd: Slapd) -> None:
    env = _ldap_env(LDAPTLS_CACERT=str(slapd.ca_file), LDAPTLS_REQCERT="demand")
    out = _ldapwhoami(slapd.url, slapd.service_dn, slapd.service_password, "-ZZ", env=env)
    assert out == f"dn:{slapd.service_dn}"
    out = _ldapwhoami(slapd.ldaps_url, slapd.service_dn, slapd.service_password, env=env)
    assert out == f"dn:{slapd.service_dn}"


def test_slapd_ldaps_ldap3_verified(slapd: Slapd) -> None:
    server = ldap3.Server("127.0.0.1", port=slapd.ldaps_port, use_ssl=True, tls=_tls(slapd.ca_file))
    conn = ldap3.Connection(
        server, slapd.service_dn, slapd.service_password, auto_bind=True, raise_exceptions=True
    )
    assert conn.extend.standard.who_am_i() == f"dn:{slapd.service_dn}"
    conn.search(slapd.suffix, "(objectClass=organizationalUnit)", attributes=["ou"])
    assert {str(e.ou) for e in conn.entries} >= {"people", "services", "groups", "tokens"}
    conn.unbind()


def test_slapd_starttls_ldap3_verified(slapd: Slapd) -> None:
    conn = slapd.connect(slapd.service_dn, slapd.service_password, transport="starttls")
    assert conn.tls_started
    assert conn.extend.standard.who_am_i() == f"dn:{slapd.service_dn}"
    conn.unbind()


def test_slapd_certificate_verification_is_real(slapd: Slapd, tmp_path: Path) -> None:
    other_ca = make_server_tls(tmp_path / "other", dns_names=["localhost"]).ca_file
    server = ldap3.Server("127.0.0.1", port=slapd.ldaps_port, use_ssl=True, tls=_tls(other_ca))
    with pytest.raises(LDAPSocketOpenError):
        ldap3.Connection(server, auto_bind=True, raise_exceptions=True)


def test_slapd_acl_stock_profile(slapd: Slapd) -> None:
    """Only the service account reads or writes postalAddress & co.; users change nothing."""
    dn = slapd.add_user("stock-alice", "alice-pw")
    svc = slapd.connect(slapd.service_dn, slapd.service_password)
    for attribute in ("postalAddress", "registeredAddress", "homePostalAddress"):
        assert svc.modify(dn, {attribute: [(ldap3.MODIFY_ADD, ["v1.k1.state"])]}), svc.result
        assert _value(svc, dn, attribute) == [b"v1.k1.state"]

    alice = slapd.connect(dn, "alice-pw")
    assert _value(alice, dn, "postalAddress") == []
    assert _value(alice, dn, "uid") == [b"stock-alice"]
    alice.raise_exceptions = False
    assert not alice.modify(dn, {"postalAddress": [(ldap3.MODIFY_REPLACE, ["rolled back"])]})
    assert alice.result["result"] == INSUFFICIENT_ACCESS
    assert not alice.search(slapd.suffix, "(postalAddress=*)")
    # The service account never reads passwords.
    assert _value(svc, dn, "userPassword") == []
    # Anonymous clients see nothing.
    anon = ldap3.Connection(
        ldap3.Server("127.0.0.1", port=slapd.ldaps_port, use_ssl=True, tls=_tls(slapd.ca_file)),
        auto_bind=True,
    )
    assert not anon.search(slapd.suffix, "(objectClass=*)")
    for conn in (svc, alice, anon):
        conn.unbind()


def test_slapd_restart_keeps_ports_and_data(tmp_path: Path) -> None:
    with Slapd(tmp_path / "slapd", schema="stock") as server:
        ports = (server.port, server.ldaps_port)
        dn = server.add_user("restart-bob", "bob-pw")
        server.restart()
        assert (server.port, server.ldaps_port) == ports
        conn = server.connect(dn, "bob-pw")
        assert conn.extend.standard.who_am_i() == f"dn:{dn}"
        conn.unbind()
    assert not server.running


def test_slapd_start_failure_raises_with_log(tmp_path: Path) -> None:
    server = Slapd(tmp_path / "broken", extra_config="this-is-not-a-directive yes\n")
    with pytest.raises(RuntimeError, match="slapd exited"):
        server.start()
    assert not server.running


def test_slapd_otpgate_schema_and_cas(slapd_otpgate: Slapd) -> None:
    server = slapd_otpgate
    dn = server.add_user("cas-carol", "carol-pw")
    svc = server.connect(server.service_dn, server.service_password)
    svc.raise_exceptions = False
    # The service account can read the immutable key it resolves identities to.
    (entry_uuid,) = _value(svc, dn, "entryUUID")
    assert uuid.UUID(entry_uuid.decode())

    # Enrol: the service account may add the otpgateUser class, and write the state.
    assert svc.modify(dn, {"objectClass": [(ldap3.MODIFY_ADD, ["otpgateUser"])]}), svc.result
    assert svc.modify(
        dn,
        {
            "otpgateSeed": [(ldap3.MODIFY_ADD, [b"v1.k1.nonce.seedciphertext"])],
            "otpgateToken": [(ldap3.MODIFY_ADD, [b"tok1.totp", b"tok2.hotp"])],
            "otpgateUsed": [(ldap3.MODIFY_ADD, [b"state-0"])],
        },
    ), svc.result
    assert _value(svc, dn, "otpgateSeed") == [b"v1.k1.nonce.seedciphertext"]
    assert sorted(_value(svc, dn, "otpgateToken")) == [b"tok1.totp", b"tok2.hotp"]

    # SINGLE-VALUE is enforced.
    assert not svc.modify(dn, {"otpgateUsed": [(ldap3.MODIFY_ADD, [b"second"])]})

    # Compare-and-swap: delete the exact old value + add the new one, in one Modify.
    def cas(old: bytes, new: bytes) -> bool:
        return bool(
            svc.modify(
                dn,
                {"otpgateUsed": [(ldap3.MODIFY_DELETE, [old]), (ldap3.MODIFY_ADD, [new])]},
            )
        )

    assert cas(b"state-0", b"state-1"), svc.result
    assert _value(svc, dn, "otpgateUsed") == [b"state-1"]
    assert not cas(b"state-0", b"state-2")  # stale: someone else won
    assert svc.result["result"] == NO_SUCH_ATTRIBUTE
    assert _value(svc, dn, "otpgateUsed") == [b"state-1"]
    # octetStringMatch: case matters, so a differently-cased old value is stale too.
    assert not cas(b"STATE-1", b"state-2")
    assert svc.result["result"] == NO_SUCH_ATTRIBUTE

    # Nobody else sees or touches the state, the user included.
    carol = server.connect(dn, "carol-pw")
    carol.raise_exceptions = False
    for attribute in ("otpgateSeed", "otpgateToken", "otpgateUsed"):
        assert _value(carol, dn, attribute) == []
    assert not carol.modify(dn, {"otpgateUsed": [(ldap3.MODIFY_REPLACE, [b"state-0"])]})
    assert carol.result["result"] == INSUFFICIENT_ACCESS
    # ...and the service account may change objectClass only by otpgateUser.
    assert not svc.modify(dn, {"objectClass": [(ldap3.MODIFY_ADD, ["posixAccount"])]})
    assert svc.result["result"] == INSUFFICIENT_ACCESS
    svc.unbind()
    carol.unbind()


def test_slapd_otpgate_inventory(slapd_otpgate: Slapd) -> None:
    server = slapd_otpgate
    svc = server.connect(server.service_dn, server.service_password)
    dn = f"cn=YK-0001,{server.tokens_dn}"
    assert svc.add(
        dn,
        ["device", "otpgateInventory"],
        {"cn": "YK-0001", "otpgateInventoryToken": b"v1.k1.nonce.inventorycipher"},
    )
    assert _value(svc, dn, "otpgateInventoryToken") == [b"v1.k1.nonce.inventorycipher"]
    user_dn = server.add_user("inv-dave", "dave-pw")
    dave = server.connect(user_dn, "dave-pw")
    dave.raise_exceptions = False
    assert not dave.search(server.tokens_dn, "(objectClass=*)")
    assert dave.result["result"] == NO_SUCH_OBJECT  # the inventory is invisible to users
    assert svc.delete(dn)
    svc.unbind()
    dave.unbind()


# -- the shipped OpenLDAP files ------------------------------------------------------------


def _definitions(text: str) -> list[str]:
    """Schema definitions ``( OID ... )`` of a .schema or .ldif file, whitespace-normalized."""
    lines = (line for line in text.splitlines() if not line.startswith("#"))
    text = re.sub(r"\n[ \t]", " ", "\n".join(lines))
    return [" ".join(m.split()) for m in re.findall(r"\( 2\.25\.[^\n]*?\)\s*(?=\n|$)", text)]


def test_schema_files_agree() -> None:
    schema = _definitions((REPO_SCHEMA_DIR / "otpgate.schema").read_text())
    ldif = _definitions((REPO_SCHEMA_DIR / "otpgate.ldif").read_text())
    assert len(schema) == 6
    assert schema == ldif


def test_cn_config_ldif_files_load(tmp_path: Path) -> None:
    """otpgate.ldif and acl-openldap.ldif load into a cn=config tree that slaptest accepts."""
    config_dir = tmp_path / "slapd.d"
    config_dir.mkdir()
    (tmp_path / "db").mkdir()
    ldifs = [SYSTEM_SCHEMA_DIR / f"{n}.ldif" for n in ("core", "cosine", "inetorgperson")]
    ldifs.append(REPO_SCHEMA_DIR / "otpgate.ldif")
    includes = "\n".join(f"include: file://{p}" for p in ldifs)
    (tmp_path / "config.ldif").write_text(
        f"""dn: cn=config
objectClass: olcGlobal
cn: config

dn: cn=module{{0}},cn=config
objectClass: olcModuleList
cn: module{{0}}
olcModulePath: /usr/lib/ldap
olcModuleLoad: back_mdb

dn: cn=schema,cn=config
objectClass: olcSchemaConfig
cn: schema

{includes}

dn: olcDatabase={{-1}}frontend,cn=config
objectClass: olcDatabaseConfig
objectClass: olcFrontendConfig
olcDatabase: {{-1}}frontend

dn: olcDatabase={{0}}config,cn=config
objectClass: olcDatabaseConfig
olcDatabase: {{0}}config

dn: olcDatabase={{1}}mdb,cn=config
objectClass: olcDatabaseConfig
objectClass: olcMdbConfig
olcDatabase: {{1}}mdb
olcSuffix: dc=example,dc=org
olcDbDirectory: {tmp_path / "db"}
"""
    )

    def run(*cmd: str) -> None:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, f"{cmd}: {result.stdout}{result.stderr}"

    run("/usr/sbin/slapadd", "-n0", "-F", str(config_dir), "-l", str(tmp_path / "config.ldif"))
    run(
        "/usr/sbin/slapmodify", "-n0", "-F", str(config_dir),
        "-l", str(REPO_SCHEMA_DIR / "acl-openldap.ldif"),
    )  # fmt: skip
    run("/usr/sbin/slaptest", "-u", "-F", str(config_dir))  # -u: the database is empty
    db_ldif = next((config_dir / "cn=config").glob("olcDatabase={1}mdb.ldif")).read_text()
    assert db_ldif.count("olcAccess:") == 7  # incl. the state container (state_dn)


# -- Samba AD DC ---------------------------------------------------------------------------


def test_samba_ldaps_bind_and_search_verified(samba_dc: SambaDC) -> None:
    assert samba_dc.ldaps_url == "ldaps://127.0.0.1:636"
    server = ldap3.Server("127.0.0.1", port=636, use_ssl=True, tls=_tls(samba_dc.ca_file))
    conn = ldap3.Connection(
        server, samba_dc.admin_dn, samba_dc.admin_password, auto_bind=True, raise_exceptions=True
    )
    conn.search(samba_dc.base_dn, "(sAMAccountName=Administrator)", attributes=["objectSid"])
    assert len(conn.entries) == 1
    assert conn.entries[0].entry_dn.lower() == samba_dc.admin_dn.lower()
    conn.unbind()


def test_samba_certificate_verification_is_real(samba_dc: SambaDC, tmp_path: Path) -> None:
    other_ca = make_server_tls(tmp_path / "other", dns_names=["localhost"]).ca_file
    server = ldap3.Server("127.0.0.1", port=636, use_ssl=True, tls=_tls(other_ca))
    with pytest.raises(LDAPSocketOpenError):
        ldap3.Connection(server, auto_bind=True, raise_exceptions=True)


def test_samba_user_guid_and_binds(samba_dc: SambaDC) -> None:
    password = "Passw0rd!erin"
    dn = samba_dc.create_user("erin", password)
    admin = samba_dc.connect()
    guid_raw = _value(admin, dn, "objectGUID")
    assert len(guid_raw) == 1 and len(guid_raw[0]) == 16
    guid = uuid.UUID(bytes_le=guid_raw[0])
    # The GUID finds the entry again (the key otpgate uses; never the name the client sent).
    assert admin.search(f"<GUID={guid}>", "(objectClass=user)", ldap3.BASE, attributes=["cn"])
    assert str(admin.entries[0].cn) == "erin"
    admin.unbind()

    for user in (dn, "erin@otpgate.test", "OTPGATE\\erin"):
        conn = samba_dc.connect(user, password)
        assert conn.bound
        conn.unbind()
    conn = samba_dc.connect("erin@otpgate.test", password, transport="starttls")
    assert conn.tls_started and conn.bound
    conn.unbind()


def test_samba_stock_attributes_writable_by_admin(samba_dc: SambaDC) -> None:
    dn = samba_dc.create_user("frank", "Passw0rd!frank")
    admin = samba_dc.connect()
    values: dict[str, bytes] = {
        "postalAddress": b"v1.k1.AAAA.postal",
        "registeredAddress": b"v1.k1.BBBB.registered",
        "wWWHomePage": b"v1.k1.CCCC.www",
    }
    for attribute, value in values.items():
        assert admin.modify(dn, {attribute: [(ldap3.MODIFY_REPLACE, [value])]}), admin.result
    for attribute, value in values.items():
        assert _value(admin, dn, attribute) == [value]
    # Compare-and-swap works on AD too.
    change = [(ldap3.MODIFY_DELETE, [values["postalAddress"]]), (ldap3.MODIFY_ADD, [b"v1.new"])]
    assert admin.modify(dn, {"postalAddress": change})
    admin.raise_exceptions = False
    assert not admin.modify(dn, {"postalAddress": change})
    assert admin.result["result"] == NO_SUCH_ATTRIBUTE
    admin.unbind()


def test_samba_refuses_simple_bind_without_tls(samba_dc: SambaDC) -> None:
    assert samba_dc.ldap_url == "ldap://127.0.0.1:389"
    conn = ldap3.Connection(
        ldap3.Server("127.0.0.1", port=389, get_info=ldap3.NONE),
        samba_dc.admin_dn,
        samba_dc.admin_password,
    )
    assert not conn.bind()
    assert conn.result["result"] == STRONGER_AUTH_REQUIRED
    conn.unbind()
