"""Suspending and resuming OTP, and the temporary list for a lost device (pure): each returns
the StateChange to write, shared by the CLI (``otpgate suspend|resume|lost``) and the
portal's help desk.

Where a suspension lives: the user's encrypted use state (``UsedState.suspension`` for all
of the user's OTP, ``UsedState.suspensions`` by token), the value every login's
compare-and-swap is made on.  Writing it changes that value, so a gateway that decided on a
cached state from before loses its write and decides again on the suspended one; and only
the service account can write it (``docs/DECISIONS.md``, "Suspension and lost devices").
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace

from otpgate.admin.apppasswords import dropping_apps, made_with
from otpgate.admin.manage import find_token
from otpgate.auth.suspension import ended, iso
from otpgate.directory.records import OtpState, StateChange
from otpgate.errors import PolicyError
from otpgate.otp.scratch import ScratchList
from otpgate.tokens import Suspension, Token, TokenType, new_token_id

BY_ID_OR_SERIAL = ("id", "serial")
"""How suspend, resume and lost name a token: never by its label, which the user (possibly
the thief, in a session opened with the lost device) may have renamed to mislead."""

DAY = 86400
MAX_SUSPEND_DAYS = 3650
MAX_TEMPORARY_DAYS = 90
"""A temporary list is a bridge until the device is back or replaced, not a scratch list."""
TEMPORARY_LABEL = "temporary list"


class BadEndDate(PolicyError):
    """An end date that is not one (the CLI reports it as a usage error)."""


def end_date(until: str | None, days: int | None, now: float, max_days: int) -> int:
    """The Unix time a suspension or list ends: ``until`` (RFC 3339 with an offset, e.g.
    ``2025-07-01T18:00:00+02:00`` or ``...Z``) or ``days`` from now; neither: 0 (until
    resumed)."""
    if until is not None and days is not None:
        raise BadEndDate("give an end date or a number of days, not both")
    if days is not None:
        if not 1 <= days <= max_days:
            raise BadEndDate(f"days: {days} (1 to {max_days})")
        return int(now) + days * DAY
    if until is None or not until.strip():
        return 0
    try:
        when = dt.datetime.fromisoformat(until.strip())
    except ValueError:
        raise BadEndDate(f"{until!r} is not an RFC 3339 date and time") from None
    if when.tzinfo is None:
        raise BadEndDate(
            f"{until!r}: give a date, a time and an offset (2025-07-01T18:00:00+02:00, or Z)"
        )
    stamp = int(when.timestamp())
    if stamp <= now:
        raise BadEndDate(f"{until} is not in the future")
    return stamp


def describe(held: Suspension) -> str:
    end = f"until {iso(held.until)}" if held.until else "until resumed"
    return f"suspended since {iso(held.since)}, {end}"


@dataclass(frozen=True)
class Suspended:
    """What a suspend or resume changed: ``token`` (None: all of the user's OTP) and the
    suspension written or ended."""

    token: Token | None
    suspension: Suspension


def suspend_change(
    state: OtpState, ref: str | None, until: int, now: float
) -> StateChange[Suspended]:
    """Suspend the token ``ref`` names (id or serial), or with no ``ref`` all of the
    user's OTP (tokens enrolled later included), until ``until`` (0: until resumed).  A
    suspension already there is replaced by this one."""
    if until and until <= now:
        raise BadEndDate(f"{iso(until)} is not in the future")
    used = ended(state.used, now)
    held = Suspension(int(now), until)
    if ref is None:
        return StateChange(Suspended(None, held), used=replace(used, suspension=held))
    token = find_token(state, ref, fields=BY_ID_OR_SERIAL)
    suspensions = {**used.suspensions, token.id: held}
    return StateChange(Suspended(token, held), used=replace(used, suspensions=suspensions))


def resume_change(state: OtpState, ref: str | None, now: float) -> StateChange[Suspended]:
    """End the suspension of the token ``ref`` names, or with no ``ref`` the suspension of
    all of the user's OTP.  Resuming the user leaves the tokens suspended on their own (a
    lost device stays suspended until it is resumed by name)."""
    used = ended(state.used, now)
    if ref is None:
        held = used.suspension
        if held is None:
            named = ", ".join(sorted(used.suspensions))
            also = f"; suspended tokens: {named} (resume each by its id)" if named else ""
            raise PolicyError(f"the user's OTP is not suspended{also}")
        return StateChange(Suspended(None, held), used=replace(used, suspension=None))
    token = find_token(state, ref, fields=BY_ID_OR_SERIAL)
    held = used.suspensions.get(token.id)
    if held is None:
        whole = " (all of the user's OTP is: resume the user)" if used.suspension else ""
        raise PolicyError(f"token {token.id} is not suspended{whole}")
    rest = {k: v for k, v in used.suspensions.items() if k != token.id}
    return StateChange(Suspended(token, held), used=replace(used, suspensions=rest))


@dataclass(frozen=True)
class Lost:
    lost: Token
    """The device reported lost, suspended until resumed."""
    temporary: Token
    """The temporary scratch list, expiring at ``temporary.expires``."""
    replaced: tuple[str, ...]
    """Ids of earlier temporary lists, gone."""
    apps: tuple[str, ...] = ()
    """Ids of the app passwords created in portal sessions the device opened, revoked."""


def lost_change(
    state: OtpState, ref: str | None, scratch: ScratchList, until: int, now: float
) -> StateChange[Lost]:
    """A device is lost: it is suspended until resumed (or revoked), and the user gets a
    temporary scratch list that stops working at ``until``; an earlier temporary list is
    replaced.  The device's suspension does not end with the list: only someone who sees
    the device back can say it is safe again."""
    if until <= now:
        raise BadEndDate(f"{iso(until)} is not in the future")
    devices = tuple(t for t in state.tokens if not t.expires)
    token = find_token(replace(state, tokens=devices), ref, fields=BY_ID_OR_SERIAL)
    used = ended(state.used, now)
    held = used.suspensions.get(token.id)
    if held is None or held.until:
        held = Suspension(int(now), 0)
    earlier = {t.id for t in state.tokens if t.expires}
    temporary = Token(
        id=new_token_id(),
        type=TokenType.SCRATCH,
        created=int(now),
        label=TEMPORARY_LABEL,
        scratch=scratch,
        expires=until,
    )
    used = used.without(earlier)
    used = replace(used, suspensions={**used.suspensions, token.id: held})
    kept = tuple(t for t in state.tokens if t.id not in earlier)
    # The app passwords made in sessions the lost device opened may be the finder's.
    apps = made_with(state, {token.id, *earlier})
    result = Lost(token, temporary, tuple(sorted(earlier)), tuple(sorted(apps)))
    change = StateChange(result, used=used, tokens=(*kept, temporary))
    return dropping_apps(state, change, apps)
