"""RADIUS reply rules: the dictionaries, value encoding (tags, vendor attributes, AD's signed
addresses), rule matching and the configuration errors, which name the key.

The same rules against slapd and Samba AD, decoded by radclient's own dictionaries:
tests/integration/test_radius_reply.py.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from pyrad import packet as pp
from pyrad.dictionary import Dictionary

from otpgate.auth.requests import Entitlement
from otpgate.config import parse_config
from otpgate.errors import AuthorizationRefused, ConfigError
from otpgate.radius.attributes import (
    convert_entry_value,
    encode_value,
    load_dictionary,
    reply_attribute,
)
from otpgate.radius.packet import decode_request, encode_reply

DICTIONARY = load_dictionary()
FREERADIUS = Path("/usr/share/freeradius")
BASE = {
    "directory": {"profile": "openldap", "urls": ["ldap://127.0.0.1"], "base_dn": "dc=x",
                  "bind_dn": "cn=s,dc=x", "bind_password": "pw"},
    "vault": {"keyring": "k.json"},
}
AD = {
    "directory": {"profile": "ad", "urls": ["ldaps://dc.x"], "base_dn": "dc=x",
                  "bind_dn": "cn=s,dc=x", "bind_password": "pw", "state_dn": "ou=state,dc=x"},
    "vault": {"keyring": "k.json"},
}
CLIENT = {"address": "192.0.2.0/24", "secret": "0123456789abcdef"}
STAFF = "CN=VPN Staff,OU=Groups,DC=x"
ADMINS = "cn=admins,ou=groups,dc=x"
VLAN = {"Tunnel-Type:1": "VLAN", "Tunnel-Medium-Type:1": "IEEE-802",
        "Tunnel-Private-Group-Id:1": "42"}


def radius(*rules, base=BASE, **client):
    table = {**CLIENT, **client}
    if rules:
        table["reply"] = list(rules)
    return parse_config({**base, "radius": {"clients": [table]}}, Path("/etc/otpgate")).radius


def rules_of(*rules, **client):
    found = radius(*rules, **client).clients[0].reply
    assert found is not None
    return found


def facts(*groups, unknown=(), **attributes):
    values = tuple((k.lower(), tuple(v if isinstance(v, bytes) else v.encode() for v in vs))
                   for k, vs in attributes.items())
    return Entitlement("uid=alice,dc=x", groups, unknown, values)


def reply(rules, *args, **kw):
    """What the rules add, as (key, value) pairs read back from the wire."""
    wire, found = rules.reply(*args, **kw), []
    while wire:
        kind, size = wire[0], wire[1]
        if kind == 26:
            vendor, vtype, vsize = int.from_bytes(wire[2:6], "big"), wire[6], wire[7]
            assert vsize == size - 6
            found.append(((vendor, vtype), wire[8:size]))
        else:
            found.append((kind, wire[2:size]))
        wire = wire[size:]
    return tuple(found)


# -- the dictionaries -------------------------------------------------------------------------


def freeradius_dictionary(tmp_path: Path) -> Dictionary:
    """FreeRADIUS's own files for the same RFCs and vendors (freeradius-utils, installed by
    scripts/test), read with the same parser: the cross-check of every number we ship."""
    files = []
    for name in ("rfc2865", "rfc2866", "rfc2868", "rfc2869", "rfc3580", "microsoft", "cisco",
                 "juniper", "fortinet", "paloalto"):
        text = (FREERADIUS / f"dictionary.{name}").read_text()
        # dictionary.juniper spells one type "String"; pyrad wants lower case
        text = re.sub(r"(?m)^(ATTRIBUTE\s+\S+\s+\S+\s+)(\S+)",
                      lambda m: m.group(1) + m.group(2).lower(), text)
        path = tmp_path / name
        path.write_text(text)
        files.append(str(path))
    return Dictionary(*files)


def test_shipped_dictionaries_agree_with_freeradius(tmp_path):
    theirs = freeradius_dictionary(tmp_path)
    assert len(DICTIONARY.attributes) > 80 and not DICTIONARY.skipped_attributes
    for name, ours in DICTIONARY.attributes.items():
        other = theirs[name]
        vendor = DICTIONARY.vendors.GetForward(ours.vendor) if ours.vendor else 0
        their_vendor = theirs.vendors.GetForward(other.vendor) if other.vendor else 0
        assert (ours.code, ours.type, vendor, ours.has_tag, ours.encrypt) == (
            other.code, other.type, their_vendor, other.has_tag, other.encrypt), name
        for label, encoded in ours.values.forward.items():
            assert other.values.GetForward(label) == encoded, (name, label)


def test_dictionaries_are_package_data():
    setup = (Path(__file__).parents[2] / "setup.cfg").read_text()
    assert "radius/dictionaries/*" in setup  # twistd runs the installed copy


# -- encoding ------------------------------------------------------------------------------


def encoded(spec, value):
    return encode_value(reply_attribute(DICTIONARY, spec), value)


def test_tags_rfc2868():
    assert encoded("Tunnel-Type:1", "VLAN") == b"\x01\x00\x00\x0d"  # tag in the first octet
    assert encoded("Tunnel-Type", "VLAN") == b"\x00\x00\x00\x0d"  # no tag: 0 (unused)
    assert encoded("Tunnel-Medium-Type:31", 6) == b"\x1f\x00\x00\x06"
    assert encoded("Tunnel-Private-Group-Id:1", "42") == b"\x0142"  # a tag octet before text
    assert encoded("Tunnel-Private-Group-Id:0", "42") == b"\x0042"
    assert encoded("Tunnel-Private-Group-Id", "42") == b"42"  # '4' > 0x1F: read as text
    assert encoded("Tunnel-Private-Group-Id", "\x05x") == b"\x00\x05x"  # else it looks like a tag
    with pytest.raises(ValueError, match="a tag is 0 to 31"):
        encoded("Tunnel-Type:32", "VLAN")
    with pytest.raises(ValueError, match="takes no tag"):
        encoded("Class:1", "x")
    with pytest.raises(ValueError, match="outside 0-16777215"):
        encoded("Tunnel-Preference:1", 2**24)  # three octets after the tag


def test_vendor_attributes_and_limits():
    cisco = reply_attribute(DICTIONARY, "Cisco-AVPair")
    assert cisco.key == (9, 1) and not cisco.single
    assert reply_attribute(DICTIONARY, "Fortinet-Group-Name").key == (12356, 1)
    assert reply_attribute(DICTIONARY, "PaloAlto-User-Group").key == (25461, 5)
    assert reply_attribute(DICTIONARY, "Juniper-Local-User-Name").key == (2636, 1)
    assert reply_attribute(DICTIONARY, "MS-Primary-DNS-Server").key == (311, 28)
    assert encode_value(cisco, "x" * 247) == b"x" * 247
    with pytest.raises(ValueError, match="at most 247"):
        encode_value(cisco, "x" * 248)  # 253 less Vendor-Id, type and length
    with pytest.raises(ValueError, match="at most 253"):
        encoded("Filter-Id", "é" * 127)  # octets of UTF-8, not characters


def test_values_by_type():
    assert encoded("Session-Timeout", 3600) == b"\x00\x00\x0e\x10"
    assert encoded("Service-Type", "Framed-User") == b"\x00\x00\x00\x02"
    assert encoded("Service-Type", "2") == b"\x00\x00\x00\x02"
    assert encoded("Framed-IP-Address", "192.0.2.7") == bytes([192, 0, 2, 7])
    assert encoded("Class", "0x00ff") == b"\x00\xff"
    assert encoded("Class", "text") == b"text"
    with pytest.raises(ValueError, match="named values: Login-User"):
        encoded("Service-Type", "Superuser")
    with pytest.raises(ValueError, match="outside"):
        encoded("Session-Timeout", -1)
    with pytest.raises(ValueError, match="not an ipaddr"):
        encoded("Framed-IP-Address", "2001:db8::1")
    with pytest.raises(ValueError, match="true/false"):
        encoded("Session-Timeout", True)
    with pytest.raises(ValueError, match="empty"):
        encoded("Filter-Id", "")


@pytest.mark.parametrize(
    "raw,address",
    [
        (b"-1062731510", "192.168.1.10"),  # AD: msRADIUSFramedIPAddress, signed 32-bit
        (b"3232235786", "192.168.1.10"),  # the same, unsigned
        (b"167772161", "10.0.0.1"),
        (b"-1", "255.255.255.255"),  # RFC 2865 5.8: the user may choose
        (b"-2", "255.255.255.254"),  # the NAS chooses
        (b"-2147483648", "128.0.0.0"),
        (b"192.0.2.9", "192.0.2.9"),
        (b" 192.0.2.9 ", "192.0.2.9"),
    ],
)
def test_framed_ip_address_from_the_entry(raw, address):
    attr = reply_attribute(DICTIONARY, "Framed-IP-Address")
    assert convert_entry_value(attr, raw) == bytes(int(x) for x in address.split("."))


@pytest.mark.parametrize("raw", [b"4294967296", b"-2147483649", b"abc", b"1.2.3", b"\xff",
                                 b"99999999999999999999999"])
def test_framed_ip_address_refuses_what_is_no_address(raw):
    with pytest.raises(ValueError):
        convert_entry_value(reply_attribute(DICTIONARY, "Framed-IP-Address"), raw)


def test_encoded_reply_decodes_with_the_dictionary():
    """The bytes otpgate sends, read back by pyrad with the same dictionary: tags, vendor
    attributes inside Vendor-Specific, multi-valued Class."""
    rules = rules_of({"member_of": STAFF, "attributes": {**VLAN, "Cisco-AVPair": ["a=1", "b=2"]},
                      "group_names": ["Class", "Fortinet-Group-Name"]})
    attributes = rules.reply(facts(STAFF))  # on the wire already
    request = pp.AuthPacket(id=7, secret=b"s" * 16, dict=Dictionary())
    request.authenticator = os.urandom(16)
    request[1] = [b"alice"]
    received = decode_request(request.RequestPacket(), b"s" * 16, 255)
    raw = encode_reply(received, pp.AccessAccept, (), attributes)
    reply = pp.AuthPacket(packet=raw, secret=b"s" * 16, dict=DICTIONARY)
    assert reply["Tunnel-Type:1"] == ["VLAN"] and reply["Tunnel-Medium-Type:1"] == ["IEEE-802"]
    assert reply["Tunnel-Private-Group-Id:1"] == ["42"]
    assert reply["Cisco-AVPair"] == ["a=1", "b=2"]
    assert reply["Class"] == [b"VPN Staff"] and reply["Fortinet-Group-Name"] == ["VPN Staff"]


# -- rules ---------------------------------------------------------------------------------


def test_first_match_stops_unless_fall_through():
    rules = rules_of(
        {"member_of": ADMINS, "attributes": {"Filter-Id": "admins"}},
        {"member_of": STAFF, "attributes": {"Filter-Id": "staff"}, "fall_through": True},
        {"attributes": {"Filter-Id": "everyone"}},
    )
    assert reply(rules, facts(ADMINS, STAFF)) == ((11, b"admins"),)
    assert reply(rules, facts(STAFF)) == ((11, b"staff"), (11, b"everyone"))
    assert reply(rules, facts()) == ((11, b"everyone"),)


def test_all_matches_and_single_valued_attributes_keep_the_first_value():
    rules = rules_of(
        {"member_of": ADMINS, "attributes": {"Session-Timeout": 600, "Filter-Id": "a"}},
        {"member_of": STAFF, "attributes": {"Session-Timeout": 3600, "Filter-Id": "s"}},
        reply_match="all",
    )
    assert reply(rules, facts(ADMINS, STAFF)) == (
        (27, (600).to_bytes(4, "big")), (11, b"a"), (11, b"s"))  # RFC 2865: Session-Timeout 0-1
    assert reply(rules, facts(STAFF)) == ((27, (3600).to_bytes(4, "big")), (11, b"s"))


def test_the_slow_path_only_where_a_single_valued_attribute_can_repeat():
    assert not rules_of({"attributes": {"Session-Timeout": 1, "Filter-Id": ["a", "b"]}}).keep_first
    assert rules_of({"attributes": {"Session-Timeout": 1}},
                    {"attributes": {"Session-Timeout": 2}}).keep_first
    assert rules_of({"attributes": {"Framed-IP-Address": "192.0.2.1"},
                     "from_entry": {"Framed-IP-Address": "ipHostNumber"}}).keep_first
    twice = rules_of({"member_of": [STAFF, ADMINS], "group_names": ["User-Name"]})
    assert twice.keep_first  # User-Name is "0-1": the first group's name stays
    assert reply(twice, facts(STAFF, ADMINS)) == ((1, b"VPN Staff"),)


def test_membership_that_could_not_be_read_refuses():
    """Fail closed: the quarantine rule cannot be skipped because its group is unreadable."""
    rules = rules_of(
        {"member_of": "cn=quarantine,dc=x", "attributes": {"Tunnel-Private-Group-Id": "999"}},
        {"attributes": {"Tunnel-Private-Group-Id": "10"}},
    )
    with pytest.raises(AuthorizationRefused, match=r"reply\[0\]: the membership of cn=quar"):
        reply(rules, facts(unknown=("cn=quarantine,dc=x",)))
    assert reply(rules, facts()) == ((81, b"10"),)


def test_attribute_conditions():
    rules = rules_of(
        {"attribute": "departmentNumber", "values": ["Sales"], "attributes": {"Filter-Id": "s"}},
        {"attribute": "employeeType", "pattern": "contractor-[0-9]+",
         "attributes": {"Filter-Id": "c"}},
        reply_match="all",
    )
    assert rules.attributes == ("departmentnumber", "employeetype")
    assert reply(rules, facts(departmentNumber=["SALES"])) == ((11, b"s"),)  # case-insensitive
    assert reply(rules, facts(employeeType=["contractor-7"])) == ((11, b"c"),)
    assert reply(rules, facts(employeeType=["contractor-7x"])) == ()  # the whole value
    assert reply(rules, facts(employeeType=["contractor-" + "1" * 2000])) == ()  # too long
    assert reply(rules, facts(departmentNumber=[b"\xff"])) == ()


def test_group_names_only_of_groups_the_user_is_in():
    rules = rules_of({"member_of": [STAFF, ADMINS], "group_names": ["Class"]})
    assert rules.groups == (STAFF, ADMINS)
    assert reply(rules, facts(STAFF)) == ((25, b"VPN Staff"),)
    assert reply(rules, facts(STAFF, ADMINS)) == ((25, b"VPN Staff"), (25, b"admins"))
    assert reply(rules, facts()) == ()


def test_values_copied_from_the_entry():
    rules = rules_of({"from_entry": {"Framed-IP-Address": "msRADIUSFramedIPAddress",
                                     "Filter-Id": "departmentNumber"}})
    assert rules.attributes == ("msradiusframedipaddress", "departmentnumber")
    got = reply(rules, facts(msRADIUSFramedIPAddress=["-1062731510"], departmentNumber=["a", "b"]))
    assert got == ((8, bytes([192, 168, 1, 10])), (11, b"a"), (11, b"b"))
    assert reply(rules, facts()) == ()  # nothing in the entry: nothing added
    with pytest.raises(AuthorizationRefused, match="has 2 values and Framed-IP-Address takes one"):
        reply(rules, facts(msRADIUSFramedIPAddress=["1", "2"]))
    with pytest.raises(AuthorizationRefused, match=r"from_entry\.Framed-IP-Address: .*not"):
        reply(rules, facts(msRADIUSFramedIPAddress=["somewhere"]))
    with pytest.raises(AuthorizationRefused, match="at most 253"):
        reply(rules, facts(departmentNumber=["x" * 300]))


def test_a_reply_that_would_not_fit_refuses():
    rules = rules_of({"from_entry": {"Filter-Id": "departmentNumber"}})
    many = ["x" * 200] * 20
    with pytest.raises(AuthorizationRefused, match="more than the"):
        reply(rules, facts(departmentNumber=many))
    assert len(reply(rules, facts(departmentNumber=many[:2]), room=500)) == 2


def test_clients_without_rules_and_what_the_store_reads():
    r = radius()
    assert r.clients[0].reply is None and r.reply_groups == () and r.reply_attributes == ()
    r = radius({"member_of": STAFF, "attribute": "title", "values": ["x"],
                "from_entry": {"Filter-Id": "ou"}, "attributes": {"Filter-Id": "f"}})
    assert r.reply_groups == (STAFF,) and r.reply_attributes == ("title", "ou")


# -- configuration errors ------------------------------------------------------------------

R0 = r"radius\.clients\[0\]\.reply\[0\]"


@pytest.mark.parametrize(
    "rule,message",
    [
        ({"attributes": {"No-Such": "x"}}, R0 + r"\.attributes\.No-Such: no attribute 'No-Such'"),
        ({"attributes": {"User-Password": "x"}}, R0 + r"\.attributes\.User-Password: .*encrypted"),
        ({"attributes": {"NAS-IP-Address": "192.0.2.1"}}, r"may not be in an Access-Accept"),
        ({"attributes": {"Acct-Session-Id": "x"}}, r"Acct-Session-Id \(44\) may not be in an Acc"),
        ({"attributes": {"Password-Retry": 3}}, r"may not be in an Access-Accept"),
        ({"attributes": {"State": "x"}}, R0 + r"\.attributes\.State: .*otpgate's challenges"),
        ({"attributes": {"Message-Authenticator": "x"}}, r"signs every reply itself"),
        ({"attributes": {"MS-CHAP2-Success": "x"}}, r"MS-CHAPv2 answer"),
        ({"attributes": {"MS-MPPE-Encryption-Policy": 1}}, r"MS-CHAPv2 answer"),
        ({"attributes": {"Tunnel-Password:1": "x"}}, r"Tunnel-Password:1: Tunnel-Password is an encrypted"),
        ({"attributes": {"Tunnel-Type:40": "VLAN"}},
         R0 + r"\.attributes\.Tunnel-Type:40: 'Tunnel-Type:40': a tag is 0 to 31"),
        ({"attributes": {"Tunnel-Type": "VLAM"}}, R0 + r"\.attributes\.Tunnel-Type: 'VLAM' is not"),
        ({"attributes": {"Filter-Id:1": "x"}}, r"Filter-Id takes no tag"),
        ({"attributes": {"Session-Timeout": [1, 2]}}, R0 + r"\.attributes\.Session-Timeout: give one"),
        ({"attributes": {"Filter-Id": []}}, r"give at least one value"),
        ({"attributes": {"Filter-Id": 7}}, r"expected text"),
        ({"attributes": {"Filter-Id": "x" * 254}}, r"254 octets do not fit"),
        ({"attributes": "Filter-Id"}, R0 + r"\.attributes: expected a table"),
        ({"member_of": "staff", "attributes": {"Filter-Id": "x"}}, R0 + r"\.member_of: 'staff' is not a DN"),
        ({"values": ["x"], "attributes": {"Filter-Id": "x"}}, R0 + r"\.attribute: .*name it"),
        ({"attribute": "title", "attributes": {"Filter-Id": "x"}}, r"give values or a pattern"),
        ({"attribute": "title", "values": ["a"], "pattern": "a", "attributes": {"Filter-Id": "x"}},
         r"give values or a pattern"),
        ({"attribute": "title", "pattern": "(", "attributes": {"Filter-Id": "x"}},
         R0 + r"\.pattern: not a regular expression"),
        ({"group_names": ["Class"]}, R0 + r"\.group_names: .*give member_of"),
        ({"member_of": STAFF, "group_names": ["Session-Timeout"]}, r"a group name is text"),
        ({"member_of": STAFF}, R0 + r": a rule adds attributes"),
        ({"from_entry": {"Filter-Id": "bad name!"}}, r"from_entry\.Filter-Id: expected an LDAP"),
        ({"from_entry": {"Filter-Id": "userPassword"}}, R0 + r"\.from_entry\.Filter-Id: a password"),
        ({"from_entry": {"Class": "postalAddress"}}, r"postalAddress holds otpgate's encrypted st"),
        ({"attribute": "homePostalAddress", "values": ["x"], "attributes": {"Filter-Id": "x"}},
         R0 + r"\.attribute: homePostalAddress holds otpgate's"),
        ({"attributes": {"Filter-Id": "x"}, "fallthrough": True}, R0 + r"\.fallthrough: unknown key"),
    ],
)
def test_errors_name_the_key(rule, message):
    with pytest.raises(ConfigError, match=message):
        radius(rule)


def test_self_writable_ad_attributes_are_refused_on_ad():
    """Attack: an AD user edits her own telephoneNumber (Personal-Information) or url
    (Web-Information) to match a rule, or to choose the address copied into her reply."""
    for rule in ({"attribute": "telephoneNumber", "values": ["1"], "attributes": {"Filter-Id": "x"}},
                 {"from_entry": {"Framed-IP-Address": "url"}}):
        with pytest.raises(ConfigError, match="every AD user may write their own"):
            radius(rule, base=AD)
    # what users cannot write: fine on AD
    radius({"from_entry": {"Framed-IP-Address": "msRADIUSFramedIPAddress"}}, base=AD)
    radius({"attribute": "department", "values": ["x"], "attributes": {"Filter-Id": "x"}}, base=AD)
    # on OpenLDAP the access rules decide (docs/RADIUS.md): not refused here
    radius({"attribute": "telephoneNumber", "values": ["1"], "attributes": {"Filter-Id": "x"}})


@pytest.mark.parametrize(
    "client,message",
    [
        ({"reply_match": "any"}, r"radius\.clients\[0\]\.reply_match: 'any' is not one of first, all"),
        ({"reply": []}, r"radius\.clients\[0\]\.reply: expected \[\[radius\.clients\.reply\]\]"),
        ({"reply": ["x"]}, r"radius\.clients\[0\]\.reply\[0\]: expected a table"),
        ({"accept_message": "x" * 254}, r"radius\.clients\[0\]\.accept_message: at most 253"),
    ],
)
def test_client_errors_name_the_key(client, message):
    with pytest.raises(ConfigError, match=message):
        radius(**client)


def test_operator_dictionaries(tmp_path):
    (tmp_path / "dictionary.aruba").write_text(
        "VENDOR Aruba 14823\nBEGIN-VENDOR Aruba\nATTRIBUTE Aruba-User-Role 1 string\n"
        "END-VENDOR Aruba\n")
    section = {"dictionaries": ["dictionary.aruba"],
               "clients": [{**CLIENT, "reply": [{"attributes": {"Aruba-User-Role": "staff"}}]}]}
    r = parse_config({**BASE, "radius": section}, tmp_path).radius
    assert reply(r.clients[0].reply, facts()) == (((14823, 1), b"staff"),)
    with pytest.raises(ConfigError, match=r"\[radius\]\.dictionaries: cannot read .*missing"):
        parse_config({**BASE, "radius": {"dictionaries": ["missing"]}}, tmp_path)
    (tmp_path / "broken").write_text("ATTRIBUTE Broken\n")
    with pytest.raises(ConfigError, match=r"\[radius\]\.dictionaries: .*broken.*Parse error"):
        parse_config({**BASE, "radius": {"dictionaries": ["broken"]}}, tmp_path)
