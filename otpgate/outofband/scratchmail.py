"""A new scratch list sent to its user: the message (plain text plus the printable card as
HTML) and the address read from the user's own entry."""

from __future__ import annotations

from collections.abc import Sequence

from otpgate.outofband.mail import MailContent


def scratch_mail(
    user: str, issuer: str, codes: Sequence[str], subject: str, created: float
) -> MailContent:
    """The message with the list: plain text, and the card as an HTML alternative."""
    from otpgate.admin.render import scratch_card_html
    from otpgate.otp.scratch import format_for_print

    printed = format_for_print(list(codes))
    lines = [
        f"New backup codes for {user} ({issuer}).",
        "",
        "Each code works once, instead of the code from your authenticator.",
        "Any earlier list no longer works. Keep these private; delete this message",
        "after printing or writing them down.",
        "",
        *(f"  {i:>3}. {code}" for i, code in enumerate(printed, start=1)),
        "",
        "If you did not expect this message, tell your help desk.",
        "",
    ]
    html = scratch_card_html(user, issuer, codes, created)
    return MailContent(subject, "\n".join(lines), html)
