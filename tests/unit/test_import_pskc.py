"""PSKC (RFC 6030): the RFC's own examples, encryption, MAC checks and unsafe XML."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import pytest

from otpgate.errors import ImportFormatError, PskcKeyError
from otpgate.importers.errorfile import XML_MARKER, error_file_text
from otpgate.importers.pskc import parse_pskc
from otpgate.otp.oath import hotp
from otpgate.tokens import TokenType

DATA = Path(__file__).resolve().parents[1] / "data" / "pskc"
RFC4226_KEY = b"12345678901234567890"
PSK = bytes.fromhex("12345678901234567890123456789012")


def read(name: str) -> bytes:
    return (DATA / name).read_bytes()


@pytest.mark.parametrize(
    ("name", "serial", "digits", "kwargs"),
    [
        ("rfc6030-figure2-plain.pskc", "12345678", 6, {}),
        ("rfc6030-figure3-supplementary.pskc", "987654321", 8, {}),
        ("rfc6030-figure5-psk-aes128.pskc", "987654321", 8, {"psk": PSK}),
        ("rfc6030-figure7-pbkdf2.pskc", "987654321", 8, {"password": "qwerty"}),
    ],
)
def test_rfc6030_examples(name, serial, digits, kwargs):
    result = parse_pskc(read(name), **kwargs)
    assert result.problems == ()
    assert result.rows == 1
    (item,) = result.tokens
    assert item.serial == serial
    assert item.token.type is TokenType.HOTP
    assert item.token.digits == digits
    assert item.secret.key == RFC4226_KEY
    assert item.last == -1  # Counter 0: the first code is counter 0
    assert hotp(item.secret.key, 0, digits) == ("84755224" if digits == 8 else "755224")


def test_password_file_needs_the_right_password():
    with pytest.raises(PskcKeyError, match="--password"):
        parse_pskc(read("rfc6030-figure7-pbkdf2.pskc"))
    try:
        result = parse_pskc(read("rfc6030-figure7-pbkdf2.pskc"), password="qwertz")
    except PskcKeyError as exc:
        assert "wrong key or password" in str(exc) and "qwertz" not in str(exc)
    else:  # a wrong key may still unpad the MAC key (1 in 256): the MAC check catches it
        assert result.tokens == () and "MAC" in result.problems[0].message


def test_psk_file_needs_the_key():
    with pytest.raises(PskcKeyError, match="--psk"):
        parse_pskc(read("rfc6030-figure5-psk-aes128.pskc"))
    wrong = bytes(16)
    try:
        result = parse_pskc(read("rfc6030-figure5-psk-aes128.pskc"), psk=wrong)
    except PskcKeyError:
        return
    assert result.tokens == () and "MAC" in result.problems[0].message


def test_tampered_ciphertext_fails_the_mac_and_names_the_row():
    text = read("rfc6030-figure5-psk-aes128.pskc").decode()
    cipher = "AAECAwQFBgcICQoLDA0OD+cIHItlB3Wra1DUpxVvOx2lef1VmNPCMl8jwZqIUqGv"
    raw = bytearray(base64.b64decode(cipher))
    raw[20] ^= 1
    bad = text.replace(cipher, base64.b64encode(bytes(raw)).decode())
    result = parse_pskc(bad.encode(), psk=PSK)
    assert result.tokens == ()
    assert [(p.row, "MAC check failed" in p.message) for p in result.problems] == [(1, True)]


def test_encrypted_value_without_mac_is_refused():
    text = read("rfc6030-figure5-psk-aes128.pskc").decode()
    bad = re.sub(r"<ValueMAC>.*?</ValueMAC>", "", text, flags=re.S)
    result = parse_pskc(bad.encode(), psk=PSK)
    assert result.tokens == () and "ValueMAC" in result.problems[0].message


def test_unsafe_xml_is_refused():
    bomb = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>
<KeyContainer xmlns="urn:ietf:params:xml:ns:keyprov:pskc" Version="1.0">&lol2;</KeyContainer>"""
    with pytest.raises(ImportFormatError, match="unsafe XML"):
        parse_pskc(bomb)
    external = b"""<?xml version="1.0"?>
<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>
<KeyContainer xmlns="urn:ietf:params:xml:ns:keyprov:pskc" Version="1.0">&e;</KeyContainer>"""
    with pytest.raises(ImportFormatError, match="unsafe XML"):
        parse_pskc(external)
    with pytest.raises(ImportFormatError, match="not well-formed"):
        parse_pskc(b"<KeyContainer")
    with pytest.raises(ImportFormatError, match="not a PSKC file"):
        parse_pskc(b"<Tokens/>")


def _package(serial: str, secret_b64: str, algorithm: str = "hotp", extra: str = "") -> str:
    return f"""  <KeyPackage>
    <DeviceInfo><Manufacturer>Acme</Manufacturer><SerialNo>{serial}</SerialNo></DeviceInfo>
    <Key Id="{serial}" Algorithm="urn:ietf:params:xml:ns:keyprov:pskc:{algorithm}">
      <AlgorithmParameters><ResponseFormat Length="6" Encoding="DECIMAL"/></AlgorithmParameters>
      <Data>
        <Secret><PlainValue>{secret_b64}</PlainValue></Secret>
        {extra}
      </Data>
    </Key>
  </KeyPackage>
"""


def _container(*packages: str) -> str:
    body = "".join(packages)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<KeyContainer Version="1.0" xmlns="urn:ietf:params:xml:ns:keyprov:pskc">\n'
        f"{body}</KeyContainer>\n"
    )


def test_totp_counter_and_bad_rows():
    key = base64.b64encode(bytes(range(20))).decode()
    key2 = base64.b64encode(bytes(range(1, 21))).decode()
    text = _container(
        _package("tok-1", key, "totp", "<TimeInterval><PlainValue>60</PlainValue></TimeInterval>"),
        _package("tok-2", key2, "hotp", "<Counter><PlainValue>42</PlainValue></Counter>"),
        _package("tok-3", key, "ocra"),
        _package("tok-4", base64.b64encode(b"short").decode()),
        _package("tok-2", key),
    )
    result = parse_pskc(text.encode())
    assert [t.serial for t in result.tokens] == ["tok-1", "tok-2"]
    totp_token, hotp_token = result.tokens
    assert totp_token.token.type is TokenType.TOTP and totp_token.token.period == 60
    assert hotp_token.last == 41  # next code is counter 42
    assert [p.row for p in result.problems] == [3, 4, 5]
    assert "not supported" in result.problems[0].message
    assert "bytes" in result.problems[1].message
    assert "repeats row 2" in result.problems[2].message

    marked = error_file_text(text, result)
    assert marked.count(XML_MARKER) == 3
    # The markers are XML comments: the marked file parses to the same result.
    again = parse_pskc(marked.encode())
    assert [p.row for p in again.problems] == [3, 4, 5]
    assert marked.replace("\n", "").count("<KeyPackage>") == 5


# -- attacks -------------------------------------------------------------------------------


def test_plain_secret_in_an_encrypted_file_is_refused():
    """Whoever alters an encrypted PSKC in transit swaps the EncryptedValue + ValueMAC of a
    Secret for a PlainValue of a key they know: nothing authenticates a PlainValue."""
    result = parse_pskc(read("tampered-plain-secret-in-psk-file.pskc"), psk=PSK)
    assert result.tokens == ()
    ((row, message),) = [(p.row, p.message) for p in result.problems]
    assert row == 1
    assert "KeyPackage 1 (987654321) Secret is a PlainValue in an encrypted file" in message
    assert "attacker" not in message and "YXR0YWNrZXI" not in message
    # A plaintext file (no EncryptionKey) still imports plain secrets, as RFC 6030 §4 allows.
    assert parse_pskc(read("rfc6030-figure2-plain.pskc")).problems == ()


@pytest.mark.parametrize(
    ("counter", "ok"),
    [
        (0, True),
        (2**64 - 102, True),  # the look-ahead (last + 1 + 100) still fits in 64 bits
        (2**64 - 101, False),
        (2**64, False),  # hotp() would raise at every login of the assigned user
        (2**70, False),
        (-1, False),
    ],
)
def test_counter_out_of_range_is_a_row_problem(counter, ok):
    key = base64.b64encode(bytes(range(20))).decode()
    extra = f"<Counter><PlainValue>{counter}</PlainValue></Counter>"
    result = parse_pskc(_container(_package("big-1", key, "hotp", extra)).encode())
    if ok:
        assert result.problems == () and result.tokens[0].last == counter - 1
        return
    assert result.tokens == ()
    ((problem),) = result.problems
    assert problem.row == 1 and f"Counter {counter} is out of range" in problem.message


def test_error_markers_cannot_break_out_of_their_comment():
    """Text from the file (here the Algorithm URI) is quoted in the marker: `-->` in it
    would end the comment and turn the rest of the message into XML."""
    key = base64.b64encode(bytes(range(20))).decode()
    evil = 'x---><KeyPackage><Key Algorithm="urn:ietf:params:xml:ns:keyprov:pskc:hotp"/><!--'
    text = _container(
        _package("good-1", key),
        _package("bad-1", key, "hotp").replace(
            "urn:ietf:params:xml:ns:keyprov:pskc:hotp", html.escape(evil)
        ),
    )
    result = parse_pskc(text.encode())
    assert [p.row for p in result.problems] == [2]
    marked = error_file_text(text, result)
    comments = re.findall(r"<!--(.*?)-->", marked, flags=re.S)
    assert len(comments) == 1 and "--" not in comments[0]
    assert "\x1b" not in marked
    again = parse_pskc(marked.encode())  # still the same two packages, same problem
    assert again.rows == 2 and [p.row for p in again.problems] == [2]


def test_error_marker_lands_on_the_right_package_despite_comments():
    """A `<KeyPackage` inside a comment (or an attribute value) is not a package: the
    parser's own positions place each marker before the package it is about."""
    key = base64.b64encode(bytes(range(20))).decode()
    key2 = base64.b64encode(bytes(range(1, 21))).decode()
    text = _container(
        "  <!-- an old <KeyPackage> was removed here -->\n",
        _package("good-1", key),
        _package("bad-2", base64.b64encode(b"short").decode()),
        _package("good-3", key2),
    )
    result = parse_pskc(text.encode())
    assert [p.row for p in result.problems] == [2]
    marked = error_file_text(text, result)
    marker = marked.index(XML_MARKER)
    assert marked.index("<SerialNo>good-1<") < marker < marked.index("<SerialNo>bad-2<")
    assert "(KeyPackage 2)" in marked
    assert parse_pskc(marked.encode()).rows == 3
