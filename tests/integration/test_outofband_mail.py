"""E-mail delivery against a real SMTP server (aiosmtpd) on loopback: STARTTLS with AUTH,
SMTPS, a wrong CA, a server down, a server that hangs, a wrong password, every server
down.  The message is read back from the server; the code never appears in a result, an
exception or a log line."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.logger import formatEvent, globalLogPublisher

from otpgate.configfile import Section
from otpgate.outofband.config import DeliveryConfig, parse_delivery
from otpgate.outofband.mail import MailContent, send_mail
from tests.netutil import free_port
from tests.servers import make_server_tls
from tests.servers.mailserver import MailServer

CODE = "73915824"
TO = "alice@example.org"


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return make_server_tls(tmp_path_factory.mktemp("smtp-tls"), dns_names=["localhost"])


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory):
    return make_server_tls(tmp_path_factory.mktemp("other-ca"), dns_names=["localhost"])


@pytest.fixture
def logs():
    """Every Twisted log event of the test, formatted."""
    seen: list[str] = []

    def observer(event):
        seen.append(formatEvent(event) + repr(event.get("log_failure", "")))

    globalLogPublisher.addObserver(observer)
    yield seen
    globalLogPublisher.removeObserver(observer)


def delivery(tmp_path: Path, *servers: dict) -> DeliveryConfig:
    password = tmp_path / "smtp-password"
    password.write_text("right-password\n")
    wrong = tmp_path / "wrong-password"
    wrong.write_text("wrong-password\n")
    tables = []
    for s in servers:
        table = {"host": "localhost", "from": "otpgate@example.org", "timeout": 3, **s}
        tables.append(table)
    config = parse_delivery(Section({"smtp": tables}, "delivery"), tmp_path)
    assert config is not None
    return config


def content() -> MailContent:
    return MailContent(
        "Your codes", f"Your code: {CODE}\n", f"<html><body><code>{CODE}</code></body></html>"
    )


def assert_no_secret(result, logs):
    assert CODE not in repr(result) and CODE not in result.summary()
    assert not [line for line in logs if CODE in line]


def hanging_server():
    """A TCP listener that accepts and never says a word."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(5)
    return sock


@pytest_twisted.ensureDeferred
async def test_starttls_with_auth_delivers_text_and_html(tmp_path, tls, logs):
    with MailServer(tls, "starttls", users={"otpgate": "right-password"}) as server:
        config = delivery(
            tmp_path,
            {
                "port": server.port,
                "security": "starttls",
                "ca_file": str(tls.ca_file),
                "username": "otpgate",
                "password_file": "smtp-password",
            },
        )
        result = await send_mail(reactor, config.smtp, TO, content())
        assert result.ok and result.delivered_by == f"smtp://localhost:{server.port}"
        assert result.destination == "a\u2022\u2022\u2022@example.org"
        (got,) = server.wait_for(1)
    assert got.rcpt_tos == [TO] and got.auth_login == "otpgate"
    message = got.message
    assert message["To"] == TO and message["From"] == "otpgate@example.org"
    plain = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert plain is not None and CODE in plain.get_content()
    assert html is not None and f"<code>{CODE}</code>" in html.get_content()
    assert_no_secret(result, logs)


@pytest_twisted.ensureDeferred
async def test_smtps_delivers(tmp_path, tls, logs):
    with MailServer(tls, "tls", users={"otpgate": "right-password"}) as server:
        config = delivery(
            tmp_path,
            {
                "port": server.port,
                "security": "tls",
                "ca_file": str(tls.ca_file),
                "username": "otpgate",
                "password_file": "smtp-password",
            },
        )
        result = await send_mail(reactor, config.smtp, TO, content())
        assert result.ok, result.summary()
        (got,) = server.wait_for(1)
    assert got.rcpt_tos == [TO] and CODE in got.message.get_body(("plain",)).get_content()
    assert_no_secret(result, logs)


@pytest_twisted.ensureDeferred
async def test_wrong_ca_is_refused_and_the_next_server_delivers(tmp_path, tls, other_ca, logs):
    with (
        MailServer(tls, "starttls") as first,
        MailServer(tls, "tls") as second,
    ):
        config = delivery(
            tmp_path,
            {"port": first.port, "security": "starttls", "ca_file": str(other_ca.ca_file)},
            {"port": second.port, "security": "tls", "ca_file": str(other_ca.ca_file)},
            {"port": second.port, "security": "tls", "ca_file": str(tls.ca_file)},
        )
        result = await send_mail(reactor, config.smtp, TO, content())
        assert [a.reason.startswith("TLS") for a in result.attempts] == [True, True, False]
        assert result.delivered_by == f"smtp://localhost:{second.port}"
        assert first.messages == [] and len(second.wait_for(1)) == 1
    assert_no_secret(result, logs)


@pytest_twisted.ensureDeferred
async def test_host_name_is_verified(tmp_path, tmp_path_factory, logs):
    wrong_name = make_server_tls(
        tmp_path_factory.mktemp("wrong-name"), dns_names=["mail.example.net"], ip_addresses=()
    )
    with MailServer(wrong_name, "tls") as server:
        config = delivery(
            tmp_path,
            {"port": server.port, "security": "tls", "ca_file": str(wrong_name.ca_file)},
        )
        result = await send_mail(reactor, config.smtp, TO, content())
    assert not result.ok and result.attempts[0].reason.startswith("TLS"), result.summary()
    assert server.messages == []


@pytest_twisted.ensureDeferred
async def test_first_server_down_then_second_delivers(tmp_path, tls, logs):
    down = free_port()
    with MailServer(tls, "starttls") as server:
        config = delivery(
            tmp_path,
            {"port": down, "security": "starttls", "ca_file": str(tls.ca_file)},
            {"port": server.port, "security": "starttls", "ca_file": str(tls.ca_file)},
        )
        result = await send_mail(reactor, config.smtp, TO, content())
        assert [a.reason for a in result.attempts] == ["connection refused", ""]
        assert len(server.wait_for(1)) == 1
    assert_no_secret(result, logs)


@pytest_twisted.ensureDeferred
async def test_all_down_or_hanging_fails_with_each_reason(tmp_path, tls, logs):
    down = free_port()
    hang = hanging_server()
    try:
        config = delivery(
            tmp_path,
            {"port": down, "security": "starttls", "ca_file": str(tls.ca_file)},
            {
                "port": hang.getsockname()[1],
                "security": "tls",
                "ca_file": str(tls.ca_file),
                "timeout": 1,
            },
        )
        result = await send_mail(reactor, config.smtp, TO, content())
    finally:
        hang.close()
    assert not result.ok and result.delivered_by is None
    assert [a.reason for a in result.attempts] == ["connection refused", "timed out"]
    assert "failed on every gateway" in result.summary()
    assert_no_secret(result, logs)


@pytest_twisted.ensureDeferred
async def test_wrong_password_fails(tmp_path, tls, logs):
    with MailServer(tls, "starttls", users={"otpgate": "right-password"}) as server:
        config = delivery(
            tmp_path,
            {
                "port": server.port,
                "security": "starttls",
                "ca_file": str(tls.ca_file),
                "username": "otpgate",
                "password_file": "wrong-password",
            },
        )
        result = await send_mail(reactor, config.smtp, TO, content())
        assert server.messages == [] and server.auth_failures >= 1
    assert not result.ok and "AUTH" in result.attempts[0].reason, result.summary()
    assert "wrong-password" not in repr(result) and "wrong-password" not in result.summary()
    assert_no_secret(result, logs)


@pytest_twisted.ensureDeferred
async def test_starttls_required_is_never_skipped(tmp_path, logs):
    with MailServer(None, "plain") as server:
        config = delivery(tmp_path, {"host": "127.0.0.1", "port": server.port})
        result = await send_mail(reactor, config.smtp, TO, content())
        assert server.messages == []
    assert not result.ok and "STARTTLS" in result.attempts[0].reason, result.summary()


class _InjectingServer:
    """A server on the path that answers STARTTLS with "220" and, in the same segment, a
    whole forged exchange ending in "250 queued", without ever doing TLS."""

    def __init__(self) -> None:
        from twisted.internet import protocol

        seen: list[bytes] = []
        self.seen = seen

        class Fake(protocol.Protocol):
            def connectionMade(self) -> None:
                self.transport.write(b"220 fake ESMTP\r\n")

            def dataReceived(self, data: bytes) -> None:
                seen.append(data)
                if data.upper().startswith(b"EHLO"):
                    self.transport.write(b"250-fake\r\n250 STARTTLS\r\n")
                elif data.upper().startswith(b"STARTTLS"):
                    self.transport.write(b"220 go ahead\r\n250-fake\r\n250 AUTH PLAIN\r\n"
                                         b"250 ok\r\n250 ok\r\n354 go\r\n250 queued\r\n")

        factory = protocol.Factory.forProtocol(Fake)
        self.port = reactor.listenTCP(0, factory, interface="127.0.0.1")


@pytest_twisted.ensureDeferred
async def test_replies_injected_with_the_starttls_answer_fail_the_send(tmp_path, tls, logs):
    """Attack: whoever sits on the path answers STARTTLS with "220" and, in the same TCP
    segment, a forged "250 queued": the client used to read those plain bytes as if they
    came over TLS and report the message delivered (nothing left the machine).  Bytes that
    come with the STARTTLS answer now fail the send, and the next server is tried."""
    fake = _InjectingServer()
    try:
        config = delivery(
            tmp_path,
            {"port": fake.port.getHost().port, "security": "starttls", "ca_file": str(tls.ca_file)},
        )
        result = await send_mail(reactor, config.smtp, TO, content())
        assert not result.ok, result.summary()
        assert "injection" in result.attempts[0].reason
        assert not any(CODE.encode() in data for data in fake.seen)
        assert_no_secret(result, logs)
    finally:
        await fake.port.stopListening()
