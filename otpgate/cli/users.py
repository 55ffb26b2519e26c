"""Commands on one user's OTP state: enroll (``--type email|sms``: ``sentcodes.py``), show,
list, revoke/reset, resync, unlock, scratch (``--mail``: ``scratchmail.py``) and pin.  The state
changes themselves are ``otpgate.admin``'s (enrollment, manage)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from otpgate.cli.base import (
    Admin,
    CommandFailed,
    UsageError,
    admin,
    decode_base32,
    emit,
    fill_private,
    private_file,
)
from otpgate.otp.oath import Algorithm

if TYPE_CHECKING:
    from otpgate.admin.listing import UserSummary
    from otpgate.directory.records import OtpState, UserEntry
    from otpgate.tokens import Token


def cmd_enroll(args: argparse.Namespace) -> int:
    from otpgate.admin.render import qr_bytes, qr_terminal

    if args.type in ("email", "sms"):
        from otpgate.cli.sentcodes import cmd_enroll_sent

        return cmd_enroll_sent(args)
    if args.attribute is not None:
        raise UsageError(f"--attribute is for email/sms tokens, not --type {args.type}")
    key = decode_base32(args.secret) if args.secret else None
    if args.qr and Path(args.qr).suffix.lower() not in (".png", ".svg"):
        raise UsageError(f"--qr {args.qr}: give a .png or .svg file name")
    # The QR file is created (empty, 0600, exclusively) before the directory changes: a bad
    # path must fail while the user's old token still works.
    qr_file = private_file(Path(args.qr), "--qr", "nothing was changed") if args.qr else None
    try:
        enrolled, gone, user, uri = _enroll(args, key)
    except BaseException:
        if qr_file is not None:
            qr_file.discard()
        raise
    qr_error = fill_private(qr_file, lambda: qr_bytes(uri, Path(args.qr).suffix))
    doc = {
        "user": args.user,
        "dn": user.dn,
        "token": enrolled.shown(),
        "replaced": [t.id for t in gone],
        "uri": uri,
        "qr_file": None if qr_error else args.qr,
    }
    lines = [
        f"enrolled {enrolled.type.value.upper()} token {enrolled.id} for {args.user} ({user.dn})"
    ]
    if gone:
        lines.append("replaced: " + ", ".join(f"{t.id} ({t.type.value})" for t in gone))
    lines.append("Add it to an authenticator app: scan the QR code or enter the key URI.")
    if not args.no_qr:
        lines.append(qr_terminal(uri).rstrip("\n"))
    lines.append(uri)
    if args.qr and not qr_error:
        lines.append(f"QR code written to {args.qr} (mode 0600: it holds the secret)")
    emit(args, doc, "\n".join(lines))
    if qr_error:
        raise CommandFailed(
            f"the token is enrolled, but the QR file {args.qr} could not be written "
            f"({qr_error}); use the key URI printed above"
        )
    return 0


def _enroll(
    args: argparse.Namespace, key: bytes | None
) -> tuple[Token, tuple[Token, ...], UserEntry, str]:
    from otpgate.admin.enrollment import enroll_replacing, new_oath_token, otpauth_uri
    from otpgate.tokens import TokenType

    with admin(args) as ctx:
        otp = ctx.config.otp
        try:
            token, secret = new_oath_token(
                otp,
                TokenType(args.type),
                key=key,
                label=args.label or "",
                digits=args.digits,
                algorithm=Algorithm(args.algorithm) if args.algorithm else None,
                period=args.period,
            )
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
        user = ctx.store.resolve(args.user)
        change = enroll_replacing(token, secret, otp.max_tokens_per_user, not args.keep_existing)
        (enrolled, gone), user = ctx.store.update(user, change)
        uri = otpauth_uri(enrolled, secret, args.user, otp.issuer)
    return enrolled, gone, user, uri


def _summary(ctx: Admin, name: str, now: float) -> tuple[UserSummary, OtpState]:
    from otpgate.admin.listing import summarise
    from otpgate.admin.sentcodes import shown_destination
    from otpgate.auth.oob import sent_tokens

    user = ctx.store.resolve(name)
    # Listing never decrypts a seed: decode without it.
    state = ctx.store.decode(user, with_secrets=False)
    # E-mail/SMS tokens: where their codes would go now, read from the entry, masked.
    sent = sent_tokens(state)
    values = ctx.entry_values(user.dn, sorted({t.attribute for t in sent})) if sent else {}
    delivery = ctx.config.delivery
    prefixes = delivery.sms_country_prefixes if delivery is not None else ()
    shown = {t.id: shown_destination(t, values[t.attribute], prefixes) for t in sent}
    lifetime = ctx.config.otp.sent_code_lifetime
    return summarise(name, user.dn, state, now, lifetime, shown), state


def cmd_show(args: argparse.Namespace) -> int:
    from otpgate.admin.apppasswords import listing
    from otpgate.admin.listing import show_text
    from otpgate.cli.apppasswords import rows_text

    now = time.time()
    with admin(args) as ctx:
        summary, state = _summary(ctx, args.user, now)
    apps = listing(state, now)
    text = show_text(summary, now)
    if apps:
        text += "\napp passwords:\n" + "\n".join(rows_text(apps))
    emit(args, {**summary.to_dict(now), "app_passwords": apps}, text)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from otpgate.admin.listing import collect_summaries, list_text
    from otpgate.directory.scans import users_with_state

    now = time.time()
    with admin(args) as ctx:
        store = ctx.store
        summaries, problems = collect_summaries(
            users_with_state(store),
            lambda user: store.decode(user, with_secrets=False),
            now,
            args.locked,
            ctx.config.otp.sent_code_lifetime,
        )
    text = list_text(summaries, now)
    if problems:
        text += "\n" + "\n".join(f"unreadable: {p['dn']}: {p['error']}" for p in problems)
    emit(args, {"users": [s.to_dict(now) for s in summaries], "unreadable": problems}, text)
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    from otpgate.admin.manage import reset_change, revoke_change

    with admin(args) as ctx:
        user = ctx.store.resolve(args.user)
        if args.command == "reset":
            removed, user = ctx.store.update(user, reset_change)
        else:
            removed, user = ctx.store.update(user, lambda s: revoke_change(s, args.token))
    ids = [t.id for t in removed]
    what = ", ".join(
        f"{t.id} ({t.type.value}{' ' + t.serial if t.serial else ''})" for t in removed
    )
    text = f"{args.user}: revoked {what}" if removed else f"{args.user} had no tokens"
    emit(args, {"user": args.user, "dn": user.dn, "revoked": ids}, text)
    return 0


def cmd_resync(args: argparse.Namespace) -> int:
    from otpgate.admin.manage import resync_change

    codes = (args.code1, args.code2, args.code3)
    with admin(args) as ctx:
        user = ctx.store.resolve(args.user)
        now = time.time()
        (token, counter), user = ctx.store.update(
            user, lambda s: resync_change(s, args.token, codes, now)
        )
    text = (
        f"{args.user}: token {token.id} resynchronised at counter {counter}; "
        f"the next code is number {counter + 1}"
    )
    emit(args, {"user": args.user, "token": token.id, "counter": counter}, text)
    return 0


def cmd_unlock(args: argparse.Namespace) -> int:
    from otpgate.admin.manage import unlock_change

    with admin(args) as ctx:
        user = ctx.store.resolve(args.user)
        before, user = ctx.store.update(user, unlock_change)
    was = "was locked" if before.locked_until > time.time() else "was not locked"
    text = f"{args.user}: unlocked ({was}, {before.failures} recent failure(s) cleared)"
    emit(
        args,
        {
            "user": args.user,
            "was_locked": before.locked_until > time.time(),
            "failures_cleared": before.failures,
        },
        text,
    )
    return 0


def cmd_scratch(args: argparse.Namespace) -> int:
    from otpgate.admin.manage import scratch_change
    from otpgate.admin.render import scratch_card_html
    from otpgate.otp.scratch import format_for_print, generate_scratch_list

    if getattr(args, "mail", False):
        from otpgate.cli.scratchmail import cmd_scratch_mail

        return cmd_scratch_mail(args)
    if args.card and Path(args.card).suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"--card {args.card}: the card is HTML (give a .html file name)")
    try:
        codes, scratch = generate_scratch_list(args.count, args.length)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    # The card file first (empty, 0600, exclusively): a bad path fails while the old list
    # still works.
    card = private_file(Path(args.card), "--card", "nothing was changed") if args.card else None
    try:
        with admin(args) as ctx:
            user = ctx.store.resolve(args.user)
            now = time.time()
            token, user = ctx.store.update(user, lambda s: scratch_change(s, scratch, now))
            issuer = ctx.config.otp.issuer
    except BaseException:
        if card is not None:
            card.discard()
        raise
    card_error = fill_private(
        card, lambda: scratch_card_html(args.user, issuer, codes, now).encode("utf-8")
    )
    printed = format_for_print(codes)
    lines = [f"new scratch list {token.id} for {args.user}; any previous list no longer works:"]
    lines += [f"  {i:>3}. {code}" for i, code in enumerate(printed, start=1)]
    if args.card and not card_error:
        lines.append(f"print-ready card: {args.card} (mode 0600; delete it after printing)")
    emit(
        args,
        {
            "user": args.user,
            "token": token.id,
            "codes": codes,
            "card": None if card_error else args.card,
        },
        "\n".join(lines),
    )
    if card_error:
        raise CommandFailed(
            f"the new list is active, but the card {args.card} could not be written "
            f"({card_error}); the codes are printed above"
        )
    return 0


def _read_pin() -> str:
    """The new PIN: asked twice (no echo) on a terminal, else one line of standard input."""
    import otpgate.cli
    from otpgate.admin.pin import PinRefused, valid_pin

    try:
        if sys.stdin.isatty():
            return valid_pin(otpgate.cli.prompt_secret("New PIN: "),
                             otpgate.cli.prompt_secret("Repeat the PIN: "))  # fmt: skip
        return valid_pin(sys.stdin.readline().rstrip("\r\n"))
    except PinRefused as exc:
        raise UsageError(f"{exc}; nothing was changed") from None


def cmd_pin(args: argparse.Namespace) -> int:
    from otpgate.admin.pin import clear_pin_change, set_pin_change

    pin = _read_pin() if args.set else None
    with admin(args) as ctx:
        user = ctx.store.resolve(args.user)
        now = time.time()
        if pin is not None:
            had, user = ctx.store.update(user, lambda s: set_pin_change(s, pin, now))
            done = "new PIN set (the old one no longer works)" if had else "PIN set"
            text = f"{args.user}: {done}"
        else:
            had, user = ctx.store.update(user, clear_pin_change)
            text = f"{args.user}: PIN {'cleared' if had else 'was not set'}"
    doc = {"user": args.user, "dn": user.dn, "pin": bool(args.set), "had_pin": had}
    emit(args, doc, text)
    return 0
