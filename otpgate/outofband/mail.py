"""E-mail delivery with Twisted's own SMTP client, over the configured servers in order.

STARTTLS is required when configured (a server that does not offer it is a failure, never
a plain fallback), SMTPS connects through a TLS endpoint, and both verify the certificate
and the host name (``optionsForClientTLS``).  AUTH is used when configured and then
required.  Each server gets its own timeout for the whole exchange; a failure (refused,
TLS, AUTH, an error reply, the timeout) moves on to the next server.

Twisted's SMTP errors carry the client's protocol log in their text, so a reason is built
from the error's type and reply code only: no message content ever reaches a log line or
an exception text.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

from twisted.internet import defer, error
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.protocol import connectionDone
from twisted.mail import smtp
from twisted.python.failure import Failure

from otpgate.outofband.config import SmtpServer
from otpgate.outofband.mask import mask_email
from otpgate.outofband.result import Attempt, Delivery, GatewayFailed
from otpgate.outofband.tlsutil import client_tls, tls_reason

_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_ADDRESS = re.compile(rf"{_ATOM}(?:\.{_ATOM})*@{_LABEL}(?:\.{_LABEL})+")


def valid_address(value: str) -> bool:
    """One plain ASCII addr-spec (dot-atom local part, host name domain): no display name,
    no quotes, brackets, routes, second address, control character or header.  What the
    SMTP envelope carries is then exactly what the header and the masked output say."""
    return len(value) <= 254 and _ADDRESS.fullmatch(value) is not None


@dataclass(frozen=True)
class MailContent:
    """What to send; its repr never shows the text (it holds codes)."""

    subject: str
    text: str = field(repr=False)
    html: str | None = field(default=None, repr=False)


def build_message(sender: str, to: str, content: MailContent) -> bytes:
    """The message: plain text, with the HTML as an alternative part when given."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = content.subject
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(content.text)
    if content.html is not None:
        msg.add_alternative(content.html, subtype="html")
    return msg.as_bytes()


class StartTlsInjection(Exception):
    """Bytes arrived with the server's answer to STARTTLS, before any TLS."""


class _Sender(smtp.ESMTPSender):
    """Twisted's ESMTP sender, which also fails the send when the connection is lost first
    (a TLS handshake refused, the server hanging up): behind an endpoint nothing else would."""

    def esmtpState_starttls(self, code: int, resp: bytes) -> None:
        """The server's "220" to STARTTLS: anything that came with it was sent before TLS,
        by whoever sits on the path (a forged "250 queued" would report a delivery that
        never happened), so the send fails instead of reading it as protected."""
        if self._buffer:  # LineReceiver's unread bytes after the 220 line
            self._buffer = b""
            transport: Any = self.transport
            transport.abortConnection()  # nothing more is said on this connection
            _fail(self.factory, StartTlsInjection())
            return
        smtp.ESMTPSender.esmtpState_starttls(self, code, resp)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        smtp.ESMTPSender.connectionLost(self, reason)
        _fail(self.factory, reason)


def _fail(factory: Any, why: Any) -> None:
    """Fail the send unless it has an outcome (Twisted drops ``result`` once it fired)."""
    result = getattr(factory, "result", None)
    if not factory.sendFinished and result is not None and not result.called:
        factory.sendFinished = True
        result.errback(why)


class _SenderFactory(smtp.ESMTPSenderFactory):
    protocol = _Sender


def _reason(value: BaseException) -> str:
    """Why a server failed, without any text that could echo the message."""
    if isinstance(value, defer.TimeoutError | defer.CancelledError | smtp.SMTPTimeoutError):
        return "timed out"
    if isinstance(value, error.ConnectionRefusedError):
        return "connection refused"
    if isinstance(value, error.TimeoutError):
        return "connect timed out"
    if isinstance(value, error.DNSLookupError):
        return "host name not found"
    tls = tls_reason(value)
    if tls is not None:
        return tls
    if isinstance(value, StartTlsInjection):
        return "bytes before the TLS handshake after STARTTLS (an injection on the path)"
    if isinstance(value, smtp.AUTHDeclinedError):
        return f"AUTH refused (reply {value.code})"
    if isinstance(value, smtp.AUTHRequiredError):
        return "the server offers no AUTH over this connection"
    if isinstance(value, smtp.TLSRequiredError):
        return "the server does not offer STARTTLS"
    if isinstance(value, smtp.SMTPDeliveryError):
        return f"recipient or message refused (reply {value.code})"
    if isinstance(value, smtp.SMTPClientError):
        return f"SMTP error (reply {value.code}, {type(value).__name__})"
    if isinstance(value, error.ConnectionDone | error.ConnectionLost):
        return "connection closed by the server"
    return type(value).__name__


async def send_via(reactor: Any, server: SmtpServer, to: str, data: bytes) -> None:
    """Send ``data`` to ``to`` through one server; :class:`GatewayFailed` says why not."""
    try:
        await _send_via(reactor, server, to, data)
    except GatewayFailed:
        raise
    except Exception as exc:  # set-up errors too (a CA file that cannot be read, ...)
        raise GatewayFailed(_reason(exc)) from None


async def _send_via(reactor: Any, server: SmtpServer, to: str, data: bytes) -> None:
    result: defer.Deferred[Any] = defer.Deferred()
    auth = bool(server.username)
    tls_options: Any = (
        client_tls(server.host, server.ca_file) if server.security != "none" else None
    )
    factory = _SenderFactory(  # type: ignore[no-untyped-call]
        server.username.encode() if auth else None,
        server.password.encode() if auth and server.password is not None else None,
        server.sender,
        [to],
        io.BytesIO(data),
        result,
        retries=0,
        timeout=server.timeout,
        # STARTTLS: the verified options, and STARTTLS required.  SMTPS: TLS is the
        # endpoint's; "none": loopback only (config.py).
        contextFactory=tls_options if server.security == "starttls" else None,
        heloFallback=False,
        requireAuthentication=auth,
        requireTransportSecurity=server.security == "starttls",
    )
    endpoint: Any = HostnameEndpoint(reactor, server.host, server.port, timeout=server.timeout)
    if server.security == "tls":
        endpoint = wrapClientTLS(tls_options, endpoint)
    connecting = endpoint.connect(factory)
    protocol: list[Any] = []
    connecting.addCallback(protocol.append)

    def give_up() -> None:
        if not result.called:
            result.errback(defer.TimeoutError())
        for p in protocol:
            p.transport.abortConnection()
        if not connecting.called:
            connecting.cancel()

    timer = reactor.callLater(server.timeout, give_up)
    connecting.addErrback(lambda f: None if result.called else result.errback(f))
    try:
        await result
    except Exception as exc:  # every failure moves on to the next server
        raise GatewayFailed(_reason(exc)) from None
    finally:
        if timer.active():
            timer.cancel()


async def send_mail(
    reactor: Any, servers: tuple[SmtpServer, ...], to: str, content: MailContent
) -> Delivery:
    """Try ``servers`` in order until one accepts the message for ``to``.  ``to`` must be
    one plain ASCII address (``valid_address``): anything else is refused before any server
    is asked, since the envelope and the header could read it differently."""
    if not valid_address(to):
        return Delivery("email", mask_email(to), (Attempt("-", "not one plain address"),))
    attempts: list[Attempt] = []
    for server in servers:
        data = build_message(server.sender, to, content)
        try:
            await send_via(reactor, server, to, data)
        except GatewayFailed as exc:
            attempts.append(Attempt(server.name, str(exc)))
            continue
        attempts.append(Attempt(server.name, ""))
        break
    return Delivery("email", mask_email(to), tuple(attempts))
