"""OATH CSV and Yubico personalization CSV imports, and the Error_<file> they leave."""

from __future__ import annotations

from pathlib import PurePath

from otpgate.importers.csvfiles import parse_oath_csv, parse_yubico_csv
from otpgate.importers.errorfile import CSV_MARKER, error_file_name, error_file_text
from otpgate.otp.oath import hotp
from otpgate.tokens import TokenType

KEY = "3132333435363738393031323334353637383930"  # RFC 4226 test key
KEY2, KEY3, KEY4 = (bytes([i] * 20).hex() for i in (2, 3, 4))


def test_oath_csv_rows():
    text = "\n".join(
        [
            "# serial, seed, type, digits, period",
            f"hw-1, {KEY}",
            f"hw-2, {KEY2}, totp, 8, 60",
            f"hw-3,{KEY3},hotp,8",
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
            f"ok-2, {KEY2}, totp, 9",
            f"ok-3, {KEY3}, hotp, 6, 30",
            f"ok-1, {KEY4}",
            "ok-4, 00",
            f"ok-5, {KEY2}, sms",
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


# -- attacks -------------------------------------------------------------------------------


def test_oversized_field_is_a_row_problem_not_a_crash():
    """A field over the csv module's 131,072-character limit raised csv.Error (a traceback
    out of `otpgate import`): it is one bad row."""
    text = f"ok-1, {KEY}\nbig, {'a' * 131_073}\nok-2, {KEY2}\n"
    for parse in (parse_oath_csv, parse_yubico_csv):
        messages = {p.row: p.message for p in parse(text).problems}
        assert "not a CSV line" in messages[2] and "field larger than field limit" in messages[2]
    assert [p.row for p in parse_oath_csv(text).problems] == [2]
    assert [t.serial for t in parse_oath_csv(text).tokens] == ["ok-1", "ok-2"]
    assert parse_oath_csv(text).rows == 3


def test_yubico_public_id_longer_than_an_otp_can_carry_is_refused():
    """An OTP is 32..64 modhex characters: a 40-character public id makes a token that can
    never authenticate."""
    private, aes = "ab86c04de6a3", "d26a7c0f85fdda28bd816e406342b214"
    line = "Yubico OTP,12/11/2013 11:10,1,{pid},{private},{aes},,,0,0,0,0,0,0,0,0,0,0\n"
    ok = parse_yubico_csv(line.format(pid="c" * 32, private=private, aes=aes))
    assert ok.problems == () and ok.tokens[0].token.code_length == 64
    bad = parse_yubico_csv(line.format(pid="c" * 40, private=private, aes=aes))
    assert bad.tokens == ()
    assert "public id is 20 bytes (40 modhex characters)" in bad.problems[0].message
    yubico_format = f"508328,{'c' * 34},{private},{aes},,2013-12-12T08:43:17,\n"
    assert parse_yubico_csv(yubico_format).tokens == ()


def test_serial_with_a_trailing_newline_is_refused():
    """`^...$` with re.match accepts "abc\\n": every validation pattern uses fullmatch."""
    import pytest

    from otpgate.directory.inventory import check_serial
    from otpgate.errors import InventoryError

    assert check_serial("abc") == "abc"
    with pytest.raises(InventoryError):
        check_serial("abc\n")


def test_one_key_under_two_serials_is_refused():
    """Two inventory tokens with one key, assigned to one user, accept each code twice."""
    text = f"a-1, {KEY}\na-2, {KEY2}\na-3, {KEY.upper()}\n"
    result = parse_oath_csv(text)
    assert [t.serial for t in result.tokens] == ["a-1", "a-2"]
    assert [(p.row, p.message) for p in result.problems] == [(3, "its key repeats the key of row 1")]


def test_csv_markers_stay_one_harmless_line():
    text = f"ok-1, {KEY}, \x1b]52;c;Zm9v\x07\n"
    result = parse_oath_csv(text)
    marked = error_file_text(text, result)
    first = marked.splitlines()[0]
    assert first.startswith(f"{CSV_MARKER} line 1:") and "\x1b" not in first and "\x07" not in first
    assert marked.splitlines()[1] == text.rstrip("\n")  # the row itself is kept as it was
