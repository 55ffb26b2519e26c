"""Token import files (pure): PSKC (RFC 6030), OATH CSV and Yubico personalization CSV.

Every parser reads the whole file and returns an :class:`ImportResult`: the tokens it
understood and one :class:`RowProblem` per row (CSV line, PSKC KeyPackage) it did not.
Nothing here touches the directory; the CLI imports nothing when any row has a problem
(unless told ``--partial``) and writes ``Error_<file>`` with the problem rows marked
(:func:`error_file_text`).  Messages never contain key material.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from otpgate.tokens import Secret, Token

MAX_IMPORT_BYTES = 64 * 1024 * 1024
MIN_KEY_BYTES = 10
"""80 bits: the shortest OATH key accepted (what authenticator apps generate)."""
MAX_KEY_BYTES = 128


class ImportFormatError(ValueError):
    """The file as a whole cannot be read (not one bad row: the container itself)."""


@dataclass(frozen=True)
class ImportedToken:
    row: int
    """1-based CSV line number or PSKC KeyPackage number."""
    token: Token
    secret: Secret = field(repr=False)
    last: int = -1
    """Last used HOTP counter (the file's counter minus one); -1 for a fresh token."""

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


def duplicate_problems(tokens: tuple[ImportedToken, ...]) -> list[RowProblem]:
    """A serial must name one token: every row after the first with a serial is a problem."""
    first: dict[str, int] = {}
    problems = []
    for item in tokens:
        key = item.serial.lower()
        if key in first:
            problems.append(RowProblem(item.row, f"serial {item.serial} repeats row {first[key]}"))
        else:
            first[key] = item.row
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
