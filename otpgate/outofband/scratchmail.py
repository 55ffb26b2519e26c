"""A new scratch list sent to its user, shared by ``otpgate scratch USER --mail`` (sync
store) and the portal's help desk (async store): the address rules, the state change, the
message (plain text plus the printable card as HTML) and how the outcome is told.

The drivers read the user's own entry, call ``mail_address`` (nothing is written when it
refuses), write ``new_list_change`` with their store's compare-and-swap, build the message
with ``scratch_mail``, then send it with ``send_mail``.  When every server failed the new
list is kept (docs/DECISIONS.md): ``outcome_text`` says so, never with a code.
"""

from __future__ import annotations

from collections.abc import Sequence

from otpgate.directory.records import OtpState, StateChange
from otpgate.errors import PolicyError
from otpgate.otp.scratch import ScratchList
from otpgate.outofband.mail import MailContent, valid_address
from otpgate.outofband.result import Delivery
from otpgate.tokens import Token


class NoMailAddress(PolicyError):
    """The user's own entry has no single plain address: nothing was written."""


def mail_address(user: str, attribute: str, values: Sequence[bytes] | None) -> str:
    """The address in ``values`` (the user's own ``attribute``), or ``NoMailAddress``:
    exactly one value, one plain ASCII address (``valid_address``)."""
    values = list(values or ())
    if len(values) > 1:  # which one is "the" address is not ours to guess
        raise NoMailAddress(
            f"{user} has {len(values)} {attribute} values: one address is needed; "
            "nothing was changed"
        )
    address = bytes(values[0]).decode("utf-8", "replace").strip() if values else ""
    if not address:
        raise NoMailAddress(
            f"{user} has no {attribute} attribute in the directory; nothing was changed"
        )
    if not valid_address(address):
        raise NoMailAddress(
            f"{user}'s {attribute} is not one plain e-mail address; nothing was changed"
        )
    return address


def new_list_change(state: OtpState, scratch: ScratchList, now: float) -> StateChange[Token]:
    """The state change of a mailed list: the same as a printed one (the previous list,
    with its used codes, is gone)."""
    from otpgate.admin.manage import scratch_change

    return scratch_change(state, scratch, now)


def outcome_text(result: Delivery) -> str:
    """Where the list went, for the audit trail and the page: the masked address and the
    server that took it, or each server's reason (never a code)."""
    if result.ok:
        return f"sent to {result.destination} by {result.delivered_by}"
    failures = "; ".join(f"{a.gateway}: {a.reason}" for a in result.attempts)
    return f"could not be sent to {result.destination} ({failures})"


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
