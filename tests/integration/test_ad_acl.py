"""Samba AD: the ACLs of ``schema/ad/`` keep otpgate's state away from ordinary users.

otpgate's AD profile keeps its state in ``postalAddress`` (encrypted seeds),
``registeredAddress`` (token records) and ``wWWHomePage`` (one-time-use state and lockout).
By default Authenticated Users read them and every user writes their own. These tests
show that on a real Samba AD DC, run ``schema/ad/apply-acl.sh`` exactly as
``schema/ad/README.md`` documents it, and show why its per-user step is needed: deny ACEs
inherited from the OU alone (``dsacls /I:S /D``) change nothing, because the schema's
default ACL grants the same rights explicitly on every user object, and explicit ACEs
are evaluated first.

Everything happens in OUs created here (never on the domain head or CN=Users: the
Samba DC is shared by the whole session). All binds are LDAPS with certificate
verification.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import ldap3
import pytest_twisted
from ldap3.protocol.microsoft import security_descriptor_control

from tests.servers import SambaDC
from tests.servers.samba import SAMBA_TOOL

REPO = Path(__file__).resolve().parents[2]
APPLY_ACL = REPO / "schema" / "ad" / "apply-acl.sh"
README = REPO / "schema" / "ad" / "README.md"

STATE = ("postalAddress", "registeredAddress", "wWWHomePage")
SCHEMA_ID_GUIDS = {
    "postalAddress": "bf9679fc-0de6-11d0-a285-00aa003049e2",
    "registeredAddress": "bf967a10-0de6-11d0-a285-00aa003049e2",
    "wWWHomePage": "bf967a7a-0de6-11d0-a285-00aa003049e2",
}
PERSONAL_INFORMATION = "77b5b886-944a-11d1-aebd-0000f80367c1"
WEB_INFORMATION = "e45795b3-9455-11d1-aebd-0000f80367c1"
PROPERTY_SETS = {
    "postalAddress": PERSONAL_INFORMATION,
    "registeredAddress": PERSONAL_INFORMATION,
    "wWWHomePage": WEB_INFORMATION,
}
USER_CLASS = "bf967aba-0de6-11d0-a285-00aa003049e2"
INSUFFICIENT_ACCESS_RIGHTS = 50


# -- helpers -------------------------------------------------------------------------------


@dataclass
class Account:
    dn: str
    upn: str
    password: str


@dataclass
class AclSite:
    ou: str
    service: Account
    service_sid: str
    alice: Account
    bob: Account


def _password() -> str:
    return f"Pw-{secrets.token_hex(6)}-Aa1!"


def _account(dc: SambaDC, sam: str, ou: str, **attributes: str) -> Account:
    password = _password()
    dn = dc.create_user(sam, password, container_dn=ou, attributes=attributes or None)
    return Account(dn, f"{sam}@{dc.dns_domain}", password)


def _site(dc: SambaDC, name: str) -> AclSite:
    """OU=<name> with a service account and two ordinary users (alice has a mail, a name)."""
    admin = dc.connect(get_info=ldap3.NONE)
    ou = f"OU={name},{dc.base_dn}"
    assert admin.add(ou, "organizationalUnit"), admin.result
    admin.unbind()
    service = _account(dc, f"{name}-svc", ou)
    alice = _account(dc, f"{name}-alice", ou, displayName="Alice A.", mail="alice@otpgate.test")
    bob = _account(dc, f"{name}-bob", ou)
    admin = dc.connect()  # with the schema: objectSid as a string
    assert admin.search(service.dn, "(objectClass=*)", ldap3.BASE, attributes=["objectSid"])
    sid = str(admin.entries[0].objectSid.value)
    admin.unbind()
    return AclSite(ou, service, sid, alice, bob)


def _connect(dc: SambaDC, account: Account) -> ldap3.Connection:
    conn = dc.connect(account.upn, account.password, get_info=ldap3.NONE)
    conn.raise_exceptions = False
    return conn


def _read(conn: ldap3.Connection, dn: str, *attributes: str) -> dict[str, list[bytes]]:
    """The attributes of dn this connection gets back (unreadable ones are simply absent)."""
    assert conn.search(dn, "(objectClass=*)", ldap3.BASE, attributes=list(attributes))
    raw = conn.response[0]["raw_attributes"]
    return {name: list(raw[name]) for name in raw if raw[name]}


def _write(conn: ldap3.Connection, dn: str, attribute: str, value: str) -> int:
    conn.modify(dn, {attribute: [(ldap3.MODIFY_REPLACE, [value])]})
    return int(conn.result["result"])


def _admin_options(dc: SambaDC) -> list[str]:
    """samba-tool / apply-acl.sh connection options: LDAPS, certificate checked.

    Samba's client refuses a host-name check against an IP address, so with the usual
    127.0.0.1 the URL names ``localhost`` (in the DC's certificate) and the name is
    checked too; on another loopback address only the CA can be checked.
    """
    if dc.host == "127.0.0.1":
        url, verify = "ldaps://localhost", "ca_and_name"
    else:
        url, verify = f"ldaps://{dc.host}", "ca_only"
    return [
        "-H",
        url,
        f"--simple-bind-dn={dc.admin_dn}",
        f"--password={dc.admin_password}",
        f"--option=tls cafile={dc.ca_file}",
        f"--option=tls verify peer={verify}",
    ]


def _client_env(tmp_path: Path, dc: SambaDC) -> dict[str, str]:
    """No smb.conf, krb5.conf or ldap.conf of this machine; the DC's CA for OpenLDAP tools."""
    empty = tmp_path / "empty.conf"
    empty.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LDAP")}
    env.update(
        SMB_CONF_PATH=str(empty),
        KRB5_CONFIG=str(empty),
        LDAPCONF=os.devnull,
        LDAPRC="otpgate-tests-no-ldaprc",
        LDAPTLS_CACERT=str(dc.ca_file),
        LDAPTLS_REQCERT="demand",
    )
    return env


def _run(cmd: list[str], env: dict[str, str]) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, check=False)
    assert result.returncode == 0, f"{cmd[0]} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _apply_acl(dc: SambaDC, site: AclSite, env: dict[str, str]) -> str:
    """schema/ad/README.md, "Samba": apply-acl.sh -H URL [credentials] USERS_OU SERVICE_SID."""
    return _run([str(APPLY_ACL), *_admin_options(dc), site.ou, site.service_sid], env)


def _ldapsearch(dc: SambaDC, account: Account, dn: str, env: dict[str, str]) -> str:
    """The check command of schema/ad/README.md, as the given account."""
    return _run(
        [
            "ldapsearch",
            "-LLL",
            "-x",
            "-H",
            dc.ldaps_url,
            "-D",
            account.upn,
            "-w",
            account.password,
            "-b",
            dn,
            "-s",
            "base",
            *STATE,
            "displayName",
        ],
        env,
    )


# -- tests ---------------------------------------------------------------------------------


def test_schema_guids_match_the_live_schema(samba_dc: SambaDC, tmp_path: Path) -> None:
    """The GUIDs in README.md and apply-acl.sh are those of the DC's schema."""
    dc = samba_dc
    env = _client_env(tmp_path, dc)
    admin = Account(dc.admin_dn, dc.admin_upn, dc.admin_password)
    out = _run(
        [
            "ldapsearch",
            "-LLL",
            "-o",
            "ldif-wrap=no",
            "-x",
            "-H",
            dc.ldaps_url,
            "-D",
            admin.upn,
            "-w",
            admin.password,
            "-b",
            f"CN=Schema,CN=Configuration,{dc.base_dn}",
            "-s",
            "one",
            "(|(lDAPDisplayName=postalAddress)(lDAPDisplayName=registeredAddress)"
            "(lDAPDisplayName=wWWHomePage))",
            "lDAPDisplayName",
            "schemaIDGUID",
            "attributeSecurityGUID",
        ],
        env,
    )
    found: dict[str, tuple[str, str]] = {}
    for block in out.strip().split("\n\n"):
        values = dict(re.findall(r"^(\w+):+ (.*)$", block, flags=re.MULTILINE))

        def guid(name: str, values: dict[str, str] = values) -> str:
            return str(uuid.UUID(bytes_le=base64.b64decode(values[name])))

        found[values["lDAPDisplayName"]] = (guid("schemaIDGUID"), guid("attributeSecurityGUID"))
    assert found == {a: (SCHEMA_ID_GUIDS[a], PROPERTY_SETS[a]) for a in STATE}

    shipped = APPLY_ACL.read_text() + README.read_text()
    for value in (*SCHEMA_ID_GUIDS.values(), PERSONAL_INFORMATION, WEB_INFORMATION, USER_CLASS):
        assert value in shipped


def test_apply_acl_hides_state_from_users(samba_dc: SambaDC, tmp_path: Path) -> None:
    dc = samba_dc
    env = _client_env(tmp_path, dc)
    site = _site(dc, "acltest")
    alice_dn = site.alice.dn
    admin = dc.connect(get_info=ldap3.NONE)
    for attribute in STATE:
        assert admin.modify(
            alice_dn, {attribute: [(ldap3.MODIFY_REPLACE, [f"v1.k1.{attribute}.0"])]}
        ), admin.result

    alice, bob, service = (_connect(dc, a) for a in (site.alice, site.bob, site.service))

    # BEFORE: the AD defaults. Bob reads Alice's state, Alice rewrites her own, and the
    # service account can read it but not write it.
    assert set(_read(bob, alice_dn, *STATE)) == set(STATE)
    for attribute in STATE:
        assert _write(alice, alice_dn, attribute, f"v1.k1.{attribute}.by-alice") == 0
    assert _read(service, alice_dn, *STATE)["postalAddress"] == [b"v1.k1.postalAddress.by-alice"]
    assert _write(service, alice_dn, "wWWHomePage", "v1.k1.x") == INSUFFICIENT_ACCESS_RIGHTS
    assert "postalAddress:" in _ldapsearch(dc, site.bob, alice_dn, env)

    # APPLY the guide's commands to this OU.
    out = _apply_acl(dc, site, env)
    assert "done: OU changed, 2 of 2 user objects changed" in out

    # AFTER: Bob reads none of the three, but still Alice's ordinary attributes.
    assert _read(bob, alice_dn, *STATE, "displayName", "mail") == {
        "displayName": [b"Alice A."],
        "mail": [b"alice@otpgate.test"],
    }
    # ... nor can he find her through them.
    bob.search(site.ou, "(postalAddress=*)", attributes=["cn"])
    assert bob.result["result"] == 0
    assert [r["dn"] for r in bob.response if r["type"] == "searchResEntry"] == []
    text = _ldapsearch(dc, site.bob, alice_dn, env)
    assert "displayName: Alice A." in text
    assert not any(f"{a}:" in text for a in STATE)

    # Alice can neither read nor write her own state.
    assert _read(alice, alice_dn, *STATE) == {}
    for attribute in STATE:
        assert _write(alice, alice_dn, attribute, "rolled back") == INSUFFICIENT_ACCESS_RIGHTS
        assert _write(bob, alice_dn, attribute, "tampered") == INSUFFICIENT_ACCESS_RIGHTS

    # The service account reads and writes it, compare-and-swap included.
    state = _read(service, alice_dn, *STATE)
    assert state == {a: [f"v1.k1.{a}.by-alice".encode()] for a in STATE}
    for attribute in STATE:
        old, new = state[attribute][0], f"v1.k1.{attribute}.1".encode()
        assert service.modify(
            alice_dn, {attribute: [(ldap3.MODIFY_DELETE, [old]), (ldap3.MODIFY_ADD, [new])]}
        ), service.result
    assert _read(service, alice_dn, "wWWHomePage") == {"wWWHomePage": [b"v1.k1.wWWHomePage.1"]}
    assert service.search(site.ou, "(postalAddress=*)", attributes=["cn"])
    assert [r["dn"] for r in service.response if r["type"] == "searchResEntry"] == [alice_dn]
    assert "postalAddress: v1.k1.postalAddress.1" in _ldapsearch(dc, site.service, alice_dn, env)
    # ... and can read each user's DACL (READ_CONTROL), so a health check can verify it.
    assert service.search(
        alice_dn,
        "(objectClass=*)",
        ldap3.BASE,
        attributes=["nTSecurityDescriptor"],
        controls=security_descriptor_control(sdflags=0x04),
    )
    assert service.response[0]["raw_attributes"]["nTSecurityDescriptor"][0]
    # Domain Admins keep full control.
    assert set(_read(admin, alice_dn, *STATE)) == set(STATE)

    # Idempotent.
    assert "done: OU unchanged, 0 of 2 user objects changed" in _apply_acl(dc, site, env)

    # A user created later gets the schema's default ACL: exposed until the next run.
    carol = _account(dc, "acltest-carol", site.ou, postalAddress="v1.k1.carol")
    assert _read(bob, carol.dn, "postalAddress") == {"postalAddress": [b"v1.k1.carol"]}
    assert "done: OU unchanged, 1 of 3 user objects changed" in _apply_acl(dc, site, env)
    assert _read(bob, carol.dn, "postalAddress") == {}
    assert _read(service, carol.dn, "postalAddress") == {"postalAddress": [b"v1.k1.carol"]}

    for conn in (admin, alice, bob, service):
        conn.unbind()


def test_ou_deny_aces_alone_do_not_hide_state(samba_dc: SambaDC, tmp_path: Path) -> None:
    """The dsacls /I:S /D approach on the OU only: nothing changes for Bob and Alice."""
    dc = samba_dc
    env = _client_env(tmp_path, dc)
    site = _site(dc, "aclnaive")
    alice_dn = site.alice.dn
    admin = dc.connect(get_info=ldap3.NONE)
    assert admin.modify(alice_dn, {"postalAddress": [(ldap3.MODIFY_REPLACE, ["v1.k1.s"])]})
    admin.unbind()

    # dsacls OU /I:S /G svc:RPWP;<attr>;user /D "Authenticated Users:RP;<attr>;user"
    #                  /D SELF:WP;<attr>;user
    sddl = "".join(
        f"(OA;CIIO;RPWP;{g};{USER_CLASS};{site.service_sid})"
        f"(OD;CIIO;RP;{g};{USER_CLASS};AU)(OD;CIIO;WP;{g};{USER_CLASS};PS)"
        for g in SCHEMA_ID_GUIDS.values()
    )
    _run(
        [
            SAMBA_TOOL,
            "dsacl",
            "set",
            *_admin_options(dc),
            f"--objectdn={site.ou}",
            f"--sddl={sddl}",
        ],
        env,
    )

    alice, bob = _connect(dc, site.alice), _connect(dc, site.bob)
    # The explicit (OA;;RP;Personal-Information;;AU) and (OA;;RPWP;...;;PS) of the user's
    # default ACL come before every inherited ACE, so they still decide.
    assert _read(bob, alice_dn, "postalAddress") == {"postalAddress": [b"v1.k1.s"]}
    assert _write(alice, alice_dn, "postalAddress", "rolled back") == 0
    alice.unbind()
    bob.unbind()


ORGANIZATIONAL_ROLE = "a8df74bf-c5ea-11d1-bbcb-0080c76670c0"


@pytest_twisted.ensureDeferred
async def test_state_container_delegation_is_all_an_unprivileged_account_needs(
    samba_dc: SambaDC, tmp_path: Path
) -> None:
    """README §0, exactly: an OU, the two delegation ACEs for an ordinary service account,
    then enrollment (the gateway creates the user's state entry) and logins through the
    pipeline; the user, bound with her own password, cannot touch her state entry."""
    from twisted.internet import reactor

    from otpgate.admin.enrollment import enroll_change, new_oath_token
    from tests.logins import appended
    from otpgate.config import parse_config
    from otpgate.otp.oath import hotp
    from otpgate.service import Gateway
    from otpgate.tokens import TokenType
    from otpgate.vault import Keyring, keygen

    dc = samba_dc
    env = _client_env(tmp_path, dc)
    site = _site(dc, f"deleg{secrets.token_hex(3)}")
    state_dn = f"OU=state,{site.ou}"
    admin = dc.connect(get_info=ldap3.NONE)
    assert admin.add(state_dn, "organizationalUnit"), admin.result
    admin.unbind()
    sid = site.service_sid
    sddl = f"(OA;CIIO;RPWP;;{ORGANIZATIONAL_ROLE};{sid})(OA;;CCDC;{ORGANIZATIONAL_ROLE};;{sid})"
    _run(
        [SAMBA_TOOL, "dsacl", "set", *_admin_options(dc), f"--objectdn={state_dn}", f"--sddl={sddl}"],
        env,
    )
    keyring = tmp_path / "keyring.json"
    keygen(keyring, "k1")
    config = parse_config(
        {
            "directory": {
                "profile": "ad",
                "urls": [dc.ldaps_url],
                "ca_file": str(dc.ca_file),
                "base_dn": site.ou,
                "bind_dn": site.service.dn,
                "bind_password": site.service.password,
                "state_dn": state_dn,
                "state_cache_seconds": 0,
            },
            "vault": {"keyring": str(keyring)},
        },
        Path("/"),
    )
    gateway = Gateway(config, Keyring.load(keyring), reactor)
    key = os.urandom(20)
    try:
        user = await gateway.store.resolve(site.alice.upn)
        token, secret = new_oath_token(config.otp, TokenType.HOTP, key=key)
        await gateway.store.update(user, lambda s: enroll_change(s, token, secret, 5))
        outcomes = []
        for code in (hotp(key, 0), hotp(key, 0), hotp(key, 1)):
            result = await gateway.authenticator.login(
                appended(site.alice.upn, site.alice.password + code, "127.0.0.1", "test"),
                gateway.check_password,
            )
            outcomes.append((result.ok, result.reason))
        assert [ok for ok, _ in outcomes] == [True, False, True], outcomes
    finally:
        gateway.close()
    alice = _connect(dc, site.alice)
    try:
        assert alice.search(state_dn, "(objectClass=organizationalRole)", attributes=["cn"])
        (holder,) = [e.entry_dn for e in alice.entries]
        assert _write(alice, holder, "wWWHomePage", "rolled back") == INSUFFICIENT_ACCESS_RIGHTS
        alice.delete(holder)
        assert alice.result["result"] == INSUFFICIENT_ACCESS_RIGHTS
    finally:
        alice.unbind()
