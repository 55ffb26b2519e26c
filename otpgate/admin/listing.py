"""What ``show`` and ``list`` print (pure): token rows without secrets, as text or JSON.

An e-mail/SMS token's row names the attribute its codes go to and, in ``show``, the masked
destination read from the entry (the caller reads it: ``admin.sentcodes.shown_destination``),
the outstanding code's send and expiry times (never the code or its digest), and the user's
sends in the last hour."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from otpgate.admin.rekey import has_otpgate_values
from otpgate.admin.suspend import describe
from otpgate.auth.config import OtpConfig
from otpgate.auth.oob import outstanding, recent_sends
from otpgate.auth.suspension import user_suspension
from otpgate.directory.records import OtpState, UserEntry
from otpgate.errors import CodecError
from otpgate.otp.scratch import remaining
from otpgate.tokens import OUT_OF_BAND, Suspension, Token, TokenType, escape_unsafe


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
    attribute: str = ""
    """E-mail/SMS: the attribute of the user's entry its codes go to."""
    destination: str | None = None
    """E-mail/SMS: the masked destination read from the entry, or why it is unusable
    ("no value", "2 values"); None: not read (``list``)."""
    code_sent: int = 0
    """E-mail/SMS: when the outstanding code was sent; 0: none outstanding."""
    code_expires: int = 0
    suspended: Suspension | None = None
    """The token's own suspension, while it lasts (the user's is ``UserSummary``'s)."""
    expires: int = 0
    """A temporary list: when its codes stop working; 0: never."""

    def status(self, now: float) -> str:
        """"active", "suspended ..." or a temporary list's expiry."""
        if self.suspended is not None:
            return describe(self.suspended)
        if self.expires:
            verb = "expired" if now >= self.expires else "works until"
            return f"temporary list, {verb} {when(self.expires)}"
        return "active"

    @property
    def sent_by_code(self) -> bool:
        return self.type in {t.value for t in OUT_OF_BAND}

    def code_text(self) -> str:
        if not self.code_sent:
            return "none outstanding"
        return f"code sent at {when(self.code_sent)}, expires {when(self.code_expires)}"

    def to_dict(self) -> dict[str, Any]:
        sent = {
            "attribute": self.attribute,
            "destination": self.destination,
            "code": {"sent": self.code_sent, "expires": self.code_expires}
            if self.code_sent
            else None,
        }
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
            "suspended": _suspension_doc(self.suspended),
            "expires": self.expires or None,
            **(sent if self.sent_by_code else {}),
        }


def _suspension_doc(held: Suspension | None) -> dict[str, int | None] | None:
    return None if held is None else {"since": held.since, "until": held.until or None}


@dataclass(frozen=True)
class UserSummary:
    user: str
    dn: str
    tokens: tuple[TokenRow, ...]
    failures: int
    locked_until: int
    sends_last_hour: int = 0
    """Codes sent to the user by e-mail or SMS in the hour before the summary was made."""
    suspension: Suspension | None = None
    """All of the user's OTP is suspended (while it lasts)."""
    pin_set: int | None = None
    """When the user's PIN was set (Unix time); None: no PIN (read from the use state)."""

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
            "sends_last_hour": self.sends_last_hour,
            "suspended": _suspension_doc(self.suspension),
            "pin": self.pin_set is not None,
            "pin_set": self.pin_set or None,
        }


def _details(token: Token) -> str:
    if token.type is TokenType.TOTP:
        return f"{token.digits} digits, {token.algorithm.value}, {token.period}s"
    if token.type is TokenType.HOTP:
        return f"{token.digits} digits, {token.algorithm.value}"
    if token.type is TokenType.YUBICO:
        return f"public id {token.public_id}"
    if token.type in OUT_OF_BAND:
        return f"{token.digits} digits, sent to {token.attribute}"
    if token.scratch is not None:
        return f"{len(token.scratch.hashes)} codes of {token.scratch.length} digits"
    return ""


def summarise(
    user: str,
    dn: str,
    state: OtpState,
    now: float | None = None,
    lifetime: int = OtpConfig.sent_code_lifetime,
    destinations: Mapping[str, str] | None = None,
) -> UserSummary:
    """``now``/``lifetime`` (``[delivery] code_lifetime``): which sent code is outstanding;
    ``destinations``: token id -> the shown destination of e-mail/SMS tokens."""
    now = time.time() if now is None else now
    rows = []
    for token in state.tokens:
        use = state.used.use_of(token.id)
        sent = use.sent if outstanding(use, now, lifetime) else 0
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
                token.attribute,
                (destinations or {}).get(token.id),
                sent,
                sent + lifetime if sent else 0,
                _own_suspension(state, token.id, now),
                token.expires,
            )
        )
    used = state.used
    pin = None if used.pin is None else used.pin.set_at
    return UserSummary(
        user,
        dn,
        tuple(rows),
        used.failures,
        used.locked_until,
        len(recent_sends(used, now)),
        suspension=user_suspension(used, now),
        pin_set=pin,
    )


def _own_suspension(state: OtpState, token_id: str, now: float) -> Suspension | None:
    held = state.used.suspensions.get(token_id)
    return held if held is not None and held.active(now) else None


def user_label(dn: str) -> str:
    """What ``list`` calls a user: the value of the DN's first RDN."""
    first = dn.split(",", 1)[0]
    return first.split("=", 1)[1] if "=" in first else dn


def collect_summaries(
    users: Iterable[UserEntry | tuple[str, Exception]],
    decode: Callable[[UserEntry], OtpState],
    now: float,
    locked_only: bool = False,
    lifetime: int = OtpConfig.sent_code_lifetime,
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
        summary = summarise(user_label(item.dn), item.dn, state, now, lifetime)
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


TOKEN_HEADERS = (
    "ID", "TYPE", "SERIAL", "LABEL", "CREATED", "LAST USED", "DRIFT", "SCRATCH LEFT", "STATUS",
)  # fmt: skip


def token_cells(row: TokenRow, now: float) -> list[str]:
    status = "active"
    if row.suspended is not None:
        status = "suspended"
    elif row.expires:
        status = "expired" if now >= row.expires else "temporary"
    return [
        row.id,
        row.type,
        row.serial or "-",
        row.label or "-",
        when(row.created),
        when(row.last_used),
        str(row.drift) if row.type == "totp" else "-",
        "-" if row.scratch_remaining is None else str(row.scratch_remaining),
        status,
    ]


def show_text(summary: UserSummary, now: float) -> str:
    head = f"{printable(summary.user)} ({printable(summary.dn)})\nlockout: {summary.lockout(now)}\n"
    if summary.suspension is not None:
        head += f"all OTP {describe(summary.suspension)}: every token is refused\n"
    pin = "none" if summary.pin_set is None else f"set {when(summary.pin_set)}"
    head += f"PIN: {pin}\n"
    if not summary.tokens:
        return head + "no tokens"
    lines = [table(TOKEN_HEADERS, [token_cells(r, now) for r in summary.tokens])]
    for row in summary.tokens:
        if row.status(now) != "active":
            lines.append(printable(f"{row.type} {row.id}: {row.status(now)}"))
    sent = [r for r in summary.tokens if r.sent_by_code]
    for row in sent:
        where = "not read" if row.destination is None else row.destination
        lines.append(
            printable(f"{row.type} {row.id}: to {row.attribute} {where}; {row.code_text()}")
        )
    if sent or summary.sends_last_hour:
        lines.append(f"codes sent in the last hour: {summary.sends_last_hour}")
    return head + "\n".join(lines)


def list_text(summaries: Sequence[UserSummary], now: float) -> str:
    headers = ("USER", *TOKEN_HEADERS, "LOCKOUT")
    rows = []
    for s in summaries:
        lock = s.lockout(now) + ("; all OTP suspended" if s.suspension is not None else "")
        if not s.tokens:
            rows.append([s.user, *(["-"] * len(TOKEN_HEADERS)), lock])
        rows.extend([s.user, *token_cells(r, now), lock] for r in s.tokens)
    return table(headers, rows) if rows else "no user has OTP state"
