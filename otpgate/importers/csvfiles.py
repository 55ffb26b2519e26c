"""OATH CSV and Yubico personalization-tool CSV files (pure).

OATH CSV, one token per line::

    serial, seed-hex[, totp|hotp[, digits[, period[, user]]]]

(defaults: hotp, 6 digits, 30 s; a user, given as the login name, UPN or quoted DN,
gets the token once it is imported).  Yubico personalization tool, "Traditional format"
log lines::

    Yubico OTP,<time>,<slot>,<public id modhex>,<private id hex>,<AES key hex>,...
    OATH-HOTP,<time>,<slot>,<token id>,,<HMAC key hex>,<...>,<...>,0,0,0,<digits?>,...

and, for convenience, the tool's "Yubico format" (serial, public id, private id or 0
for OATH, key, ...).  ``LOGGING START`` lines are skipped; ``#`` lines and blank lines
are comments everywhere.
"""

from __future__ import annotations

import binascii
import csv
import io
import time

from otpgate.directory.inventory import check_serial
from otpgate.errors import InventoryError
from otpgate.importers import (
    ImportedToken,
    ImportResult,
    RowProblem,
    check_key,
    duplicate_problems,
    with_problems,
)
from otpgate.otp.oath import DEFAULT_PERIOD, check_digits, check_period
from otpgate.otp.yubico import (
    AES_KEY_BYTES,
    MAX_OTP_CHARS,
    PRIVATE_ID_BYTES,
    TOKEN_CHARS,
    modhex_decode,
)
from otpgate.tokens import UNSAFE_TEXT, Secret, Token, TokenType, new_token_id

MAX_USER_CHARS = 1024
"""A user column holds a login name, UPN or DN (a DN of a deep tree stays far below)."""


def _hex(text: str, what: str) -> bytes:
    cleaned = text.strip().replace(" ", "")
    try:
        return binascii.unhexlify(cleaned)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"{what} is not hexadecimal") from exc


def _int(text: str, what: str) -> int:
    try:
        return int(text.strip())
    except ValueError as exc:
        raise ValueError(f"{what} {text.strip()!r} is not a number") from exc


def _serial(text: str) -> str:
    try:
        return check_serial(text)
    except InventoryError as exc:
        raise ValueError(str(exc)) from exc


def _rows(text: str) -> tuple[list[tuple[int, list[str]]], list[RowProblem]]:
    """The data lines as fields, and a problem for each line that is not CSV at all (e.g.
    a field over the csv module's limit of 131,072 characters)."""
    rows = []
    problems = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            fields = next(csv.reader(io.StringIO(stripped), skipinitialspace=True), [])
        except csv.Error as exc:
            problems.append(RowProblem(number, f"not a CSV line: {exc}"))
            continue
        rows.append((number, [f.strip() for f in fields]))
    return rows, problems


def _finish(
    tokens: list[ImportedToken], problems: list[RowProblem], rows: int
) -> ImportResult:
    result = ImportResult(tuple(tokens), tuple(sorted(problems, key=lambda p: p.row)), rows, "csv")
    return with_problems(result, duplicate_problems(result.tokens))


def parse_oath_csv(text: str, now: float | None = None) -> ImportResult:
    created = int(time.time() if now is None else now)
    tokens: list[ImportedToken] = []
    rows, problems = _rows(text)
    unreadable = len(problems)
    for number, fields in rows:
        try:
            tokens.append(_oath_row(number, fields, created))
        except ValueError as exc:
            problems.append(RowProblem(number, str(exc)))
    return _finish(tokens, problems, len(rows) + unreadable)


def _oath_row(number: int, fields: list[str], created: int) -> ImportedToken:
    if not 2 <= len(fields) <= 6:
        raise ValueError(
            "expected serial, seed-hex[, totp|hotp[, digits[, period[, user]]]]: got "
            f"{len(fields)} fields"
        )
    serial = _serial(fields[0])
    key = check_key(_hex(fields[1], "seed"), "seed")
    kind_text = (fields[2] if len(fields) > 2 and fields[2] else "hotp").lower()
    if kind_text not in ("hotp", "totp"):
        raise ValueError(f"type {fields[2]!r} is not totp or hotp")
    kind = TokenType(kind_text)
    digits = check_digits(_int(fields[3], "digits")) if len(fields) > 3 and fields[3] else 6
    period = DEFAULT_PERIOD
    if len(fields) > 4 and fields[4]:
        if kind is TokenType.HOTP:
            raise ValueError("a period is for totp tokens only")
        period = check_period(_int(fields[4], "period"))
    user = _user(fields[5]) if len(fields) > 5 else ""
    token = Token(
        id=new_token_id(),
        type=kind,
        created=created,
        serial=serial,
        label=serial,
        digits=digits,
        period=period,
    )
    return ImportedToken(number, token, Secret(key), user=user)


def _user(text: str) -> str:
    """The user column: a name to resolve later (login name, UPN, DN), one line of text."""
    if len(text) > MAX_USER_CHARS:
        raise ValueError(f"user is {len(text)} characters, more than {MAX_USER_CHARS}")
    found = UNSAFE_TEXT.search(text)
    if found is not None:
        raise ValueError(f"user: character U+{ord(found[0]):04X} is not allowed")
    return text


MAX_PUBLIC_ID_BYTES = (MAX_OTP_CHARS - TOKEN_CHARS) // 2
"""16: what ``looks_like_yubico_otp`` / ``decrypt_otp`` accept before the token part."""

_TRADITIONAL = ("yubico otp", "oath-hotp", "static password", "challenge-response")


def parse_yubico_csv(text: str, now: float | None = None) -> ImportResult:
    created = int(time.time() if now is None else now)
    tokens: list[ImportedToken] = []
    all_rows, problems = _rows(text)
    unreadable = len(problems)
    rows = [(n, f) for n, f in all_rows if f and f[0].upper() != "LOGGING START"]
    for number, fields in rows:
        try:
            tokens.append(_yubico_row(number, fields, created))
        except ValueError as exc:
            problems.append(RowProblem(number, str(exc)))
    return _finish(tokens, problems, len(rows) + unreadable)


def _yubico_row(number: int, fields: list[str], created: int) -> ImportedToken:
    kind = fields[0].lower()
    if kind in _TRADITIONAL:
        if len(fields) < 6:
            raise ValueError(f"expected at least 6 fields in a {fields[0]} line, got {len(fields)}")
        if kind == "yubico otp":
            return _yubico_otp(number, fields[3], fields[4], fields[5], "", created)
        if kind == "oath-hotp":
            token_id = fields[3]
            if not token_id:
                raise ValueError(
                    "OATH-HOTP line without a token identifier: nothing to name it by "
                    "(enable 'OATH token identifier' in the personalization tool)"
                )
            digits = 6
            if len(fields) > 11 and fields[11] and fields[11] != "0":
                digits = check_digits(_int(fields[11], "digits"))
            return _oath(number, f"{token_id}", fields[5], digits, created)
        raise ValueError(f"{fields[0]} slots are not one-time-password tokens; remove the line")
    if fields[0].isdigit():  # "Yubico format": serial, public id, private id | 0, key
        if len(fields) < 4:
            raise ValueError(
                f"expected at least 4 fields in a Yubico-format line, got {len(fields)}"
            )
        serial = fields[0]
        if fields[2] == "0":
            return _oath(number, f"yk{serial}", fields[3], 6, created)
        if not fields[2]:
            raise ValueError("static-password slots are not one-time-password tokens")
        return _yubico_otp(number, fields[1], fields[2], fields[3], f"yk{serial}", created)
    raise ValueError(
        f"unknown line type {fields[0][:30]!r}: expected Yubico OTP, OATH-HOTP "
        "(Traditional format) or a serial number (Yubico format)"
    )


def _oath(number: int, serial: str, key_hex: str, digits: int, created: int) -> ImportedToken:
    serial = _serial(serial)
    key = check_key(_hex(key_hex, "HMAC key"), "HMAC key")
    token = Token(
        id=new_token_id(),
        type=TokenType.HOTP,
        created=created,
        serial=serial,
        label=f"YubiKey OATH-HOTP {serial}",
        digits=digits,
    )
    return ImportedToken(number, token, Secret(key))


def _yubico_otp(
    number: int, public_id: str, private_hex: str, key_hex: str, serial: str, created: int
) -> ImportedToken:
    if not public_id:
        raise ValueError("Yubico OTP line without a public id")
    try:
        public_bytes = modhex_decode(public_id)
    except ValueError as exc:
        raise ValueError("public id is not modhex") from exc
    if len(public_bytes) > MAX_PUBLIC_ID_BYTES:
        # An OTP is at most 64 characters: 32 for the token, up to 32 for the public id.
        # A longer public id makes a token whose codes no login can carry.
        raise ValueError(
            f"public id is {len(public_bytes)} bytes ({len(public_id)} modhex characters); "
            f"Yubico OTP public ids are 1 to {MAX_PUBLIC_ID_BYTES} bytes "
            f"(up to {2 * MAX_PUBLIC_ID_BYTES} characters)"
        )
    private_id = _hex(private_hex, "private id")
    if len(private_id) != PRIVATE_ID_BYTES:
        raise ValueError(f"private id must be {PRIVATE_ID_BYTES} bytes, not {len(private_id)}")
    key = _hex(key_hex, "AES key")
    if len(key) != AES_KEY_BYTES:
        raise ValueError(f"AES key must be {AES_KEY_BYTES} bytes, not {len(key)}")
    serial = _serial(serial or public_id.lower())
    token = Token(
        id=new_token_id(),
        type=TokenType.YUBICO,
        created=created,
        serial=serial,
        label=f"YubiKey {public_id.lower()}",
        public_id=public_id.lower(),
    )
    return ImportedToken(number, token, Secret(key, private_id))
