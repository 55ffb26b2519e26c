"""The gateway's code sender: the I/O side of ``otpgate/auth/sendcode.py``.

The destination is read from the user's own entry, in the attribute the token names, at
each send: a client never supplies it.  A token keeps a digest of the destination its
enrollment proof went to, and a code is sent only while the attribute still holds that one:
on AD every user may write her own ``mobile`` and ``telephoneNumber`` (the Personal
Information property set), so a number changed with a phished password gets nothing.  Exactly
one value is accepted (gateways take comma-separated lists; which of several values is
meant is not ours to guess).  An SMS number is normalised (spaces, hyphens, dots and
parentheses removed, as E.123 writes them), must be one +E.164 number, and must start with
one of ``sms_country_prefixes``.  The gateway's budget per minute is kept here, per
process: it bounds what one gateway can be made to spend, whatever the users.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from twisted.logger import Logger

from otpgate.auth.oob import destination_binding, still_bound
from otpgate.auth.requests import Sent
from otpgate.errors import OtpgateError
from otpgate.outofband.config import DeliveryConfig
from otpgate.outofband.mail import MailContent, send_mail
from otpgate.outofband.mask import mask_email, mask_phone
from otpgate.outofband.result import Delivery
from otpgate.outofband.scratchmail import NoMailAddress, mail_address
from otpgate.outofband.sms import PHONE, SmsMessage, send_sms
from otpgate.tokens import Secret, Token, TokenType

log = Logger()

ReadValues = Callable[[str, str], Awaitable[list[bytes]]]
"""(dn, attribute) -> the values of ``attribute`` in that entry."""

SEPARATORS = str.maketrans("", "", " -.()/\u00a0")
MOVED = "not the destination the token was enrolled with"
"""In a refusal's detail: the entry's value changed since the token's enrollment proof."""


class NoDestination(OtpgateError):
    """The entry has no single usable destination for this token (nothing was sent)."""


def phone_number(values: Sequence[bytes], attribute: str, prefixes: Sequence[str]) -> str:
    """The one +E.164 number in ``values``, allowed by ``prefixes``; NoDestination if not."""
    if len(values) != 1:
        count = "no" if not values else str(len(values))
        raise NoDestination(f"{count} {attribute} values (one number is needed)")
    text = bytes(values[0]).decode("utf-8", "replace").strip()
    number = text.translate(SEPARATORS)
    if PHONE.fullmatch(number) is None:
        raise NoDestination(f"{attribute} is not one +E.164 number")
    if not any(number.startswith(prefix) for prefix in prefixes):
        raise NoDestination(f"{mask_phone(number)} is outside sms_country_prefixes")
    return number


def destination_of(
    dn: str, token: Token, values: Sequence[bytes], prefixes: Sequence[str]
) -> tuple[str, str]:
    """(destination, masked) of ``token`` from its attribute's ``values``, as the sender
    compares and uses it; NoDestination when there is no single usable one."""
    if token.type is TokenType.SMS:
        number = phone_number(values, token.attribute, prefixes)
        return number, mask_phone(number)
    try:
        address = mail_address(dn, token.attribute, values)
    except NoMailAddress as exc:
        raise NoDestination(str(exc).replace("; nothing was changed", "")) from None
    return address, mask_email(address)


def code_mail(code: str, issuer: str, lifetime: int) -> MailContent:
    minutes = max(1, lifetime // 60)
    lines = [
        f"Your one-time code for {issuer}: {code}",
        "",
        f"It is valid for {minutes} minute{'s' if minutes != 1 else ''}, once.",
        "If you did not just sign in, do not give it to anyone and tell your help desk:",
        "someone who knows your password asked for it.",
        "",
    ]
    return MailContent(f"Your one-time code for {issuer}", "\n".join(lines))


class OutOfBandSender:
    """``auth.requests.CodeSender`` over the ``[delivery]`` gateways."""

    def __init__(
        self, reactor: Any, delivery: DeliveryConfig, issuer: str, read_values: ReadValues
    ) -> None:
        self.reactor = reactor
        self.delivery = delivery
        self.issuer = issuer
        self.read_values = read_values
        self._minute: deque[float] = deque()

    def take_budget(self, now: float) -> bool:
        window = self._minute
        while window and window[0] <= now - 60:
            window.popleft()
        if len(window) >= self.delivery.codes.per_minute:
            return False
        window.append(now)
        return True

    async def _destination(self, dn: str, token: Token) -> tuple[str, str]:
        """(destination, masked) from the entry; NoDestination or a directory error."""
        values = await self.read_values(dn, token.attribute)
        return destination_of(dn, token, values, self.delivery.sms_country_prefixes)

    async def moved(self, dn: str, token: Token, secret: Secret) -> bool:
        """The entry's value is usable but not the one ``token`` was enrolled with: someone
        changed it since (on AD, the user herself may)."""
        refused = await self.check(dn, token, secret)
        return refused is not None and MOVED in refused.detail

    async def destination(self, dn: str, token: Token) -> str:
        try:
            return (await self._destination(dn, token))[1]
        except OtpgateError:
            return ""

    async def _usable(self, dn: str, token: Token, secret: Secret) -> tuple[str, str] | Sent:
        """(destination, masked), or the refusal."""
        channel = token.type.value
        if not self.delivery.can_send(channel):
            return Sent(channel, "", "refused", detail=f"no {channel} gateway is configured")
        try:
            to, masked = await self._destination(dn, token)
        except NoDestination as exc:
            return Sent(channel, "", "refused", detail=str(exc))
        except OtpgateError as exc:
            return Sent(channel, "", "failed", detail=f"the entry could not be read: {exc}")
        if token.bound and not still_bound(token, secret, to):
            why = f"{token.attribute} holds {masked}, {MOVED}: enroll the token again"
            return Sent(channel, masked, "refused", detail=why)
        return to, masked

    async def check(self, dn: str, token: Token, secret: Secret) -> Sent | None:
        found = await self._usable(dn, token, secret)
        return found if isinstance(found, Sent) else None

    async def send(self, dn: str, user: str, token: Token, secret: Secret, code: str) -> Sent:
        channel = token.type.value
        found = await self._usable(dn, token, secret)  # again: the entry may have changed since
        if isinstance(found, Sent):
            return found
        to, masked = found
        try:
            if token.type is TokenType.SMS:
                delivery = await send_sms(self.reactor, self.delivery, SmsMessage(to, user, code))
            else:
                content = code_mail(code, self.issuer, self.delivery.codes.lifetime)
                delivery = await send_mail(self.reactor, self.delivery.smtp, to, content)
        except Exception:  # a sender bug must not crash the login: it fails closed
            log.failure("sending a code to {masked} failed", masked=masked)
            return Sent(channel, masked, "failed", detail="internal error")
        return _sent(channel, masked, delivery, destination_binding(secret.key, to))


def _sent(channel: str, masked: str, delivery: Delivery, binding: bytes) -> Sent:
    if delivery.delivered_by is not None:
        return Sent(channel, masked, "sent", delivery.delivered_by, binding=binding)
    failures = "; ".join(f"{a.gateway}: {a.reason}" for a in delivery.attempts)
    return Sent(channel, masked, "failed", detail=failures or "no gateway is configured")
