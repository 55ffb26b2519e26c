"""The low-scratch warning by e-mail (``[delivery] scratch_warning``) end to end: in-process
Gateways on a real slapd, a real SMTP server (aiosmtpd, STARTTLS and AUTH) on loopback,
code-only logins through the one door until the list falls below the threshold."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from otpgate.admin.manage import scratch_change
from otpgate.otp.scratch import generate_scratch_list
from otpgate.service import Gateway
from otpgate.tokens import TokenType
from otpgate.vault import Keyring
from tests.integration.backends import USER_PASSWORD, make_backend
from tests.logins import code_only
from tests.netutil import free_port
from tests.servers import make_server_tls
from tests.servers.mailserver import MailServer, smtp_tables

THRESHOLD = 3
DOT3 = "\u2022" * 3


@pytest.fixture
def backend(request, tmp_path_factory):
    return make_backend("slapd-stock", request, tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return make_server_tls(tmp_path_factory.mktemp("lowmail-tls"), dns_names=["localhost"])


@pytest.fixture
def mail(tls):
    with MailServer(tls, "starttls", users={"otpgate": "mail-pw"}) as server:
        yield server


def gateway(backend, tls, tmp_path, *ports: int) -> tuple[Gateway, list[dict[str, Any]]]:
    servers = smtp_tables(tmp_path, tls, *ports)
    config = backend.config(
        otp={"scratch_low_threshold": THRESHOLD},
        delivery={"scratch_warning": True, "smtp": servers},
    )
    gw = Gateway(config, Keyring.load(backend.keyring), reactor)
    events: list[dict[str, Any]] = []
    gw.audit.observers.append(events.append)
    return gw, events


async def new_list(gw: Gateway, name: str, count: int) -> list[str]:
    codes, scratch = generate_scratch_list(count, 8)
    user = await gw.store.resolve(name, fresh=True)
    await gw.store.update(user, lambda s: scratch_change(s, scratch, reactor.seconds()))
    return codes


async def login(gw: Gateway, name: str, code: str) -> Any:
    return await gw.authenticator.login(code_only(name, code, "127.0.0.1", "test"))


async def sent(*gws: Gateway) -> None:
    """Wait for the gateways' background sends (the login never waited for them)."""
    for gw in gws:
        assert gw.low_scratch_mailer is not None
        await gw.low_scratch_mailer.drain()


def notices(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e.get("outcome") == "notify"]


@pytest_twisted.ensureDeferred
async def test_one_message_when_the_list_falls_below_the_threshold(backend, tls, mail, tmp_path):
    name, dn = backend.new_user("lw")
    gw, events = gateway(backend, tls, tmp_path, free_port(), mail.port)  # the first is down
    try:
        codes = await new_list(gw, name, 5)
        for code, left in zip(codes[:2], (4, 3), strict=True):
            result = await login(gw, name, code)
            assert result.ok and result.scratch_remaining == left
        await sent(gw)
        assert mail.messages == [] and notices(events) == []
        crossing = await login(gw, name, codes[2])
        assert crossing.ok and crossing.low_scratch_warning == 2
        await sent(gw)
        (got,) = mail.messages
        for code in codes[3:]:  # further logins send nothing
            assert (await login(gw, name, code)).ok
        await sent(gw)
        assert len(mail.messages) == 1
    finally:
        gw.close()
    assert got.rcpt_tos == [f"{name}@example.org"] and got.auth_login == "otpgate"
    text = got.message.get_body(("plain",)).get_content()
    assert "Only 2 backup codes left" in text and "help desk" in text
    assert not any(code in got.raw.decode() for code in codes)
    (event,) = notices(events)
    assert event["front_end"] == "delivery" and event["dn"] == dn
    assert f"sent to {name[0]}{DOT3}@example.org by smtp://localhost:{mail.port}" in event["reason"]
    assert "connection refused" not in event["reason"]
    assert f"{name}@" not in str(event)
    # The claim is in the directory: the list's use state says so.
    state = gw.store.decode(await gw.store.resolve(name, fresh=True))
    (token,) = [t for t in state.tokens if t.type is TokenType.SCRATCH]
    assert state.used.use_of(token.id).warned


@pytest_twisted.ensureDeferred
async def test_two_gateways_racing_the_crossing_login_send_one(backend, tls, mail, tmp_path):
    name, _dn = backend.new_user("lr")
    one, events_one = gateway(backend, tls, tmp_path, mail.port)
    two, events_two = gateway(backend, tls, tmp_path, mail.port)
    try:
        codes = await new_list(one, name, 6)
        for gw, code in ((one, codes[0]), (two, codes[1])):  # both hold the entry cached
            assert (await login(gw, name, code)).ok
        # 4 left: each gateway's next code leaves 3, then 2; raced many times, one
        # crossing claims the warning whichever write lands first.
        results = await defer.gatherResults(
            [
                defer.ensureDeferred(login(one, name, codes[2])),
                defer.ensureDeferred(login(two, name, codes[3])),
                defer.ensureDeferred(login(one, name, codes[4])),
                defer.ensureDeferred(login(two, name, codes[5])),
            ]
        )
        assert all(r.ok for r in results), results
        assert sorted(r.scratch_remaining for r in results) == [0, 1, 2, 3]
        assert sum(r.low_scratch_warning is not None for r in results) == 1
        await sent(one, two)
        assert len(mail.messages) == 1
        assert len(notices(events_one) + notices(events_two)) == 1
    finally:
        one.close()
        two.close()


@pytest_twisted.ensureDeferred
async def test_no_mail_attribute_no_message_and_the_login_accepted(backend, tls, mail, tmp_path):
    name, dn = backend.new_user("ln", mail=[])
    gw, events = gateway(backend, tls, tmp_path, mail.port)
    try:
        codes = await new_list(gw, name, 3)
        result = await login(gw, name, codes[0])  # 2 left < 3
        assert result.ok and result.low_scratch_warning == 2
        await sent(gw)
        assert (await login(gw, name, codes[1])).ok
        await sent(gw)
    finally:
        gw.close()
    assert mail.messages == []
    (event,) = notices(events)
    assert event["dn"] == dn and "not sent" in event["reason"]
    assert "no mail attribute" in event["reason"]


@pytest_twisted.ensureDeferred
async def test_every_server_failing_changes_nothing_and_is_not_retried(backend, tls, tmp_path):
    name, _dn = backend.new_user("lf")
    gw, events = gateway(backend, tls, tmp_path, free_port())
    try:
        codes = await new_list(gw, name, 3)
        assert (await login(gw, name, codes[0])).ok
        await sent(gw)
        assert (await login(gw, name, codes[1])).ok
        await sent(gw)
    finally:
        gw.close()
    (event,) = notices(events)
    assert "could not be sent" in event["reason"] and "connection refused" in event["reason"]



def test_test_auth_waits_for_the_warning_it_claimed(backend, tls, mail, tmp_path, capsys):
    """``otpgate test-auth`` stops its reactor after the login: the claimed warning still
    goes out first."""
    from tests.integration.test_cli import Cli
    from tests.integration.test_cli_scratch_mail import run, with_delivery

    cli = Cli(backend, tmp_path, capsys, otp={"scratch_low_threshold": THRESHOLD})
    with_delivery(cli, tls, mail.port, attribute="mail")
    cli.config.write_text(
        cli.config.read_text().replace("[delivery]\n", "[delivery]\nscratch_warning = true\n")
    )
    name, _dn = backend.new_user("lt")
    codes = cli.json("scratch", name, "--count", "3")["codes"]
    user_password = tmp_path / "user-password"
    user_password.write_text(USER_PASSWORD + "\n")
    done = run(cli, "test-auth", name, "--password-file", str(user_password), "--otp", codes[0])
    assert done.returncode == 0, done.stdout + done.stderr
    (got,) = mail.messages
    assert "Only 2 backup codes left" in got.message.get_body(("plain",)).get_content()
