"""SMS delivery: HTTP gateways in order, then the e-mail-to-SMS gateway.

Each HTTP gateway gets the body its template makes (JSON or a form) and its headers (a
secret read from its file); it delivered when the status is one of ``ok_status`` and, if
``ok_body`` is set, the answer contains it.  TLS is verified (``BrowserLikePolicyForHTTPS``
with the configured CA or the system's).  One timeout covers connecting, the request and
reading the answer; on any failure the next gateway is tried.  Reasons name the failure,
never the code or the body sent.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlencode

from twisted.internet import defer, error
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    FileBodyProducer,
    RequestTransmissionFailed,
    ResponseFailed,
    readBody,
)
from twisted.web.http_headers import Headers

from otpgate.outofband.config import DeliveryConfig, SmsHttpGateway
from otpgate.outofband.mail import MailContent, send_mail
from otpgate.outofband.mask import mask_phone
from otpgate.outofband.result import Attempt, Delivery, GatewayFailed
from otpgate.outofband.tlsutil import tls_reason, trust_root

MAX_ANSWER = 64 * 1024


@dataclass(frozen=True)
class SmsMessage:
    """One SMS; its repr never shows the code."""

    to: str
    """The number as stored, e.g. "+491511234589"."""
    user: str
    code: str = field(repr=False)

    def text(self) -> str:
        return f"Your code: {self.code}"


def render_body(gateway: SmsHttpGateway, message: SmsMessage) -> tuple[bytes, bytes]:
    """The request body and its content type."""
    values = {"to": message.to, "code": message.code, "user": message.user}
    fields = {name: template.format(**values) for name, template in gateway.body}
    if gateway.format == "json":
        return json.dumps(fields).encode("utf-8"), b"application/json"
    return urlencode(fields).encode("ascii"), b"application/x-www-form-urlencoded"


def _headers(gateway: SmsHttpGateway, content_type: bytes) -> Headers:
    headers = Headers({b"User-Agent": [b"otpgate"]})
    names = {name.lower() for name, _ in gateway.headers}
    if "content-type" not in names:
        headers.addRawHeader(b"Content-Type", content_type)
    for name, value in gateway.headers:
        headers.addRawHeader(name.encode("ascii"), value.encode("utf-8"))
    return headers


def _reason(value: BaseException) -> str:
    if isinstance(value, defer.TimeoutError | defer.CancelledError):
        return "timed out"
    if isinstance(value, error.ConnectionRefusedError):
        return "connection refused"
    if isinstance(value, error.TimeoutError):
        return "connect timed out"
    if isinstance(value, error.DNSLookupError):
        return "host name not found"
    if isinstance(value, ResponseFailed | RequestTransmissionFailed):
        for inner in value.reasons:
            if isinstance(inner.value, defer.CancelledError):
                return "timed out"
            tls = tls_reason(inner.value)
            if tls is not None:
                return tls
        return "the connection failed before an answer"
    tls = tls_reason(value)
    if tls is not None:
        return tls
    return type(value).__name__


async def post(reactor: Any, gateway: SmsHttpGateway, message: SmsMessage) -> None:
    """Send through one gateway; :class:`GatewayFailed` says why it did not take it."""
    policy = BrowserLikePolicyForHTTPS(trustRoot=trust_root(gateway.ca_file))
    agent = Agent(reactor, contextFactory=policy, connectTimeout=gateway.timeout)
    body, content_type = render_body(gateway, message)
    request: Any = agent.request(
        gateway.method.encode("ascii"),
        gateway.url.encode("utf-8"),
        _headers(gateway, content_type),
        FileBodyProducer(io.BytesIO(body)),
    )

    def answer(response: Any) -> defer.Deferred[tuple[int, bytes]]:
        if response.length is not None and response.length > MAX_ANSWER:
            response.deliverBody(_Discard())
            return defer.succeed((response.code, b""))
        read: defer.Deferred[bytes] = readBody(response)
        return read.addCallback(lambda data: (response.code, data))

    request.addCallback(answer)
    request.addTimeout(gateway.timeout, reactor)
    try:
        status, data = cast(tuple[int, bytes], await request)
    except Exception as exc:  # every failure moves on to the next gateway
        raise GatewayFailed(_reason(exc)) from None
    if status not in gateway.ok_status:
        raise GatewayFailed(f"status {status}")
    if gateway.ok_body and gateway.ok_body.encode("utf-8") not in data[:MAX_ANSWER]:
        raise GatewayFailed(f"status {status} without the expected answer")


class _Discard:
    def makeConnection(self, transport: Any) -> None:
        transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Any) -> None:
        pass


def email_address(template: str, number: str) -> str:
    """The e-mail-to-SMS address for ``number`` (digits only: "+49 151…" → "49151…")."""
    return template.format(to="".join(c for c in number if c.isdigit()))


PHONE = re.compile(r"\+[1-9][0-9]{6,14}")
"""One E.164 number: a user who may edit her own ``mobile`` cannot list several recipients
(gateways take comma-separated lists) or sneak separators into the request."""


async def send_sms(reactor: Any, config: DeliveryConfig, message: SmsMessage) -> Delivery:
    """Try the HTTP gateways in order, then the e-mail-to-SMS gateway."""
    if PHONE.fullmatch(message.to) is None:
        return Delivery("sms", mask_phone(message.to), (Attempt("-", "not one +E.164 number"),))
    attempts: list[Attempt] = []
    for gateway in config.sms_http:
        try:
            await post(reactor, gateway, message)
        except GatewayFailed as exc:
            attempts.append(Attempt(gateway.name, str(exc)))
            continue
        attempts.append(Attempt(gateway.name, ""))
        return Delivery("sms", mask_phone(message.to), tuple(attempts))
    if config.sms_email is not None:
        address = email_address(config.sms_email.address, message.to)
        content = MailContent(config.sms_email.subject, message.text())
        by_mail = await send_mail(reactor, config.smtp, address, content)
        attempts += [Attempt(f"sms-email via {a.gateway}", a.reason) for a in by_mail.attempts]
    return Delivery("sms", mask_phone(message.to), tuple(attempts))
