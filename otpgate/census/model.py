"""Who binds, from the audit trail: one constant-size accumulator per account, fed one audit
event at a time, and the verdict on each account (a service, a person without a token, a
person ready for codes).  Pure: no file is read here (``read.py`` does that).

Memory grows with the number of accounts, never with the number of lines: an account keeps
counts, a bounded counter of its source addresses, a 24-bit mask of the hours of day it was
active, the running mean and variance of the intervals between its binds (Welford) and its
first and last time.  A log of a year of binds from 2,000 accounts takes what a day takes.

The audit records what clients sent, and anyone can type any account's name: the rhythm,
the sources and the count a verdict rests on are taken from *accepted* logins only (which
needed the account's password), and an account that holds a token or typed a code is never
called a service.  Refused logins are counted and shown, and keep an account out of the
suggestion (``suggest.py``).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

SERVICE = "looks like a service"
NO_TOKEN = "person without token"  # noqa: S105 - a verdict, not a password
READY = "person ready"
_ORDER = {SERVICE: 0, NO_TOKEN: 1, READY: 2}

# -- the verdict's thresholds ----------------------------------------------------------------

SERVICE_MIN_BINDS = 10
"""Fewer binds say too little about a rhythm: a person who logged in a few times would pass."""
SERVICE_MAX_CLIENTS = 3
"""A job runs on one host, or a few behind a cluster; people move between desks, VPN and home."""
STEADY_CV = 0.5
"""Coefficient of variation of the intervals below which binds are "steady" (a timer's are
near 0; a Poisson arrival's are 1; a person's, with nights and weekends between, well above)."""
AROUND_THE_CLOCK_HOURS = 16
"""Active in at least this many distinct hours of day (UTC): more than any working day."""
NIGHT_HOURS = frozenset(range(5))
"""00:00-05:00 UTC: an account active only then is a nightly job (one that binds a few times
a night is not steady: the day between makes its intervals uneven)."""
MIN_INTERVAL = 1.0
"""Binds less than this many seconds apart are one burst (a client's connection pool binding
twice); they do not count as intervals, so bursts do not hide a steady timer."""

# -- the bounds on one account's memory ------------------------------------------------------

CLIENT_SLOTS = 16
"""Source addresses counted per account; more distinct ones are shown as "16+".  When the
slots are full, every ``CLIENT_SLOTS`` new addresses take one off every count and free the
slots that reach zero (Misra-Gries, batched): an address behind more than 1/16 of the
binds keeps its slot, at a constant cost per bind."""
SHOWN_CLIENTS = 8
"""Addresses listed per account, most frequent first."""
NAME_SLOTS = 8
"""Distinct front ends and channels kept per account."""
MAX_ACCOUNTS = 200_000
"""Accounts tracked at most: names typed by anyone (unknown users, guesses) would otherwise
make the census as large as the log; events of further accounts are counted as untracked."""

_NIGHT_MASK = sum(1 << h for h in NIGHT_HOURS)
LOGIN_OUTCOMES = frozenset({"accept", "reject", "challenge"})
"""The outcomes of login events; the portal's own actions have others."""


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat().replace("+00:00", "Z")


def requires_code(policy: str) -> bool:
    """Whether the audit's ``policy`` says a code is required here ("otp", or "otp (exemption
    ... ended ...)"); otherwise it is why not (exempt, trusted network, grace...)."""
    return policy.startswith("otp")


@dataclass(frozen=True)
class AccountRow:
    """One account as the census saw it (times are Unix seconds)."""

    account: str
    """The DN when one was logged for it, else the name typed."""
    dn: str | None
    user: str | None
    binds: int
    accepted: int
    refused: int
    would_refuse: int
    """Report-only events that say enforcement would have refused."""
    codes: int
    """Events where a code was verified (the audit's token is set)."""
    clients: tuple[str, ...]
    """Up to ``SHOWN_CLIENTS`` source addresses, most frequent first."""
    client_count: int
    clients_more: bool
    """More distinct addresses than ``client_count`` were seen (shown "16+")."""
    front_ends: tuple[str, ...]
    channels: tuple[str, ...]
    listeners: tuple[str, ...]
    """LDAP listeners (listen strings) of its accepted logins, as exemptions name them."""
    nas: tuple[str, ...]
    """RADIUS clients (names, or networks) of its accepted logins."""
    enrolled: bool | None
    """Whether the account held a token when last looked at (None: never read)."""
    policy: str
    """The last policy the audit logged for it ("otp"..., "exempt: ...", or "")."""
    first_seen: float
    last_seen: float
    verdict: str
    why: str

    @property
    def token_text(self) -> str:
        """Whether it holds a token: "yes", "no", or "?" when no login looked (a typed code
        says yes)."""
        if self.enrolled is None:
            return "yes" if self.codes else "?"
        return "yes" if self.enrolled else "no"

    @property
    def clients_text(self) -> str:
        return f"{self.client_count}+" if self.clients_more else str(self.client_count)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, with ISO 8601 times (UTC)."""
        return {
            "account": self.account,
            "dn": self.dn,
            "user": self.user,
            "binds": self.binds,
            "accepted": self.accepted,
            "refused": self.refused,
            "would_refuse": self.would_refuse,
            "codes": self.codes,
            "clients": list(self.clients),
            "client_count": self.client_count,
            "clients_more": self.clients_more,
            "front_ends": list(self.front_ends),
            "channels": list(self.channels),
            "listeners": list(self.listeners),
            "nas": list(self.nas),
            "enrolled": self.enrolled,
            "policy": self.policy,
            "first_seen": _iso(self.first_seen),
            "last_seen": _iso(self.last_seen),
            "verdict": self.verdict,
            "why": self.why,
        }


FILTERS: dict[str, Callable[[AccountRow], bool]] = {
    "no-token": lambda r: r.enrolled is not True and r.codes == 0,
    "would-refuse": lambda r: r.would_refuse > 0 or (requires_code(r.policy) and not r.enrolled),
    "service": lambda r: r.verdict == SERVICE,
}
"""``--only`` choices: accounts that have no token and never typed a code; that enforcement
would refuse (report-only said so, or a code is required and they hold no token); services."""


class Account:
    """One account's constant-size accumulator."""

    __slots__ = (
        "accepted", "binds", "channels", "clients", "codes", "distinct", "dn", "enrolled",
        "first", "front_ends", "hours", "last", "last_ok", "listeners", "m2", "mean", "missed",
        "n", "nas", "policy", "refused", "user", "would_refuse",
    )  # fmt: skip

    def __init__(self, dn: str | None, user: str | None, t: float) -> None:
        self.dn = dn
        self.user = user
        self.binds = self.accepted = self.refused = self.would_refuse = self.codes = 0
        self.clients: dict[str, int] = {}
        self.distinct = self.missed = 0
        self.front_ends: list[str] = []
        self.channels: list[str] = []
        self.listeners: list[str] = []
        self.nas: list[str] = []
        self.enrolled: bool | None = None
        self.policy = ""
        self.first = self.last = t
        self.last_ok: float | None = None
        self.hours = 0
        self.n = 0
        self.mean = self.m2 = 0.0

    def see_client(self, client: str) -> None:
        clients = self.clients
        if client in clients:
            clients[client] += 1
        elif len(clients) < CLIENT_SLOTS:
            clients[client] = 1
            self.distinct += 1
        else:  # full: Misra-Gries, its decrements batched (one pass per CLIENT_SLOTS misses)
            self.distinct += 1
            self.missed += 1
            if self.missed >= CLIENT_SLOTS:
                self.missed = 0
                for address, count in list(clients.items()):
                    if count > 1:
                        clients[address] = count - 1
                    else:
                        del clients[address]

    def see_time(self, t: float) -> None:
        if t > self.last:
            self.last = t
        elif t < self.first:
            self.first = t

    def see_rhythm(self, t: float) -> None:
        """An accepted login's time: the hours and intervals the verdict reads."""
        self.hours |= 1 << int(t // 3600 % 24)
        last, self.last_ok = self.last_ok, t if self.last_ok is None else max(self.last_ok, t)
        if last is None:
            return
        gap = t - last
        if gap >= MIN_INTERVAL:
            self.n += 1
            delta = gap - self.mean
            self.mean += delta / self.n
            self.m2 += delta * (gap - self.mean)

    @property
    def cv(self) -> float | None:
        """Coefficient of variation of the intervals (None: fewer than two)."""
        if self.n < 2 or self.mean <= 0:
            return None
        return float((self.m2 / (self.n - 1)) ** 0.5 / self.mean)

    def verdict(self) -> tuple[str, str]:
        hours = bin(self.hours).count("1")
        sources = f"{self.distinct} source" + ("" if self.distinct == 1 else "s")
        if self.codes:
            return READY, f"typed a code {_times(self.codes)}"
        if self.enrolled:
            return READY, "holds a token, has not typed a code yet"
        if self.distinct <= SERVICE_MAX_CLIENTS and self.accepted >= SERVICE_MIN_BINDS:
            cv = self.cv
            rhythm = ""
            if cv is not None and cv <= STEADY_CV:
                rhythm = f"steady, every {_duration(self.mean)} (cv {cv:.2f})"
            elif hours >= AROUND_THE_CLOCK_HOURS:
                rhythm = f"around the clock ({hours} of 24 hours)"
            elif self.hours & ~_NIGHT_MASK == 0:
                rhythm = "only between 00:00 and 05:00 UTC"
            if rhythm:
                return SERVICE, f"{self.accepted} accepted binds, no code, {sources}, {rhythm}"
        if self.enrolled is None:
            return NO_TOKEN, f"never typed a code, token unknown, {sources}"
        return NO_TOKEN, f"no token, never typed a code, {sources}"

    def row(self) -> AccountRow:
        verdict, why = self.verdict()
        ranked = sorted(self.clients.items(), key=lambda kv: (-kv[1], kv[0]))
        more = self.distinct > CLIENT_SLOTS
        return AccountRow(
            account=self.dn or self.user or "",
            dn=self.dn,
            user=self.user,
            binds=self.binds,
            accepted=self.accepted,
            refused=self.refused,
            would_refuse=self.would_refuse,
            codes=self.codes,
            clients=tuple(c for c, _ in ranked[:SHOWN_CLIENTS]),
            client_count=CLIENT_SLOTS if more else self.distinct,
            clients_more=more,
            front_ends=tuple(self.front_ends),
            channels=tuple(self.channels),
            listeners=tuple(self.listeners),
            nas=tuple(self.nas),
            enrolled=self.enrolled,
            policy=self.policy,
            first_seen=self.first,
            last_seen=self.last,
            verdict=verdict,
            why=why,
        )


def _times(n: int) -> str:
    return "once" if n == 1 else f"{n} times"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _add_name(names: list[str], name: Any) -> None:
    if isinstance(name, str) and name not in names and len(names) < NAME_SLOTS:
        names.append(name)


class Census:
    """Audit events in, one row per account out."""

    def __init__(self) -> None:
        self.events = 0
        """Login events counted (``malformed`` lines and other events not among them)."""
        self.other = 0
        """Audit events that are no login (the portal's actions: enroll, revoke, a page
        viewed): not counted for any account."""
        self.malformed = 0
        """Lines or events that looked like audit events but could not be read."""
        self.untracked = 0
        """Events of accounts beyond ``MAX_ACCOUNTS``."""
        self.accounts: dict[str, Account] = {}

    def feed(self, event: dict[str, Any]) -> None:
        """Count one audit event (a dict as the JSON audit line holds it)."""
        try:
            t = float(event["time"])
            outcome = event["outcome"]
            user: Any = event.get("user")
            dn: Any = event.get("dn")
            key: str = (dn or user).lower()
        except (KeyError, TypeError, ValueError, AttributeError):
            self.malformed += 1
            return
        if not isinstance(outcome, str) or t != t:  # NaN
            self.malformed += 1
            return
        if outcome not in LOGIN_OUTCOMES:
            self.other += 1
            return
        self.events += 1
        account = self.accounts.get(key)
        if account is None:
            if len(self.accounts) >= MAX_ACCOUNTS:
                self.untracked += 1
                return
            account = self.accounts[key] = Account(
                dn if isinstance(dn, str) and dn else None,
                user if isinstance(user, str) else None,
                t,
            )
        account.binds += 1
        if outcome == "accept":
            account.accepted += 1
        elif outcome == "reject":
            account.refused += 1
        if event.get("report_only"):
            reason = event.get("reason")
            if isinstance(reason, str) and reason.startswith("report-only: would refuse"):
                account.would_refuse += 1
        if event.get("token") is not None:
            account.codes += 1
        front_end = event.get("front_end")
        if outcome == "accept":
            # What a verdict rests on needed the account's password: anyone can send
            # refused logins in its name, from any address, at any rhythm.
            client = event.get("client")
            if isinstance(client, str) and client:
                account.see_client(client)
            account.see_rhythm(t)
            where = event.get("where")
            if isinstance(where, str) and where:
                if front_end == "ldap" and where not in account.listeners:
                    _add_name(account.listeners, where)
                elif front_end == "radius" and where not in account.nas:
                    _add_name(account.nas, where)
        if front_end not in account.front_ends:
            _add_name(account.front_ends, front_end)
        channel = event.get("channel")
        if channel is not None and channel not in account.channels:
            _add_name(account.channels, channel)
        policy = event.get("policy")
        if isinstance(policy, str):
            account.policy = policy
        enrolled = event.get("enrolled")
        if isinstance(enrolled, bool):
            account.enrolled = enrolled
        if account.user is None and isinstance(user, str):
            account.user = user
        account.see_time(t)

    def rows(self) -> list[AccountRow]:
        """Services first, then persons without a token, then those ready; most binds first."""
        rows = [a.row() for a in self.accounts.values()]
        rows.sort(key=lambda r: (_ORDER[r.verdict], -r.binds, r.account.lower()))
        return rows

    def suggestion(self, today: datetime.date) -> str:
        """``[[policy.exempt]]`` tables for the services that need a code today ("" if none)."""
        from otpgate.census.suggest import suggestion

        return suggestion(self.rows(), today)
