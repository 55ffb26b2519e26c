"""What ``show`` and ``list`` print (pure): token rows without secrets, as text or JSON."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from otpgate.admin.rekey import has_otpgate_values
from otpgate.directory.records import OtpState, UserEntry
from otpgate.errors import CodecError
from otpgate.otp.scratch import remaining
from otpgate.tokens import Token, TokenType, escape_unsafe


@dataclass(frozen=True)
class TokenRow:
    user: str
    dn: str
    id: str
    type: str
    serial: str
    label: str
    created: int
    last_used: int
    """Unix time of the last accepted code; 0: never."""
    last: int
    """Last accepted HOTP counter / TOTP step (-1: never)."""
    drift: int
    scratch_remaining: int | None
    details: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "user": self.user,
            "dn": self.dn,
            "id": self.id,
            "type": self.type,
            "serial": self.serial,
            "label": self.label,
            "created": self.created,
            "last_used": self.last_used or None,
            "last_counter": self.last if self.last >= 0 else None,
            "drift": self.drift,
            "scratch_remaining": self.scratch_remaining,
            "details": self.details,
        }


@dataclass(frozen=True)
class UserSummary:
    user: str
    dn: str
    tokens: tuple[TokenRow, ...]
    failures: int
    locked_until: int

    def locked(self, now: float) -> bool:
        return self.locked_until > now

    def lockout(self, now: float) -> str:
        if self.locked(now):
            return f"locked until {when(self.locked_until)}"
        return f"{self.failures} recent failure(s)" if self.failures else "not locked"

    def to_dict(self, now: float) -> dict[str, Any]:
        return {
            "user": self.user,
            "dn": self.dn,
            "locked": self.locked(now),
            "locked_until": self.locked_until or None,
            "failures": self.failures,
            "tokens": [t.to_dict() for t in self.tokens],
        }


def _details(token: Token) -> str:
    if token.type is TokenType.TOTP:
        return f"{token.digits} digits, {token.algorithm.value}, {token.period}s"
    if token.type is TokenType.HOTP:
        return f"{token.digits} digits, {token.algorithm.value}"
    if token.type is TokenType.YUBICO:
        return f"public id {token.public_id}"
    if token.scratch is not None:
        return f"{len(token.scratch.hashes)} codes of {token.scratch.length} digits"
    return ""


def summarise(user: str, dn: str, state: OtpState) -> UserSummary:
    rows = []
    for token in state.tokens:
        use = state.used.use_of(token.id)
        left = (
            remaining(token.scratch, use.scratch_used)
            if token.type is TokenType.SCRATCH and token.scratch is not None
            else None
        )
        rows.append(
            TokenRow(
                user,
                dn,
                token.id,
                token.type.value,
                token.serial,
                token.label,
                token.created,
                use.used_at,
                use.last,
                use.drift,
                left,
                _details(token),
            )
        )
    return UserSummary(user, dn, tuple(rows), state.used.failures, state.used.locked_until)


def user_label(dn: str) -> str:
    """What ``list`` calls a user: the value of the DN's first RDN."""
    first = dn.split(",", 1)[0]
    return first.split("=", 1)[1] if "=" in first else dn


def collect_summaries(
    users: Iterable[UserEntry | tuple[str, Exception]],
    decode: Callable[[UserEntry], OtpState],
    now: float,
    locked_only: bool = False,
) -> tuple[list[UserSummary], list[dict[str, str]]]:
    """The summaries of ``users`` (``users_with_state()``: entries, or (dn, error) for an
    unreadable one) sorted by name, and the unreadable ones as {"dn", "error"}.  Entries
    whose values are not otpgate's are skipped; ``decode`` must not decrypt seeds."""
    summaries = []
    problems = []
    for item in users:
        if isinstance(item, tuple):
            problems.append({"dn": item[0], "error": str(item[1])})
            continue
        if not has_otpgate_values(item):
            continue
        try:
            state = decode(item)
        except CodecError as exc:
            problems.append({"dn": item.dn, "error": str(exc)})
            continue
        summary = summarise(user_label(item.dn), item.dn, state)
        if locked_only and not summary.locked(now):
            continue
        summaries.append(summary)
    summaries.sort(key=lambda s: s.user.lower())
    return summaries, problems


def when(stamp: int) -> str:
    if not stamp:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(stamp))


def printable(text: str) -> str:
    """``text`` safe for a terminal: control characters (C0, DEL, C1), line separators and
    bidi controls are shown as ``\\xNN`` / ``\\uNNNN`` instead of being sent raw.  Labels,
    serials, DNs and error messages come from the directory or an import file: a stored
    OSC 52 / CSI sequence must not reach the admin's terminal."""
    return escape_unsafe(text)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain fixed-width table (no colours, copy-paste friendly); every cell printable."""
    rows = [[printable(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.extend(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )
    return "\n".join(lines)


TOKEN_HEADERS = ("ID", "TYPE", "SERIAL", "LABEL", "CREATED", "LAST USED", "DRIFT", "SCRATCH LEFT")


def token_cells(row: TokenRow) -> list[str]:
    return [
        row.id,
        row.type,
        row.serial or "-",
        row.label or "-",
        when(row.created),
        when(row.last_used),
        str(row.drift) if row.type == "totp" else "-",
        "-" if row.scratch_remaining is None else str(row.scratch_remaining),
    ]


def show_text(summary: UserSummary, now: float) -> str:
    head = f"{printable(summary.user)} ({printable(summary.dn)})\nlockout: {summary.lockout(now)}\n"
    if not summary.tokens:
        return head + "no tokens"
    return head + table(TOKEN_HEADERS, [token_cells(r) for r in summary.tokens])


def list_text(summaries: Sequence[UserSummary], now: float) -> str:
    headers = ("USER", *TOKEN_HEADERS, "LOCKOUT")
    rows = []
    for s in summaries:
        lock = s.lockout(now)
        if not s.tokens:
            rows.append([s.user, *(["-"] * len(TOKEN_HEADERS)), lock])
        rows.extend([s.user, *token_cells(r), lock] for r in s.tokens)
    return table(headers, rows) if rows else "no user has OTP state"
