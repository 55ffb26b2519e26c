"""OATH CSV and Yubico personalization CSV imports, and the Error_<file> they leave."""

from __future__ import annotations

from pathlib import PurePath

from otpgate.importers.csvfiles import parse_oath_csv, parse_yubico_csv
from otpgate.importers.errors import CSV_MARKER, error_file_name, error_file_text
from otpgate.otp.oath import hotp
from otpgate.tokens import TokenType

KEY = "3132333435363738393031323334353637383930"  # RFC 4226 test key


def test_oath_csv_rows():
    text = "\n".join(
        [
            "# serial, seed, type, digits, period",
            f"hw-1, {KEY}",
            f"hw-2, {KEY}, totp, 8, 60",
            f"hw-3,{KEY},hotp,8",
            "",
        ]
    )
    result = parse_oath_csv(text, now=1000)
    assert result.problems == () and result.rows == 3
    one, two, three = result.tokens
    assert (one.token.type, one.token.digits) == (TokenType.HOTP, 6)
    assert hotp(one.secret.key, 0) == "755224"
    assert (two.token.type, two.token.digits, two.token.period) == (TokenType.TOTP, 8, 60)
    assert three.token.digits == 8 and three.token.created == 1000


def test_oath_csv_bad_rows_are_named_and_marked():
    text = "\n".join(
        [
            f"ok-1, {KEY}",
            "bad hex, zz",
            f"ok-2, {KEY}, totp, 9",
            f"ok-3, {KEY}, hotp, 6, 30",
            f"ok-1, {KEY}",
            "ok-4, 00",
            f"ok-5, {KEY}, sms",
        ]
    )
    result = parse_oath_csv(text)
    assert [t.serial for t in result.tokens] == ["ok-1"]
    messages = {p.row: p.message for p in result.problems}
    assert sorted(messages) == [2, 3, 4, 5, 6, 7]
    assert "serial" in messages[2]
    assert "digits" in messages[3]
    assert "period" in messages[4]
    assert "repeats row 1" in messages[5]
    assert "bytes" in messages[6]
    assert "sms" in messages[7]
    assert KEY not in " ".join(messages.values())

    marked = error_file_text(text, result)
    lines = marked.splitlines()
    assert lines[0] == f"ok-1, {KEY}"
    assert lines[1].startswith(f"{CSV_MARKER} line 2:")
    assert lines[2] == "bad hex, zz"
    assert marked.count(CSV_MARKER) == 6
    # Comment markers are ignored by the parser: re-parsing gives the same problems.
    again = parse_oath_csv(marked)
    assert len(again.problems) == 6
    assert error_file_name(PurePath("/tmp/tokens.csv")) == "Error_tokens.csv"


TRADITIONAL = """\
LOGGING START,11.12.13 16:43
Yubico OTP,12/11/2013 11:10,1,vvgutbiedkvi,ab86c04de6a3,d26a7c0f85fdda28bd816e406342b214,,,0,0,0,0,0,0,0,0,0,0
OATH-HOTP,11.12.13 18:55,1,cccccccccccc,,916821d3a138bf855e70069605559a206ba854cd,,,0,0,0,6,0,0,0,0,0,0
Static Password,11.12.13 19:08,1,,d5a3d50327dc,0e8e37b0e38b314a56748c030f58d21d,,,0,0,0,0,0,0,0,0,0,0
OATH-HOTP,11.12.13 19:01,1,,,d41845578effd750887edc70f04df754603e2b63,,,0,0,0,6,0,0,0,0,0,0
Yubico OTP,12/11/2013 11:10,1,vvgutbiedkvj,ab86c04de6,d26a7c0f85fdda28bd816e406342b214,,,0,0,0,0,0,0,0,0,0,0
"""


def test_yubico_traditional_format():
    result = parse_yubico_csv(TRADITIONAL)
    assert result.rows == 5  # LOGGING START is not a row
    yubikey, oath = result.tokens
    assert yubikey.token.type is TokenType.YUBICO
    assert yubikey.token.public_id == "vvgutbiedkvi" and yubikey.serial == "vvgutbiedkvi"
    assert yubikey.secret.key == bytes.fromhex("d26a7c0f85fdda28bd816e406342b214")
    assert yubikey.secret.private_id == bytes.fromhex("ab86c04de6a3")
    assert oath.token.type is TokenType.HOTP and oath.serial == "cccccccccccc"
    assert oath.secret.key == bytes.fromhex("916821d3a138bf855e70069605559a206ba854cd")
    messages = {p.row: p.message for p in result.problems}
    assert sorted(messages) == [4, 5, 6]
    assert "not one-time-password" in messages[4]
    assert "token identifier" in messages[5]
    assert "private id" in messages[6]


def test_yubico_format_lines():
    text = (
        "508327,,0,69cfb9202438ca68964ec3244bfa4843d073a43b,,2013-12-12T08:41:07,\n"
        "508328,cccccccccccc,83cebdfb7b93,a47c5bf9c152202f577be6721c0113af,,2013-12-12T08:43:17,\n"
    )
    result = parse_yubico_csv(text)
    assert result.problems == ()
    assert [(t.serial, t.token.type) for t in result.tokens] == [
        ("yk508327", TokenType.HOTP),
        ("yk508328", TokenType.YUBICO),
    ]
