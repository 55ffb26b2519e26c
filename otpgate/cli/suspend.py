"""``otpgate suspend``, ``resume`` and ``lost``: a token's or a user's OTP refused for a
while, and the temporary list for a lost device.  The changes are
``otpgate.admin.suspend``'s (shared with the portal's help desk)."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from otpgate.cli.base import Command, UsageError, admin, emit


def add_parsers(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: Callable[..., None]
) -> None:
    sp = sub.add_parser(
        "suspend", help="suspend one token or all of a user's OTP (its codes are refused)"
    )
    sp.add_argument("user")
    sp.add_argument(
        "--token", help="token id, serial or label (default: all of the user's OTP)"
    )
    end = sp.add_mutually_exclusive_group()
    end.add_argument(
        "--until",
        metavar="DATE",
        help="end by itself at this RFC 3339 time with an offset (2025-07-01T18:00:00+02:00)",
    )
    end.add_argument("--days", type=int, metavar="N", help="end by itself after N days")
    common(sp)
    sp.set_defaults(func=Command("suspend", "cmd_suspend"))

    rs = sub.add_parser("resume", help="end the suspension of a token or of a user's OTP")
    rs.add_argument("user")
    rs.add_argument("--token", help="token id, serial or label (default: the user's suspension)")
    common(rs)
    rs.set_defaults(func=Command("suspend", "cmd_resume"))

    lo = sub.add_parser(
        "lost",
        help="a device is lost: suspend it, and print a temporary scratch list valid N days",
    )
    lo.add_argument("user")
    lo.add_argument("--token", help="the lost device: id, serial or label (optional if one)")
    lo.add_argument(
        "--days", type=int, required=True, help="how long the temporary list works (1-90)"
    )
    lo.add_argument("--count", type=int, default=10, help="how many codes (1-100, default 10)")
    lo.add_argument("--length", type=int, default=8, help="digits per code (6-12, default 8)")
    common(lo)
    lo.set_defaults(func=Command("suspend", "cmd_lost"))


def cmd_suspend(args: argparse.Namespace) -> int:
    from otpgate.admin.suspend import (
        MAX_SUSPEND_DAYS,
        BadEndDate,
        describe,
        end_date,
        suspend_change,
    )

    now = time.time()
    try:
        until = end_date(args.until, args.days, now, MAX_SUSPEND_DAYS)
    except BadEndDate as exc:
        raise UsageError(str(exc)) from exc
    with admin(args) as ctx:
        user = ctx.store.resolve(args.user)
        done, user = ctx.store.update(user, lambda s: suspend_change(s, args.token, until, now))
    what = f"token {done.token.id}" if done.token else "all OTP"
    doc = {
        "user": args.user,
        "dn": user.dn,
        "token": done.token.id if done.token else None,
        "since": done.suspension.since,
        "until": done.suspension.until or None,
    }
    emit(args, doc, f"{args.user}: {what} {describe(done.suspension)}")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from otpgate.admin.suspend import describe, resume_change

    now = time.time()
    with admin(args) as ctx:
        user = ctx.store.resolve(args.user)
        done, user = ctx.store.update(user, lambda s: resume_change(s, args.token, now))
    what = f"token {done.token.id}" if done.token else "all OTP"
    doc = {"user": args.user, "dn": user.dn, "token": done.token.id if done.token else None}
    emit(args, doc, f"{args.user}: {what} resumed (was {describe(done.suspension)})")
    return 0


def cmd_lost(args: argparse.Namespace) -> int:
    from otpgate.admin.suspend import MAX_TEMPORARY_DAYS, BadEndDate, end_date, lost_change
    from otpgate.auth.suspension import iso
    from otpgate.otp.scratch import format_for_print, generate_scratch_list

    now = time.time()
    try:
        until = end_date(None, args.days, now, MAX_TEMPORARY_DAYS)
        codes, scratch = generate_scratch_list(args.count, args.length)
    except (BadEndDate, ValueError) as exc:
        raise UsageError(str(exc)) from exc
    with admin(args) as ctx:
        user = ctx.store.resolve(args.user)
        done, user = ctx.store.update(
            user, lambda s: lost_change(s, args.token, scratch, until, now)
        )
    lines = [
        f"{args.user}: token {done.lost.id} ({done.lost.type.value}) suspended until resumed",
        f"temporary list {done.temporary.id}, valid until {iso(until)}:",
        *(f"  {i:>3}. {code}" for i, code in enumerate(format_for_print(codes), start=1)),
    ]
    if done.replaced:
        lines.append("earlier temporary list(s) no longer work: " + ", ".join(done.replaced))
    if done.apps:
        lines.append("app passwords made in its sessions, revoked: " + ", ".join(done.apps))
    doc = {
        "user": args.user,
        "dn": user.dn,
        "suspended": done.lost.id,
        "token": done.temporary.id,
        "expires": until,
        "codes": codes,
        "replaced": list(done.replaced),
        "revoked_app_passwords": list(done.apps),
    }
    emit(args, doc, "\n".join(lines))
    return 0
