"""Token import files (pure): PSKC (RFC 6030), OATH CSV, Yubico personalization CSV and
lists of ``otpauth://`` key URIs.

Every parser reads the whole file and returns an :class:`ImportResult`: the tokens it
understood and one :class:`RowProblem` per row (CSV line, PSKC KeyPackage) it did not.
Nothing here touches the directory; the CLI imports nothing when any row has a problem
(unless told ``--partial``) and writes ``Error_<file>`` with the problem rows marked
(:func:`error_file_text`).  Messages never contain key material.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from otpgate.otp.oath import check_counter
from otpgate.tokens import Secret, Token

MAX_IMPORT_BYTES = 64 * 1024 * 1024
MIN_KEY_BYTES = 10
"""80 bits: the shortest OATH key accepted (what authenticator apps generate)."""
MAX_KEY_BYTES = 128


@dataclass(frozen=True)
class ImportedToken:
    row: int
    """1-based CSV line number or PSKC KeyPackage number."""
    token: Token
    secret: Secret = field(repr=False)
    last: int = -1
    """Last used HOTP counter (the file's counter minus one); -1 for a fresh token."""
    user: str = ""
    """The user the row assigns the token to once imported (the OATH CSV user column);
    "": the token stays in the inventory."""

    def __post_init__(self) -> None:
        if self.last != -1:
            check_counter(self.last, "last used counter")

    @property
    def serial(self) -> str:
        return self.token.serial


@dataclass(frozen=True)
class RowProblem:
    row: int
    message: str


@dataclass(frozen=True)
class ImportResult:
    tokens: tuple[ImportedToken, ...]
    problems: tuple[RowProblem, ...]
    rows: int
    """How many rows (lines with data, KeyPackages) the file has."""
    kind: str
    """"csv" (problem rows are lines) or "xml" (problem rows are KeyPackages)."""


def check_key(key: bytes, what: str = "key") -> bytes:
    if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
        raise ValueError(
            f"{what} is {len(key)} bytes; OATH keys must be {MIN_KEY_BYTES} to {MAX_KEY_BYTES}"
        )
    return key


def key_fingerprint(secret: Secret) -> bytes:
    """What makes two tokens the same key: the OATH key / Yubico AES key (hashed, so the
    lookup tables of a duplicate check hold no key material)."""
    return hashlib.sha256(b"otpgate-key|" + secret.key).digest()


def duplicate_problems(tokens: tuple[ImportedToken, ...]) -> list[RowProblem]:
    """A serial must name one token, and a key belong to one token (two tokens with one key
    would accept each code twice): every later row repeating a serial or key is a problem."""
    first: dict[str, int] = {}
    first_key: dict[bytes, int] = {}
    problems = []
    for item in tokens:
        serial = item.serial.lower()
        fingerprint = key_fingerprint(item.secret)
        if serial in first:
            problems.append(
                RowProblem(item.row, f"serial {item.serial} repeats row {first[serial]}")
            )
        elif fingerprint in first_key:
            problems.append(
                RowProblem(item.row, f"its key repeats the key of row {first_key[fingerprint]}")
            )
        else:
            first[serial] = item.row
            first_key[fingerprint] = item.row
    return problems


def with_problems(result: ImportResult, extra: list[RowProblem]) -> ImportResult:
    """``result`` with more problems; tokens of those rows are dropped."""
    if not extra:
        return result
    bad = {p.row for p in extra} | {p.row for p in result.problems}
    problems = sorted((*result.problems, *extra), key=lambda p: p.row)
    return ImportResult(
        tuple(t for t in result.tokens if t.row not in bad),
        tuple(problems),
        result.rows,
        result.kind,
    )
