"""The demo's mail sink: an SMTP server on loopback (Twisted's own ``twisted.mail.smtp``)
that takes every message and shows it on the demo's console instead of delivering it.

It is where the demo's ``[[delivery.smtp]]`` points, so that a code sent by e-mail can be
read off the terminal: the demo user *carol* asks for one with ``carol-password,email`` and
logs in with ``carol-password,CODE``.  Printing a code is right only here: the demo's
mailbox is this console, and nothing else in otpgate ever shows one.
"""

from __future__ import annotations

import email
import email.policy
from collections.abc import Callable, Sequence
from email.message import EmailMessage
from typing import Any

from twisted.internet import defer, protocol
from twisted.mail import smtp
from zope.interface import implementer

MAX_MESSAGE = 256 * 1024
"""Bytes kept of one message (the demo's own are about 1 KiB)."""

Show = Callable[[str, str], None]
"""(recipients, the message as text) -> shown."""


@implementer(smtp.IMessage)
class _Message:
    def __init__(self, recipient: str, show: Show) -> None:
        self.recipient = recipient
        self.show = show
        self.lines: list[bytes] = []
        self.size = 0

    def lineReceived(self, line: bytes) -> None:
        self.size += len(line) + 1
        if self.size <= MAX_MESSAGE:
            self.lines.append(line)

    def eomReceived(self) -> defer.Deferred[None]:
        self.show(self.recipient, message_text(b"\n".join(self.lines)))
        self.lines = []
        return defer.succeed(None)

    def connectionLost(self) -> None:
        self.lines = []


@implementer(smtp.IMessageDelivery)
class _Delivery:
    def __init__(self, show: Show) -> None:
        self.show = show

    def receivedHeader(self, helo: Any, origin: Any, recipients: Sequence[Any]) -> bytes | None:
        return None

    def validateFrom(self, helo: Any, origin: Any) -> Any:
        return origin

    def validateTo(self, user: Any) -> Callable[[], _Message]:
        recipient = str(user.dest)
        return lambda: _Message(recipient, self.show)


class MailSink(protocol.ServerFactory):
    """ESMTP on the port it listens on; every message accepted and given to ``show``."""

    def __init__(self, show: Show) -> None:
        self.show = show

    def buildProtocol(self, addr: Any) -> smtp.ESMTP:
        server = smtp.ESMTP()
        server.host = b"demo.otpgate"
        server.delivery = _Delivery(self.show)
        server.factory = self
        return server


def message_text(raw: bytes) -> str:
    """The subject and plain-text body of a message, as the console shows it."""
    message = email.message_from_bytes(raw, policy=email.policy.default)
    body = message.get_body(("plain",)) if isinstance(message, EmailMessage) else None
    text = body.get_content() if isinstance(body, EmailMessage) else ""
    return f"Subject: {message.get('Subject', '')}\n{text}".rstrip("\n")
