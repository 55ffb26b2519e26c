"""Import formats added for the portal and shared with the CLI: lists of otpauth:// URIs,
the OATH CSV user column, the CSV templates, the one dispatch by format name."""

from __future__ import annotations

import base64
import os

import pytest

from otpgate.errors import ImportFormatError
from otpgate.importers.csvfiles import parse_oath_csv, parse_yubico_csv
from otpgate.importers.errorfile import error_file_text
from otpgate.importers.formats import (
    OATH_CSV_TEMPLATE,
    TEMPLATES,
    YUBICO_CSV_TEMPLATE,
    parse_file,
)
from otpgate.importers.otpauth import parse_otpauth
from otpgate.otp.oath import Algorithm
from otpgate.tokens import TokenType


def b32(key: bytes) -> str:
    return base64.b32encode(key).decode().rstrip("=")


def test_otpauth_uris_with_every_parameter():
    k1, k2 = os.urandom(20), os.urandom(32)
    text = (
        "# a vendor's list\n\n"
        f"otpauth://totp/ACME:fob-1?secret={b32(k1)}&issuer=ACME&period=60&digits=8\n"
        f"otpauth://hotp/Fob%202?secret={b32(k2).lower()}&counter=5&serial=FOB-2"
        "&algorithm=SHA256\n"
    )
    result = parse_otpauth(text)
    assert result.problems == () and result.rows == 2 and result.kind == "csv"
    first, second = result.tokens
    assert (first.serial, first.token.type, first.token.period, first.token.digits) == (
        "fob-1", TokenType.TOTP, 60, 8)
    assert first.token.label == "ACME:fob-1" and first.secret.key == k1 and first.last == -1
    assert (second.serial, second.token.type, second.last) == ("FOB-2", TokenType.HOTP, 4)
    assert second.token.algorithm is Algorithm.SHA256 and second.secret.key == k2
    assert (first.row, second.row) == (3, 4)


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("https://example.org/x", "not an otpauth:// URI"),
        ("otpauth://motp/x?secret=JBSWY3DPEHPK3PXP", "is not totp or hotp"),
        ("otpauth://totp/x", "no secret"),
        ("otpauth://totp/x?secret=not*base32", "not Base32"),
        ("otpauth://totp/x?secret=JBSWY3DP", "secret is 5 bytes"),
        ("otpauth://totp/x?secret=JBSWY3DPEHPK3PXP&algorithm=MD5", "is not SHA1"),
        ("otpauth://totp/x?secret=JBSWY3DPEHPK3PXP&counter=3", "counter is for hotp"),
        ("otpauth://hotp/x?secret=JBSWY3DPEHPK3PXP&period=30", "period is for totp"),
        ("otpauth://totp/x?secret=JBSWY3DPEHPK3PXP&digits=12", "digits must be"),
        ("otpauth://totp/a%20b?secret=JBSWY3DPEHPK3PXP", "serial parameter"),
        ("otpauth://totp/x?secret=JBSWY3DPEHPK3PXP&secret=JBSWY3DPEHPK3PXP", "2 times"),
        ("otpauth://hotp/x?secret=JBSWY3DPEHPK3PXP&counter=-1", "not a number"),
    ],
)
def test_otpauth_problem_rows_say_why(line, why):
    result = parse_otpauth(f"otpauth://totp/ok?secret={b32(os.urandom(20))}\n{line}\n")
    assert [t.serial for t in result.tokens] == ["ok"]
    assert [p.row for p in result.problems] == [2]
    assert why in result.problems[0].message, result.problems[0].message


def test_otpauth_duplicates_and_a_fixed_error_file_imports():
    key = b32(os.urandom(20))
    text = f"otpauth://totp/a?secret={key}\notpauth://totp/b?secret={key}\n"
    result = parse_otpauth(text)
    assert [p.message for p in result.problems] == ["its key repeats the key of row 1"]
    marked = error_file_text(text, result)
    assert marked.splitlines()[1].startswith("# ERROR line 2:")
    fixed = marked.replace(f"otpauth://totp/b?secret={key}", f"otpauth://totp/b?secret={b32(os.urandom(20))}")
    assert parse_otpauth(fixed).problems == ()


def test_oath_csv_user_column():
    k = os.urandom(20).hex()
    result = parse_oath_csv(
        f"s1, {k}\n"
        f"s2, {os.urandom(20).hex()}, hotp, 6, , alice\n"
        f's3, {os.urandom(20).hex()}, totp, 8, 60, "uid=bob,ou=people,dc=example,dc=org"\n'
        f"s4, {os.urandom(20).hex()}, hotp, 6, , bad\x1b[31m\n"
        f"s5, {os.urandom(20).hex()}, hotp, 6, , alice, extra\n"
    )
    assert [(t.serial, t.user) for t in result.tokens] == [
        ("s1", ""), ("s2", "alice"), ("s3", "uid=bob,ou=people,dc=example,dc=org")]
    assert [p.row for p in result.problems] == [4, 5]
    assert "U+001B" in result.problems[0].message
    assert "got 7 fields" in result.problems[1].message


def test_templates_import_nothing_as_they_are_and_their_examples_parse():
    assert set(TEMPLATES) == {"oath.csv", "yubico.csv"}
    for text in TEMPLATES.values():
        assert all(line.startswith("#") for line in text.splitlines())
    assert parse_oath_csv(OATH_CSV_TEMPLATE).tokens == ()
    assert parse_yubico_csv(YUBICO_CSV_TEMPLATE).tokens == ()
    key = "3132333435363738393031323334353637383930"
    examples = [line[2:].replace(key, os.urandom(20).hex())
                for line in OATH_CSV_TEMPLATE.splitlines() if line.startswith(("# HOTP-", "# TOTP-"))]
    oath = parse_oath_csv("\n".join(examples))
    assert oath.problems == () and len(oath.tokens) == 4
    assert [t.user for t in oath.tokens] == ["", "", "alice", "uid=bob,ou=people,dc=example,dc=org"]
    yubico_lines = [line[2:] for line in YUBICO_CSV_TEMPLATE.splitlines()
                    if line.startswith(("# Yubico OTP,", "# OATH-HOTP,", "# 1234567,"))]
    assert len(yubico_lines) == 3
    for line in yubico_lines:
        parsed = parse_yubico_csv(line)
        assert parsed.problems == () and len(parsed.tokens) == 1, (line, parsed.problems)


def test_parse_file_dispatches_and_refuses_what_it_cannot_read():
    key = os.urandom(20).hex()
    assert parse_file("oath-csv", f"x1, {key}\n".encode()).tokens[0].serial == "x1"
    assert parse_file("otpauth", b"\xef\xbb\xbf# BOM first\n").rows == 0
    with pytest.raises(ImportFormatError, match="not UTF-8"):
        parse_file("oath-csv", b"\xff\xfe")
    with pytest.raises(ImportFormatError, match="PSKC files only"):
        parse_file("yubico-csv", b"", password="x")
    with pytest.raises(ImportFormatError, match="unknown format"):
        parse_file("xml", b"")
