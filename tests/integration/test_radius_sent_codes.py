"""Codes sent by e-mail through the RADIUS front end, end to end: an in-process Gateway and
RADIUS server on loopback, slapd (stock schema) and Samba AD, a real SMTP server (aiosmtpd,
STARTTLS and AUTH), pyrad, radclient and raw UDP as the NAS.  The test reads the code from
the message the SMTP server received, as the user would.

* challenge mode: the password → Access-Challenge naming the masked address → the code with
  the State → Access-Accept; the code again, or after it expired → Access-Reject;
* append mode: the password alone from a user whose only factor is e-mail, or
  "password,email" from a user with a device too → Access-Challenge → code with State;
* a retransmitted request sends one message, on the same gateway (the duplicate cache) and
  on another (``failover_replay_seconds``);
* the SMTP server down → Access-Reject, no outstanding code, the audit says "failed".
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from ldap3 import MODIFY_REPLACE
from pyrad import packet as pp
from pyrad.dictionary import Dictionary
from twisted.internet import reactor
from twisted.internet.task import deferLater

from otpgate.admin.sentcodes import sent_enroll_change
from otpgate.auth.oob import outstanding
from otpgate.otp.oath import hotp
from otpgate.tokens import Token, TokenType
from tests.integration.backends import USER_PASSWORD, make_backend
from tests.integration.test_radius import (
    SECRET,
    Radius,
    client_table,
    enroll,
    pap,
    replies,
    start_radius,
)
from tests.netutil import free_port
from tests.sentcodes import proven_token
from tests.servers import make_server_tls
from tests.servers.mailserver import MailServer, Received, smtp_tables

PW = USER_PASSWORD
REPLY_MESSAGE, STATE = 18, 24
CODE = re.compile(r"Your one-time code for [^:]*: (\d{6,8})")


@pytest.fixture(params=["slapd-stock", "samba"])
def backend(request, tmp_path_factory):
    return make_backend(request.param, request, tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return make_server_tls(tmp_path_factory.mktemp("radius-mail-tls"), dns_names=["localhost"])


@pytest.fixture
def mail(tls):
    with MailServer(tls, "starttls", users={"otpgate": "mail-pw"}) as server:
        yield server


def mail_user(backend: Any, prefix: str) -> tuple[str, str]:
    """A new user whose entry has ``mail`` (name@example.org); (name, address)."""
    name, dn = backend.new_user(prefix)
    address = f"{name}@example.org"
    if backend.is_ad:  # slapd users get it from new_user
        conn = backend.admin()
        try:
            assert conn.modify(dn, {"mail": [(MODIFY_REPLACE, [address])]}), conn.result
        finally:
            conn.unbind()
    assert backend.raw_values(dn, "mail") == [address.encode()]
    return name, address


async def enroll_email(radius: Radius, name: str) -> Token:
    gw = radius.gateway
    address = f"{name}@example.org"
    token, secret = proven_token(TokenType.EMAIL, "mail", address, now=reactor.seconds())
    user = await gw.store.resolve(name, fresh=True)
    await gw.store.update(user, lambda s: sent_enroll_change(s, token, secret))
    return token


async def start(
    backend: Any,
    tmp_path: Path,
    tls: Any,
    smtp_port: int,
    mode: str,
    *,
    delivery: dict[str, Any] | None = None,
    **radius: Any,
) -> tuple[Radius, list[dict[str, Any]]]:
    """A gateway whose codes go to the SMTP server on ``smtp_port``; its audit events."""
    rules = {"smtp": smtp_tables(tmp_path, tls, smtp_port), "send_cooldown": 1, **(delivery or {})}
    server = await start_radius(backend, tmp_path, [client_table(mode)], delivery=rules, **radius)
    events: list[dict[str, Any]] = []
    server.gateway.audit.observers.append(events.append)
    return server, events


def sent_to(name: str) -> bytes:
    return f"Code sent by e-mail to {name[0]}\u2022\u2022\u2022@example.org".encode()


def code_of(message: Received) -> str:
    body = message.message.get_body(("plain",))
    assert body is not None
    found = CODE.search(body.get_content())
    assert found, body.get_content()
    return found.group(1)


def secret(name: str, typed: str) -> Any:
    def fill(pkt: Any) -> None:
        pkt[1] = [name.encode()]
        pkt[2] = [pkt.PwCrypt(typed)]

    return fill


def answer(name: str, state: bytes, code: str) -> Any:
    def fill(pkt: Any) -> None:
        pkt[1] = [name.encode()]
        pkt[2] = [pkt.PwCrypt(code)]
        pkt[STATE] = [state]

    return fill


def challenged(reply: Any, name: str) -> bytes:
    """The State of an Access-Challenge that says the code went to ``name``'s address."""
    assert reply is not None and reply.code == pp.AccessChallenge
    assert reply.get(REPLY_MESSAGE) == [sent_to(name)]
    (state,) = reply.get(STATE)
    return state


def sends(events: list[dict[str, Any]]) -> list[str]:
    return [e["send"]["outcome"] for e in events if "send" in e]


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


@pytest_twisted.ensureDeferred
async def test_challenge_mode_sends_the_code_and_takes_it_once(backend, tls, mail, tmp_path):
    radius, events = await start(backend, tmp_path, tls, mail.port, "challenge")
    try:
        name, address = mail_user(backend, "rsc")
        await enroll_email(radius, name)
        assert (await radius.pyrad(secret(name, "wrong-password"))).code == pp.AccessReject
        assert mail.messages == []  # a wrong password sends nothing
        state = challenged(await radius.pyrad(secret(name, PW)), name)
        (message,) = mail.wait_for(1)
        assert message.rcpt_tos == [address]
        code = code_of(message)
        reply = await radius.pyrad(answer(name, state, code))
        assert reply.code == pp.AccessAccept
        # the same State again: spent
        assert (await radius.pyrad(answer(name, state, code))).code == pp.AccessReject
        # a new password step sends a new code; the old one does not answer it
        await sleep(1.1)  # send_cooldown
        state = challenged(await radius.pyrad(secret(name, PW)), name)
        assert len(mail.wait_for(2)) == 2 and code_of(mail.messages[1]) != code
        assert (await radius.pyrad(answer(name, state, code))).code == pp.AccessReject
        assert sends(events) == ["sent", "sent"]
        assert [e["outcome"] for e in events if e["dn"] is not None] == [
            "reject", "challenge", "accept", "challenge", "reject"
        ]  # fmt: skip
        assert not [e for e in events if code in repr(e)]  # the code is never audited
    finally:
        await radius.stop()


@pytest_twisted.ensureDeferred
async def test_challenge_mode_expired_code_is_refused(backend, tls, mail, tmp_path):
    radius, _events = await start(
        backend, tmp_path, tls, mail.port, "challenge", delivery={"code_lifetime": 2}
    )
    try:
        name, _address = mail_user(backend, "rse")
        await enroll_email(radius, name)
        state = challenged(await radius.pyrad(secret(name, PW)), name)
        (message,) = mail.wait_for(1)
        await sleep(3)
        reply = await radius.pyrad(answer(name, state, code_of(message)))
        assert reply.code == pp.AccessReject  # the State was still valid, the code not
    finally:
        await radius.stop()


@pytest_twisted.ensureDeferred
async def test_append_mode_password_alone_and_trigger_word_challenge(backend, tls, mail, tmp_path):
    radius, events = await start(
        backend, tmp_path, tls, mail.port, "append", otp={"otp_delimiter": ","}
    )
    try:
        # only e-mail: the password alone is asked for the code
        name, address = mail_user(backend, "rsa")
        await enroll_email(radius, name)
        state = challenged(await radius.pyrad(secret(name, PW)), name)
        (message,) = mail.wait_for(1)
        assert message.rcpt_tos == [address]
        code = code_of(message)
        # radclient answers with the State, as a NAS does
        _rc, out, err = await radius.radclient(pap(name, code, f"State = 0x{state.hex()}"))
        assert replies(out) == ["Access-Accept"], out + err
        _rc, out, err = await radius.radclient(pap(name, code, f"State = 0x{state.hex()}"))
        assert replies(out) == ["Access-Reject"], out + err  # the State is spent
        _rc, out, err = await radius.radclient(pap(name, PW + "," + code))
        assert replies(out) == ["Access-Reject"], out + err  # and so is the code

        # a device and e-mail: the password alone needs the device's code, "password,email"
        # sends one
        other, _address = mail_user(backend, "rst")
        key = await enroll(radius, other)
        await enroll_email(radius, other)
        assert (await radius.pyrad(secret(other, PW))).code == pp.AccessReject
        assert len(mail.messages) == 1
        state = challenged(await radius.pyrad(secret(other, PW + ",email")), other)
        code = code_of(mail.wait_for(2)[1])
        assert (await radius.pyrad(answer(other, state, code))).code == pp.AccessAccept
        # the device still works as before
        assert (await radius.pyrad(secret(other, PW + "," + hotp(key, 0)))).code == pp.AccessAccept
        # a wrong password with the trigger sends nothing
        await sleep(1.1)
        assert (await radius.pyrad(secret(other, "wrong,email"))).code == pp.AccessReject
        # the code may also be appended to the password, without the State
        state = challenged(await radius.pyrad(secret(other, PW + ",email")), other)
        code = code_of(mail.wait_for(3)[2])
        assert (await radius.pyrad(secret(other, PW + "," + code))).code == pp.AccessAccept
        assert len(mail.messages) == 3 and sends(events) == ["sent"] * 3
    finally:
        await radius.stop()


@pytest_twisted.ensureDeferred
async def test_append_mode_unknown_state_is_refused(backend, tls, mail, tmp_path):
    radius, events = await start(backend, tmp_path, tls, mail.port, "append")
    try:
        name, _address = mail_user(backend, "rsu")
        await enroll_email(radius, name)
        reply = await radius.pyrad(answer(name, os.urandom(16), "123456"))
        assert reply.code == pp.AccessReject
        assert events[-1]["reason"].startswith("unknown, used or expired State")
        assert mail.messages == []
    finally:
        await radius.stop()


def access_request(name: str, typed: str) -> bytes:
    pkt = pp.AuthPacket(id=77, secret=SECRET.encode(), dict=Dictionary())
    pkt.authenticator = os.urandom(16)
    pkt[1] = [name.encode()]
    pkt[2] = [pkt.PwCrypt(typed)]
    pkt.add_message_authenticator()
    return pkt.RequestPacket()


def decoded(raw: bytes | None) -> Any:
    assert raw is not None
    return pp.AuthPacket(packet=raw, secret=SECRET.encode(), dict=Dictionary())


@pytest_twisted.ensureDeferred
async def test_retransmission_sends_one_message_on_one_gateway_and_on_two(
    backend, tls, mail, tmp_path
):
    one, _events = await start(
        backend, tmp_path, tls, mail.port, "append", failover_replay_seconds=5
    )
    two, events_two = await start(
        backend, tmp_path, tls, mail.port, "append", failover_replay_seconds=5
    )
    try:
        name, _address = mail_user(backend, "rsr")
        await enroll_email(one, name)
        raw = access_request(name, PW)
        first, again = await one.raw_exchange([raw, raw])  # one socket: the NAS resends
        assert first is not None and first == again  # the cached Access-Challenge
        challenged(decoded(first), name)
        assert one.server.counters.duplicates_answered == 1
        # the NAS fails over: the same request to another gateway
        (other,) = await two.raw_exchange([raw])
        state = challenged(decoded(other), name)
        assert sends(events_two) == ["repeat"]
        await sleep(0.5)
        (message,) = mail.messages  # exactly one message
        reply = await two.pyrad(answer(name, state, code_of(message)))
        assert reply.code == pp.AccessAccept
    finally:
        await one.stop()
        await two.stop()


@pytest.mark.parametrize("mode", ["challenge", "append"])
@pytest_twisted.ensureDeferred
async def test_smtp_down_rejects_and_leaves_no_code(backend, tls, tmp_path, mode):
    radius, events = await start(backend, tmp_path, tls, free_port(), mode)
    try:
        name, _address = mail_user(backend, "rsd")
        token = await enroll_email(radius, name)
        reply = await radius.pyrad(secret(name, PW))
        assert reply.code == pp.AccessReject
        assert sends(events) == ["failed"]
        assert "not sent" in events[-1]["reason"] and events[-1]["outcome"] == "reject"
        gw = radius.gateway
        state = gw.store.decode(await gw.store.resolve(name, fresh=True))
        use = state.used.use_of(token.id)
        assert use.code == b"" and not outstanding(use, reactor.seconds(), 300)
        assert len(state.used.sends) == 1  # it still counts towards the limits
        assert len(radius.server.challenges) == 0
    finally:
        await radius.stop()
