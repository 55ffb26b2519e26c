"""``otpgate app-password``: create (the secret printed once), list and revoke a user's app
passwords.  The changes are ``otpgate.admin.apppasswords``'s (shared with the portal), each
inside the store's compare-and-swap; the places a new one may work are those of
``[app_passwords]``, named by their listen string or their ``listener_rules`` name."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from otpgate.cli.base import Command, admin, emit


def add_parsers(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: Callable[..., None]
) -> None:
    ap = sub.add_parser(
        "app-password",
        help="create (printed once), list or revoke a user's app passwords (for clients "
        "that cannot send a code: [app_passwords])",
    )
    ap.add_argument("user")
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--name", help="create one with this name (the application, 1-64 chars)")
    what.add_argument("--list", action="store_true", help="the user's app passwords")
    what.add_argument("--revoke", metavar="ID|NAME", help="revoke one (its id or name)")
    what.add_argument("--revoke-all", action="store_true", help="revoke every one of them")
    ap.add_argument(
        "--listener",
        action="append",
        default=[],
        metavar="L",
        help="an LDAP listener where it works (listen string or listener_rules name; repeat)",
    )
    ap.add_argument(
        "--nas", action="append", default=[], metavar="N", help="a RADIUS client (repeat)"
    )
    ap.add_argument(
        "--network",
        action="append",
        default=[],
        metavar="CIDR",
        help="only from this source network (repeat; default: from anywhere)",
    )
    ap.add_argument("--expires", metavar="YYYY-MM-DD", help="the last day it works (UTC)")
    common(ap)
    ap.set_defaults(func=Command("apppasswords", "cmd_app_password"))


def listener_named(name: str, listen: Sequence[str], names: Mapping[str, str]) -> str:
    """The listen string ``name`` is, or whose ``listener_rules`` name it is (else itself:
    ``scope_for`` refuses it by name)."""
    if name in listen:
        return name
    found = [w for w, shown in names.items() if shown == name]
    return found[0] if len(found) == 1 else name


def rows_text(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per app password (``listing`` rows: never a hash)."""
    from otpgate.admin.listing import printable, when

    lines = []
    for row in rows:
        end = f", until {when(row['exp'])}" if row.get("exp") else ""
        if row.get("expired"):
            end += " (expired)"
        used = "never used"
        if row.get("last_used"):
            used = f"last used {when(row['last_used'])} on {row['last_where']}"
            used += f" from {row['last_from']}" if row.get("last_from") else ""
        lines.append(
            printable(
                f"  {row['id']} {row['name']!r}: {row['scope']}{end}; "
                f"created {when(row['created'])}; {used}"
            )
        )
    return lines


def cmd_app_password(args: argparse.Namespace) -> int:
    from otpgate.admin.apppasswords import create_change, listing, revoke_change, scope_for

    now = time.time()
    with admin(args) as ctx:
        settings = ctx.config.app_passwords
        if args.name is not None:
            names = ctx.config.ldap_proxy.listener_names
            listeners = [listener_named(n, settings.listeners, names) for n in args.listener]
            scope = scope_for(settings, listeners, args.nas, args.network, args.expires, now)
            secret, change = create_change(args.name, scope, now, settings.max_per_user)
            user = ctx.store.resolve(args.user)
            done, user = ctx.store.update(user, change)
            doc = {"user": args.user, "dn": user.dn, "app_password": done.app.shown(),
                   "secret": done.secret}  # fmt: skip
            text = (
                f"app password {done.app.id} {done.app.name!r} for {args.user}, works for "
                f"{scope.text()}:\n\n    {secret}\n\n"
                "Shown only this once: give it to the user now (it is not stored)."
            )
            emit(args, doc, text)
            return 0
        user = ctx.store.resolve(args.user)
        if args.list:
            rows = listing(ctx.store.decode(user, with_secrets=False), now)
            doc = {"user": args.user, "dn": user.dn, "app_passwords": rows}
            body = rows_text(rows) or ["  none"]
            emit(args, doc, "\n".join([f"{args.user}: app passwords", *body]))
            return 0
        ref = None if args.revoke_all else args.revoke
        gone, user = ctx.store.update(user, lambda s: revoke_change(s, ref))
    ids = [a.id for a in gone]
    what = ", ".join(f"{a.id} {a.name!r}" for a in gone)
    text = f"{args.user}: revoked {what}" if gone else f"{args.user} had no app passwords"
    emit(args, {"user": args.user, "dn": user.dn, "revoked": ids}, text)
    return 0
