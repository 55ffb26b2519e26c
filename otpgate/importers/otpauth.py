"""Lists of ``otpauth://`` key URIs, one per line (pure): what authenticator apps and some
token vendors hand out (the Key URI format of Google Authenticator)::

    otpauth://totp/ACME:fob-0001?secret=JBSWY3DPEHPK3PXP&issuer=ACME&digits=6&period=30
    otpauth://hotp/fob-0002?secret=...&counter=5&serial=FOB-0002

The serial is the ``serial`` parameter, else the account part of the label (after
``issuer:``); it must be a valid serial (``check_serial``).  ``counter`` is the next counter
the token will show, as in PSKC: the last used one is ``counter - 1``.  ``#`` lines and blank
lines are comments, so the ``Error_`` file (``# ERROR`` markers) imports again as it is.
"""

from __future__ import annotations

import base64
import binascii
import time
from urllib.parse import parse_qs, unquote, urlsplit

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
from otpgate.otp.oath import (
    DEFAULT_PERIOD,
    Algorithm,
    check_counter,
    check_digits,
    check_period,
)
from otpgate.tokens import Secret, Token, TokenType, check_label, new_token_id

MAX_LINE_CHARS = 4096
_ALGORITHMS = {"SHA1": Algorithm.SHA1, "SHA256": Algorithm.SHA256, "SHA512": Algorithm.SHA512}


def parse_otpauth(text: str, now: float | None = None) -> ImportResult:
    created = int(time.time() if now is None else now)
    tokens: list[ImportedToken] = []
    problems: list[RowProblem] = []
    rows = 0
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        rows += 1
        try:
            tokens.append(_uri(number, stripped, created))
        except ValueError as exc:
            problems.append(RowProblem(number, str(exc)))
    result = ImportResult(tuple(tokens), tuple(problems), rows, "csv")
    return with_problems(result, duplicate_problems(result.tokens))


def _one(params: dict[str, list[str]], name: str) -> str | None:
    values = params.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise ValueError(f"parameter {name} is given {len(values)} times")
    return values[0].strip()


def _number(params: dict[str, list[str]], name: str) -> int | None:
    text = _one(params, name)
    if text is None:
        return None
    if not text.isdigit() or len(text) > 20:
        raise ValueError(f"{name} {text[:30]!r} is not a number")
    return int(text)


def _secret(text: str | None) -> bytes:
    if not text:
        raise ValueError("no secret parameter")
    cleaned = text.replace(" ", "").replace("-", "").upper().rstrip("=")
    try:
        key = base64.b32decode(cleaned + "=" * (-len(cleaned) % 8))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("secret is not Base32") from exc
    return check_key(key, "secret")


def _uri(number: int, line: str, created: int) -> ImportedToken:
    if len(line) > MAX_LINE_CHARS:
        raise ValueError(f"line is {len(line)} characters, more than {MAX_LINE_CHARS}")
    parts = urlsplit(line)
    if parts.scheme.lower() != "otpauth":
        raise ValueError("not an otpauth:// URI")
    kind_text = parts.netloc.lower()
    if kind_text not in ("totp", "hotp"):
        raise ValueError(f"type {parts.netloc[:20]!r} is not totp or hotp")
    kind = TokenType(kind_text)
    try:
        params = parse_qs(parts.query, keep_blank_values=True, strict_parsing=False)
    except ValueError as exc:
        raise ValueError("the parameters cannot be read") from exc
    label = unquote(parts.path.lstrip("/")).strip()
    account = label.split(":", 1)[1].strip() if ":" in label else label
    serial_text = _one(params, "serial") or account
    try:
        serial = check_serial(serial_text)
    except InventoryError as exc:
        raise ValueError(
            f"{exc} (the serial is the serial parameter, else the account of the label)"
        ) from exc
    key = _secret(_one(params, "secret"))
    algorithm_text = (_one(params, "algorithm") or "SHA1").upper()
    algorithm = _ALGORITHMS.get(algorithm_text)
    if algorithm is None:
        raise ValueError(f"algorithm {algorithm_text[:20]!r} is not SHA1, SHA256 or SHA512")
    digits = check_digits(_number(params, "digits") or 6)
    period = DEFAULT_PERIOD
    counter = _number(params, "counter")
    if kind is TokenType.TOTP:
        period = check_period(_number(params, "period") or DEFAULT_PERIOD)
        if counter is not None:
            raise ValueError("a counter is for hotp tokens only")
    elif _one(params, "period") is not None:
        raise ValueError("a period is for totp tokens only")
    last = check_counter(counter, "counter") - 1 if counter else -1
    issuer = _one(params, "issuer") or ""
    shown = label or " ".join(t for t in (issuer, serial) if t)
    token = Token(
        id=new_token_id(),
        type=kind,
        created=created,
        serial=serial,
        label=check_label(shown[:64]),
        digits=digits,
        algorithm=algorithm,
        period=period,
    )
    return ImportedToken(number, token, Secret(key), last)
