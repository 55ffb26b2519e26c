"""SMS delivery through real HTTP(S) gateways on loopback (twisted.web servers with a test-CA
certificate): the first fails (500, hanging past the timeout, a wrong CA, an answer without
the expected text), the next accepts; the request it received is read back (JSON and form
body, headers with the secret from its file).  Then the e-mail-to-SMS gateway through
aiosmtpd."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qs

import pytest
import pytest_twisted
from twisted.internet import reactor, ssl
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint
from twisted.logger import formatEvent, globalLogPublisher
from twisted.web import resource, server

from otpgate.configfile import Section
from otpgate.outofband.config import DeliveryConfig, parse_delivery
from otpgate.outofband.sms import SmsMessage, send_sms
from tests.servers import make_server_tls
from tests.servers.mailserver import MailServer

CODE = "482913"
NUMBER = "+491511234589"


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return make_server_tls(tmp_path_factory.mktemp("sms-tls"), dns_names=["localhost"])


@pytest.fixture
def logs():
    seen: list[str] = []

    def observer(event):
        seen.append(formatEvent(event) + repr(event.get("log_failure", "")))

    globalLogPublisher.addObserver(observer)
    yield seen
    globalLogPublisher.removeObserver(observer)


class Gateway(resource.Resource):
    """Answers every request with ``status`` and ``answer`` (or never, with ``hang``) and
    keeps what it received."""

    isLeaf = True

    def __init__(self, status: int = 200, answer: bytes = b'{"status":"queued"}', hang=False):
        super().__init__()
        self.status, self.answer, self.hang = status, answer, hang
        self.requests: list[dict] = []

    def render(self, request):
        self.requests.append(
            {
                "method": request.method.decode(),
                "path": request.path.decode(),
                "headers": {
                    k.decode().lower(): v[0].decode()
                    for k, v in request.requestHeaders.getAllRawHeaders()
                },
                "body": request.content.read(),
            }
        )
        if self.hang:
            return server.NOT_DONE_YET
        request.setResponseCode(self.status)
        return self.answer


async def serve(site_resource, tls=None):
    site = server.Site(site_resource)
    if tls is None:
        endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    else:
        cert = ssl.PrivateCertificate.loadPEM(tls.cert_file.read_text() + tls.key_file.read_text())
        endpoint = SSL4ServerEndpoint(reactor, 0, cert.options(), interface="127.0.0.1")
    port = await endpoint.listen(site)
    return port, port.getHost().port


def config(tmp_path: Path, *gateways: dict, **extra) -> DeliveryConfig:
    (tmp_path / "sms-token").write_text("s3cret-token\n")
    doc = {
        "sms_http": [{"timeout": 2, **g} for g in gateways],
        "sms_country_prefixes": ["+49"],
        **extra,
    }
    parsed = parse_delivery(Section(doc, "delivery"), tmp_path)
    assert parsed is not None
    return parsed


def json_gateway(port, tls, **more):
    return {
        "url": f"https://localhost:{port}/send?account=42",
        "ca_file": str(tls.ca_file),
        "headers": {"Authorization": "Bearer {secret}", "X-Tenant": "acme"},
        "secret_file": "sms-token",
        "body": {"recipient": "{to}", "text": "Your code: {code}", "ref": "{user}"},
        **more,
    }


def assert_no_secret(result, logs):
    assert CODE not in repr(result) and CODE not in result.summary()
    assert "s3cret-token" not in repr(result) and "s3cret-token" not in result.summary()
    assert not [line for line in logs if CODE in line or "s3cret-token" in line]


MESSAGE = SmsMessage(NUMBER, "alice", CODE)


@pytest_twisted.ensureDeferred
async def test_500_then_second_gateway_takes_json(tmp_path, tls, logs):
    failing, accepting = Gateway(500, b"internal error"), Gateway(202)
    p1, port1 = await serve(failing, tls)
    p2, port2 = await serve(accepting, tls)
    try:
        cfg = config(
            tmp_path,
            json_gateway(port1, tls),
            json_gateway(port2, tls, ok_status=[202], ok_body="queued"),
        )
        result = await send_sms(reactor, cfg, MESSAGE)
    finally:
        await p1.stopListening()
        await p2.stopListening()
    assert [a.reason for a in result.attempts] == ["status 500", ""]
    assert result.delivered_by == f"https://localhost:{port2}/send"
    assert result.destination == "+\u2022\u2022\u2022\u2022\u202289"
    (got,) = accepting.requests
    assert got["method"] == "POST" and got["path"] == "/send"
    assert got["headers"]["authorization"] == "Bearer s3cret-token"
    assert got["headers"]["x-tenant"] == "acme"
    assert got["headers"]["content-type"] == "application/json"
    assert json.loads(got["body"]) == {
        "recipient": NUMBER,
        "text": f"Your code: {CODE}",
        "ref": "alice",
    }
    assert_no_secret(result, logs)


@pytest_twisted.ensureDeferred
async def test_hanging_gateway_times_out_then_form_gateway(tmp_path, tls, logs):
    hanging, accepting = Gateway(hang=True), Gateway(200, b"OK id=17")
    p1, port1 = await serve(hanging, tls)
    p2, port2 = await serve(accepting)  # plain http: loopback only
    try:
        cfg = config(
            tmp_path,
            json_gateway(port1, tls, timeout=1),
            {
                "url": f"http://127.0.0.1:{port2}/sms",
                "format": "form",
                "headers": {"X-Api-Key": "{secret}"},
                "secret_file": "sms-token",
                "body": {"to": "{to}", "message": "{code} is your code"},
                "ok_status": [200],
                "ok_body": "OK",
            },
        )
        result = await send_sms(reactor, cfg, MESSAGE)
    finally:
        await p1.stopListening()
        await p2.stopListening()
    assert [a.reason for a in result.attempts] == ["timed out", ""]
    assert len(hanging.requests) == 1
    (got,) = accepting.requests
    assert got["headers"]["x-api-key"] == "s3cret-token"
    assert got["headers"]["content-type"] == "application/x-www-form-urlencoded"
    assert parse_qs(got["body"].decode()) == {"to": [NUMBER], "message": [f"{CODE} is your code"]}
    assert_no_secret(result, logs)


@pytest_twisted.ensureDeferred
async def test_wrong_ca_and_unexpected_answer_fail_everywhere(
    tmp_path, tls, tmp_path_factory, logs
):
    other = make_server_tls(tmp_path_factory.mktemp("sms-other-ca"), dns_names=["localhost"])
    answering = Gateway(200, b'{"status":"rejected"}')
    p1, port1 = await serve(answering, tls)
    try:
        cfg = config(
            tmp_path,
            json_gateway(port1, other),
            json_gateway(port1, tls, ok_body='"queued"'),
        )
        result = await send_sms(reactor, cfg, MESSAGE)
    finally:
        await p1.stopListening()
    assert not result.ok
    assert result.attempts[0].reason.startswith("TLS"), result.summary()
    assert result.attempts[1].reason == "status 200 without the expected answer"
    assert len(answering.requests) == 1  # the wrong CA: nothing was sent
    assert "failed on every gateway" in result.summary()
    assert_no_secret(result, logs)


@pytest_twisted.ensureDeferred
async def test_email_to_sms_gateway_after_http_gateways(tmp_path, tls, logs):
    failing = Gateway(503)
    p1, port1 = await serve(failing, tls)
    try:
        with MailServer(tls, "starttls") as mail:
            cfg = config(
                tmp_path,
                json_gateway(port1, tls),
                smtp=[
                    {
                        "host": "localhost",
                        "port": mail.port,
                        "from": "otpgate@example.org",
                        "ca_file": str(tls.ca_file),
                    }
                ],
                sms_email={"address": "{to}@sms.example.net"},
            )
            result = await send_sms(reactor, cfg, MESSAGE)
            (got,) = mail.wait_for(1)
    finally:
        await p1.stopListening()
    assert result.ok and result.delivered_by == f"sms-email via smtp://localhost:{mail.port}"
    assert got.rcpt_tos == ["491511234589@sms.example.net"]
    assert CODE in got.message.get_body(("plain",)).get_content()
    assert_no_secret(result, logs)


@pytest_twisted.ensureDeferred
async def test_a_number_is_one_e164_number_or_nothing_is_sent():
    """A user who may edit her own `mobile` lists several recipients (gateways take comma
    lists) or a premium number behind a separator: refused before any gateway is asked."""
    cfg = DeliveryConfig()
    for bad in ("+491511234589,+4990012345678", "+49 151 1234589", "01511234589",
                "+491511234589\n", "+49151;1234589"):
        result = await send_sms(reactor, cfg, SmsMessage(bad, "alice", CODE))
        assert not result.ok and result.attempts[0].reason == "not one +E.164 number", bad
