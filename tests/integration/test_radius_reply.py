"""Reply attributes against slapd and Samba AD, read back by radclient with FreeRADIUS's own
dictionaries (the cross-check of otpgate's encoding): VLAN attributes with their tags, a
multi-valued Class (the login id first, then group names), vendor attributes, values copied
from the entry (Framed-IP-Address from AD's signed msRADIUSFramedIPAddress), the login id in
the audit event; refusals audited, never in the packet.  Samba AD is the test server for
AD (not run on Windows AD).
"""

from __future__ import annotations

import os
import re
from typing import Any

import ldap3
import pytest
import pytest_twisted

from otpgate.otp.oath import hotp
from tests.integration.backends import USER_PASSWORD, make_backend
from tests.integration.test_radius import enroll, pap, replies, start_radius

PW = USER_PASSWORD
SECRET = "radius-test-secret-0123456789"
VLAN_ATTRIBUTES = {"Tunnel-Type:1": "VLAN", "Tunnel-Medium-Type:1": "IEEE-802"}


@pytest.fixture(params=["slapd-stock", "samba"])
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    return make_backend(request.param, request, tmp_path_factory.getbasetemp())


def new_group(backend: Any, name: str, members: list[str]) -> str:
    if backend.is_ad:
        return backend.server.create_group(name, members)
    return backend.server.add_group(name, members)


def received(out: str) -> list[tuple[str, str]]:
    """The attributes of the last reply radclient printed (name, value as printed)."""
    block = out.rsplit("Received Access-", 1)[1]
    return re.findall(r"^\s+(\S+) = (.*)$", block, re.M)


def values(out: str, name: str) -> list[str]:
    return [v.strip('"') for n, v in received(out) if n == name]


def classes(out: str) -> list[bytes]:
    return [bytes.fromhex(v[2:]) for v in values(out, "Class")]


def client(**options: Any) -> dict[str, Any]:
    return {"address": "127.0.0.1/32", "secret": SECRET, "mode": "append", "name": "vpn",
            **options}


@pytest_twisted.ensureDeferred
async def test_vlan_by_group_class_vendor_attributes_and_entry_values(backend, tmp_path):
    tag = os.urandom(3).hex()
    source = "msRADIUSFramedIPAddress" if backend.is_ad else "departmentNumber"
    target = "Framed-IP-Address" if backend.is_ad else "Filter-Id"
    staff_name, staff_dn = backend.new_user("staff")
    other_name, other_dn = backend.new_user("other")
    staff = new_group(backend, f"VPN Staff {tag}", [staff_dn])
    users = new_group(backend, f"vpn-users-{tag}", [staff_dn, other_dn])
    set_attribute(backend, staff_dn, source, "-1062731510" if backend.is_ad else "Sales-42")
    rules = [
        {"member_of": [staff, users], "group_names": ["Class"], "fall_through": True},
        {"member_of": staff,
         "attributes": {**VLAN_ATTRIBUTES, "Tunnel-Private-Group-Id:1": "42",
                        "Cisco-AVPair": ["shell:priv-lvl=15", "shell:roles=admin"],
                        "Fortinet-Group-Name": "vpn-staff", "Session-Timeout": 28800},
         "from_entry": {target: source}},
        # no tag (RFC 3580 wants 0 when only the VLAN is assigned)
        {"attributes": {"Tunnel-Type": "VLAN", "Tunnel-Medium-Type": "IEEE-802",
                        "Tunnel-Private-Group-Id": "99"}},
    ]
    radius = await start_radius(
        backend, tmp_path, [client(reply=rules, accept_message="Welcome to the VPN")]
    )
    events: list[dict[str, Any]] = []
    radius.gateway.audit.observers.append(events.append)
    try:
        key = await enroll(radius, staff_name)
        _code, out, err = await radius.radclient(pap(staff_name, PW + hotp(key, 0)), "-x")
        assert replies(out) == ["Access-Accept"], out + err
        # FreeRADIUS's dictionaries decode what otpgate encoded
        assert values(out, "Tunnel-Type:1") == ["VLAN"], out
        assert values(out, "Tunnel-Medium-Type:1") == ["IEEE-802"], out
        assert values(out, "Tunnel-Private-Group-Id:1") == ["42"], out
        assert values(out, "Cisco-AVPair") == ["shell:priv-lvl=15", "shell:roles=admin"], out
        assert values(out, "Fortinet-Group-Name") == ["vpn-staff"], out
        assert values(out, "Session-Timeout") == ["28800"], out
        assert values(out, "Reply-Message") == ["Welcome to the VPN"], out
        if backend.is_ad:  # -1062731510 = 0xC0A8010A as a signed 32-bit INTEGER
            assert values(out, "Framed-IP-Address") == ["192.168.1.10"], out
        else:
            assert values(out, "Filter-Id") == ["Sales-42"], out
        login_class, *group_classes = classes(out)
        assert sorted(group_classes) == sorted([f"VPN Staff {tag}".encode(),
                                                f"vpn-users-{tag}".encode()]), out
        assert login_class.startswith(b"otpgate:")
        (event,) = [e for e in events if e["outcome"] == "accept"]
        assert event["login_id"] == login_class[8:].decode()  # joins accounting to the login
        assert staff_dn.lower().encode() not in login_class.lower()

        # a user of the other group only: its name as Class, the fallback VLAN, nothing else
        key = await enroll(radius, other_name)
        _code, out, err = await radius.radclient(pap(other_name, PW + hotp(key, 0)), "-x")
        assert replies(out) == ["Access-Accept"], out + err
        assert values(out, "Tunnel-Type:0") == ["VLAN"], out
        assert values(out, "Tunnel-Medium-Type:0") == ["IEEE-802"], out
        assert values(out, "Tunnel-Private-Group-Id:0") == ["99"], out
        assert classes(out)[1:] == [f"vpn-users-{tag}".encode()], out
        assert not values(out, "Cisco-AVPair") and not values(out, target), out

        # a Reject carries no reason (and no rule attributes): the audit trail does
        _code, out, err = await radius.radclient(pap(other_name, PW + hotp(key, 0)), "-x")
        assert replies(out) == ["Access-Reject"], out + err
        assert [n for n, _v in received(out)] == ["Message-Authenticator"], out
        assert events[-1]["reason"] == "OTP already used" and events[-1]["login_id"]
    finally:
        await radius.stop()


@pytest_twisted.ensureDeferred
async def test_unreadable_membership_refuses_instead_of_falling_through(backend, tmp_path):
    """Attack: the first rule quarantines, the second grants the staff VLAN.  A quarantine
    group whose membership cannot be read (here: a DN that names no group) must refuse the
    login, never hand out the next rule's VLAN."""
    name, _dn = backend.new_user("quar")
    missing = f"CN=no-such-group-{os.urandom(3).hex()},{backend.server.base_dn}" \
        if backend.is_ad else f"cn=no-such-group,ou=groups,{backend.server.suffix}"
    rules = [{"member_of": missing, "attributes": {"Tunnel-Private-Group-Id": "666"}},
             {"attributes": {"Tunnel-Private-Group-Id": "10"}}]
    radius = await start_radius(backend, tmp_path, [client(reply=rules)])
    events: list[dict[str, Any]] = []
    radius.gateway.audit.observers.append(events.append)
    try:
        key = await enroll(radius, name)
        _code, out, err = await radius.radclient(pap(name, PW + hotp(key, 0)), "-x")
        assert replies(out) == ["Access-Reject"], out + err
        assert [n for n, _v in received(out)] == ["Message-Authenticator"], out
        (event,) = events
        assert event["reason"].startswith("authorization refused: radius.clients[0].reply[0]: "
                                          "the membership of " + missing)
    finally:
        await radius.stop()


@pytest_twisted.ensureDeferred
async def test_user_cannot_rewrite_her_own_framed_ip_address_on_ad(request, tmp_path_factory,
                                                                   tmp_path):
    """Attack: an insider with her own password sets msRADIUSFramedIPAddress to a colleague's
    address (or a server's).  AD refuses the write: the attribute is in the
    Remote-Access-Information property set, which users may read but not write; the rules
    that read it are safe.  The self-writable property sets are refused at load (unit test)."""
    backend = make_backend("samba", request, tmp_path_factory.getbasetemp())
    name, dn = backend.new_user("ipwrite")
    set_attribute(backend, dn, "msRADIUSFramedIPAddress", "167772161")  # 10.0.0.1, by the admin
    conn = ldap3.Connection(ldap3.Server(backend.server.ldaps_url, use_ssl=True,
                                         tls=ldap3.Tls(ca_certs_file=str(backend.server.ca_file))),
                            user=dn, password=PW, auto_bind=True)
    try:
        conn.modify(dn, {"msRADIUSFramedIPAddress": [(ldap3.MODIFY_REPLACE, ["167772162"])]})
        assert conn.result["result"] == 50, conn.result  # insufficientAccessRights
    finally:
        conn.unbind()
    assert backend.raw_values(dn, "msRADIUSFramedIPAddress") == [b"167772161"]
    rules = [{"from_entry": {"Framed-IP-Address": "msRADIUSFramedIPAddress"}}]
    radius = await start_radius(backend, tmp_path, [client(reply=rules)])
    try:
        key = await enroll(radius, name)
        _code, out, err = await radius.radclient(pap(name, PW + hotp(key, 0)), "-x")
        assert values(out, "Framed-IP-Address") == ["10.0.0.1"], out + err
    finally:
        await radius.stop()


def set_attribute(backend: Any, dn: str, attribute: str, value: str) -> None:
    conn = backend.admin()
    try:
        conn.modify(dn, {attribute: [(ldap3.MODIFY_REPLACE, [value])]})
        assert conn.result["result"] == 0, conn.result
    finally:
        conn.unbind()
