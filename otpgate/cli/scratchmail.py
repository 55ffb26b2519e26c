"""``otpgate scratch USER --mail``: a new scratch list sent to the user's own address.

The order keeps the state consistent whatever fails:

1. the config must name e-mail servers, and the user's own entry must hold one plain
   address in the configured attribute (``[delivery] mail_attribute``, default ``mail``):
   otherwise nothing is written;
2. the new list is written (one compare-and-swap; the previous list stops working);
3. the list is sent, the servers tried in order.  The command prints the masked address
   and the server that took it, never the codes.  When every server failed, the new list
   stays active but nobody has seen it: the command says so and exits 1, and the admin
   issues another list (``--card`` to print it, or ``--mail`` again once mail works).
   See docs/DECISIONS.md.
"""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

from otpgate.cli.base import CommandFailed, UsageError, admin, emit, run_reactor

if TYPE_CHECKING:
    from otpgate.outofband.config import SmtpServer
    from otpgate.outofband.mail import MailContent
    from otpgate.outofband.result import Delivery


def cmd_scratch_mail(args: argparse.Namespace) -> int:
    from otpgate.otp.scratch import generate_scratch_list
    from otpgate.outofband.mask import mask_email
    from otpgate.outofband.scratchmail import (
        NoMailAddress,
        mail_address,
        new_list_change,
        outcome_text,
        scratch_mail,
    )

    if args.card:
        raise UsageError("give --mail or --card, not both (the mailed list is not printed here)")
    try:
        codes, scratch = generate_scratch_list(args.count, args.length)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    with admin(args) as ctx:
        delivery = ctx.config.delivery
        if delivery is None or not delivery.smtp:
            raise UsageError(
                "--mail needs e-mail servers ([[delivery.smtp]] in the config); nothing was changed"
            )
        attribute = delivery.mail_attribute
        user = ctx.store.resolve(args.user)
        try:
            values = ctx.entry_values(user.dn, [attribute])[attribute]
            address = mail_address(args.user, attribute, values)
        except NoMailAddress as exc:
            raise CommandFailed(str(exc)) from None
        now = time.time()
        token, user = ctx.store.update(user, lambda s: new_list_change(s, scratch, now))
        issuer = ctx.config.otp.issuer
    content = scratch_mail(args.user, issuer, codes, delivery.mail_subject, now)
    del codes
    result = _send(delivery.smtp, address, content)
    masked = mask_email(address)
    doc = {
        "user": args.user,
        "token": token.id,
        "sent_to": masked,
        "delivered_by": result.delivered_by,
        "attempts": [{"server": a.gateway, "failure": a.reason or None} for a in result.attempts],
    }
    if result.ok:
        text = (
            f"new scratch list {token.id} for {args.user} sent to {masked} by "
            f"{result.delivered_by}; any previous list no longer works"
        )
        emit(args, doc, text)
        return 0
    emit(args, doc, "")
    raise CommandFailed(
        f"the new scratch list {token.id} is active but {outcome_text(result)}; "
        "the previous list no longer works and nobody has the new one: issue "
        f"another with otpgate scratch {args.user} --card FILE.html (or --mail once mail works)"
    )


def _send(servers: tuple[SmtpServer, ...], address: str, content: MailContent) -> Delivery:
    from otpgate.outofband.mail import send_mail

    return run_reactor(
        lambda reactor: send_mail(reactor, servers, address, content),
        "the e-mail could not be sent (internal error)",
    )
