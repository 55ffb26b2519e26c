"""The import formats by name, for ``otpgate import --format`` and the portal's upload (one
dispatch, so both read a file the same way), and the CSV templates the portal offers."""

from __future__ import annotations

from otpgate.errors import ImportFormatError
from otpgate.importers import ImportResult

FORMATS = ("pskc", "oath-csv", "yubico-csv", "otpauth")
FORMAT_NAMES = {
    "pskc": "PSKC (RFC 6030)",
    "oath-csv": "OATH CSV",
    "yubico-csv": "Yubico personalization CSV",
    "otpauth": "otpauth:// URIs, one per line",
}


def parse_file(
    kind: str, data: bytes, *, psk: bytes | None = None, password: str | None = None
) -> ImportResult:
    """What the parser of ``kind`` makes of ``data``.  ImportFormatError when the file
    cannot be read at all (not UTF-8 text, not PSKC, a wrong or missing PSKC key)."""
    from otpgate.importers.csvfiles import parse_oath_csv, parse_yubico_csv
    from otpgate.importers.otpauth import parse_otpauth
    from otpgate.importers.pskc import parse_pskc

    if kind not in FORMATS:
        raise ImportFormatError(f"unknown format {kind!r}: use one of {', '.join(FORMATS)}")
    if kind == "pskc":
        return parse_pskc(data, psk=psk, password=password)
    if psk is not None or password is not None:
        raise ImportFormatError("a pre-shared key or password is for PSKC files only")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ImportFormatError("the file is not UTF-8 text") from exc
    parser = {"oath-csv": parse_oath_csv, "yubico-csv": parse_yubico_csv}.get(kind, parse_otpauth)
    return parser(text)


# Only comment lines: a template imported as it is imports nothing (a made-up example key
# would be a token whose key everybody knows).
_KEY = "3132333435363738393031323334353637383930"
_AES = "00112233445566778899aabbccddeeff"
OATH_CSV_TEMPLATE = f"""\
# OATH CSV for otpgate: one token per line, '#' lines are comments.
#
#   serial, seed (hex), type (totp|hotp, default hotp), digits (6-8, default 6),
#   period (seconds, totp only, default 30), user (optional)
#
# serial: 1-64 characters of A-Z a-z 0-9 . _ : - (starting alphanumeric).
# seed: the token's key in hexadecimal, 10 to 128 bytes (20 for SHA-1 tokens).
# user: a login name, UPN or "quoted DN"; the token is assigned to that user once
#       imported (claim, enroll, remove: as `otpgate assign`).  Leave it empty to keep
#       the token in the inventory.
#
# Examples (remove the '# ' and put your tokens' values):
# HOTP-0001, {_KEY}
# TOTP-0002, {_KEY}, totp, 6, 30
# HOTP-0003, {_KEY}, hotp, 6, , alice
# TOTP-0004, {_KEY}, totp, 8, 60, "uid=bob,ou=people,dc=example,dc=org"
"""

YUBICO_CSV_TEMPLATE = f"""\
# Yubico personalization tool CSV for otpgate: the tool's log file, as it writes it.
# '#' lines are comments; LOGGING START lines are skipped.
#
# "Traditional format" lines:
#   Yubico OTP,<time>,<slot>,<public id modhex>,<private id hex>,<AES key hex>,...
#   OATH-HOTP,<time>,<slot>,<OATH token id>,,<HMAC key hex>,...,<digits at field 12>
# "Yubico format" lines (serial first):
#   <serial>,<public id modhex>,<private id hex, or 0 for OATH-HOTP>,<key hex>,...
#
# Yubico OTP tokens are named by their public id (Traditional) or yk<serial> (Yubico
# format); OATH-HOTP tokens by their token identifier or yk<serial>.  Static-password and
# challenge-response slots are not one-time-password tokens and are refused.
#
# Examples (remove the '# ' and put your keys' values):
# Yubico OTP,12/24/2024 10:00,1,vvccccdfhjkl,0123456789ab,{_AES},,,0,0,0,0
# OATH-HOTP,12/24/2024 10:01,2,ubhe12345678,,{_KEY},,,0,0,0,6
# 1234567,vvccccdfhjkl,0123456789ab,{_AES}
"""

TEMPLATES = {"oath.csv": OATH_CSV_TEMPLATE, "yubico.csv": YUBICO_CSV_TEMPLATE}
