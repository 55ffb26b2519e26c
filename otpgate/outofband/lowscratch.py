"""The low-scratch warning by e-mail (``[delivery] scratch_warning``).

The pipeline claims a list's one warning in the compare-and-swap that spends the code taking
it below ``[otp] scratch_low_threshold`` (``auth/decide.py``), and hands it to the notifier
the gateway gives it.  The notifier returns at once and sends in the background: it reads
the address from the user's own entry (``mail_attribute``: exactly one plain address),
sends a short plain-text message with ``send_mail``, and writes one audit event with the
outcome (front end "delivery", outcome "notify", the masked address, never a code).  A
failed or impossible send is not retried and never changes the login: at most one
warning per list.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from otpgate.audit import AuditTrail
from otpgate.errors import OtpgateError
from otpgate.outofband.config import DeliveryConfig
from otpgate.outofband.mail import MailContent, send_mail
from otpgate.outofband.scratchmail import NoMailAddress, mail_address, outcome_text

log = Logger()

ReadValues = Callable[[str, str], Awaitable[list[bytes]]]
"""(dn, attribute) -> the values of ``attribute`` in that entry."""

SUBJECT = "Your backup codes are running out"


def low_scratch_mail(left: int, issuer: str) -> MailContent:
    """The warning: how many codes are left and what to do (never a code)."""
    codes = f"{left} backup code{'' if left == 1 else 's'}"
    lines = [
        f"Only {codes} left on your list for {issuer}." if left else
        f"No backup codes are left on your list for {issuer}.",
        "",
        "Print a new list in the self-service portal, or ask your help desk for one.",
        "A new list replaces the old one: any codes left on it stop working.",
        "",
        "If you did not use a backup code recently, tell your help desk.",
        "",
    ]  # fmt: skip
    return MailContent(SUBJECT, "\n".join(lines))


class LowScratchMailer:
    """The gateway's notifier: ``(dn, token id, codes left)``, sent in the background."""

    def __init__(
        self,
        reactor: Any,
        delivery: DeliveryConfig,
        issuer: str,
        read_values: ReadValues,
        audit: AuditTrail,
    ) -> None:
        self.reactor = reactor
        self.delivery = delivery
        self.issuer = issuer
        self.read_values = read_values
        self.audit = audit
        self.pending: set[defer.Deferred[None]] = set()
        """Sends under way (``drain``)."""

    def __call__(self, dn: str, token_id: str, left: int) -> None:
        sending = defer.ensureDeferred(self.send(dn, token_id, left))
        self.pending.add(sending)
        sending.addErrback(lambda f: log.failure("low-scratch warning for {dn}", f, dn=dn))
        sending.addBoth(lambda _: self.pending.discard(sending))

    async def drain(self) -> None:
        """Wait for the sends under way (a command that stops the reactor after one login,
        ``otpgate test-auth``; tests)."""
        while self.pending:
            await defer.DeferredList(list(self.pending))

    async def send(self, dn: str, token_id: str, left: int) -> None:
        attribute = self.delivery.mail_attribute
        try:
            address = mail_address(dn, attribute, await self.read_values(dn, attribute))
        except NoMailAddress as exc:
            reason = str(exc).replace("; nothing was changed", "")
            self._audit(dn, token_id, f"low-scratch warning not sent: {reason}")
            return
        except OtpgateError as exc:  # the directory could not be read
            self._audit(dn, token_id, f"low-scratch warning not sent: {exc}")
            return
        content = low_scratch_mail(left, self.issuer)
        result = await send_mail(self.reactor, self.delivery.smtp, address, content)
        self._audit(dn, token_id, f"low-scratch warning ({left} left) {outcome_text(result)}")

    def _audit(self, dn: str, token_id: str, reason: str) -> None:
        self.audit.record(
            outcome="notify",
            front_end="delivery",
            user=None,
            dn=dn,
            client=None,
            token=token_id,
            reason=reason,
        )
