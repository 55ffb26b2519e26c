"""The LDAP proxy's part of codes sent by e-mail/SMS, bytes in and bytes out (no servers).

A bind whose password ends with ``,email`` asks the pipeline for a code: the proxy answers
invalidCredentials with the pipeline's "Code sent by e-mail to ..." as diagnosticMessage;
every other refusal keeps the one generic diagnostic.  The password of a trigger bind was
bound upstream, so the upstream connection is made anonymous again before anything else
goes; and a trigger bind is never remembered by the bind cache.  The same flows run with
real ldapwhoami, slapd, Samba and SMTP in tests/integration/test_ldap_sent_codes.py.
"""

from __future__ import annotations

from dataclasses import replace

import pytest_twisted

from otpgate import ber
from otpgate.admin.sentcodes import sent_enroll_change
from otpgate.auth.config import CodeRules
from otpgate.config import auth_settings
from otpgate.tokens import Token, TokenType
from tests.sentcodes import proven_token
from tests.unit.test_proxy_protocol import (
    ALICE,
    FakeGateway,
    Harness,
    RecordingAuthenticator,
    bind,
    bind_response,
    search,
)
from tests.unit.test_sent_codes import RecordingSender

PW = "alice-password"
RULES = CodeRules(lifetime=20, digits=6, cooldown=30, per_hour=4, per_minute=100)
GENERIC = b"invalid credentials"


def sending_gateway(**proxy: object) -> tuple[FakeGateway, RecordingSender]:
    """The proxy's gateway stand-in with e-mail codes: ``,`` between password and code or
    trigger word, and a sender that keeps the codes it would send."""
    gateway = FakeGateway(**proxy)
    settings = auth_settings(gateway.config)
    settings = replace(settings, otp=replace(settings.otp, otp_delimiter=","), codes=RULES)
    sender = RecordingSender()
    gateway.authenticator = RecordingAuthenticator(
        settings, gateway.store, gateway.reactor, gateway.audit, None, sender
    )
    return gateway, sender


async def enroll_email(gateway: FakeGateway) -> Token:
    token, secret = proven_token(TokenType.EMAIL, "mail", "alice@x", now=gateway.reactor.seconds())
    user = await gateway.store.resolve(ALICE, fresh=True)
    await gateway.store.update(user, lambda s: sent_enroll_change(s, token, secret))
    return token


def bind_answer(h: Harness) -> tuple[int, bytes]:
    """The result code and diagnosticMessage of the one BindResponse the client got."""
    ((header, pdu),) = h.client_got()
    assert header.op_tag == ber.BIND_RESPONSE
    code, _matched, diagnostic = ber.decode_result(pdu, header)
    return code, diagnostic


@pytest_twisted.ensureDeferred
async def test_a_trigger_bind_answers_where_the_code_went_then_resets_the_identity():
    gateway, sender = sending_gateway()
    await enroll_email(gateway)
    h = Harness(gateway)
    h.send(bind(1, ALICE, PW + ",email"), search(2))
    ((header, pdu),) = h.upstream_got()  # the password alone, checked before any send
    assert ber.parse_bind(pdu, header).simple == PW.encode()
    assert sender.sent == []
    h.answer(bind_response(1, 0))
    code, diagnostic = bind_answer(h)
    assert code == 49
    assert diagnostic.decode() == "Code sent by e-mail to a\u2022\u2022\u2022@x"
    assert len(sender.sent) == 1
    # bound upstream as alice by the password check: anonymous again before the search goes
    ((header, pdu),) = h.upstream_got()
    assert header.op_tag == ber.BIND_REQUEST and ber.parse_bind(pdu, header).name == b""
    h.answer(bind_response(1, 0))
    assert [(hd.message_id, hd.op_tag) for hd, _ in h.upstream_got()] == [
        (2, ber.SEARCH_REQUEST)
    ]
    (event,) = gateway.audit.events
    assert event["outcome"] == "challenge" and event["send"]["outcome"] == "sent"
    # the code that was sent logs in, once
    h.send(bind(3, ALICE, PW + "," + sender.last))
    h.upstream_got()
    h.answer(bind_response(3, 0))
    assert bind_answer(h) == (0, b"")
    h.send(bind(4, ALICE, PW + "," + sender.last))
    assert bind_answer(h) == (49, GENERIC)  # refused before any password is bound
    assert len(sender.sent) == 1


@pytest_twisted.ensureDeferred
async def test_every_other_refusal_keeps_the_generic_answer():
    gateway, sender = sending_gateway()
    token = await enroll_email(gateway)
    h = Harness(gateway)
    h.send(bind(1, ALICE, "wrong,email"))  # a wrong password: nothing sent, nothing said
    h.upstream_got()
    h.answer(bind_response(1, 49))
    assert bind_answer(h) == (49, GENERIC) and sender.sent == []
    h.send(bind(2, ALICE, PW + ",sms"))  # alice has no SMS token: just a wrong secret
    assert bind_answer(h) == (49, GENERIC) and sender.sent == []
    h.send(bind(3, ALICE, PW + ",email"))
    h.upstream_got()
    h.answer(bind_response(3, 0))
    assert bind_answer(h)[1].startswith(b"Code sent by e-mail")
    h.upstream_got()
    h.answer(bind_response(3, 0))  # the identity reset
    gateway.reactor.advance(21)  # the code expired; the cooldown has not
    h.send(bind(4, ALICE, PW + ",email"))  # within the cooldown: limited, said to nobody
    h.upstream_got()
    h.answer(bind_response(4, 0))
    assert bind_answer(h) == (49, GENERIC) and len(sender.sent) == 1
    h.upstream_got()
    h.answer(bind_response(4, 0))
    gateway.reactor.advance(31)
    sender.fail = True  # no gateway takes it: withdrawn, and the bind is a plain refusal
    h.send(bind(5, ALICE, PW + ",email"))
    h.upstream_got()
    h.answer(bind_response(5, 0))
    assert bind_answer(h) == (49, GENERIC)
    outcomes = [e["send"]["outcome"] for e in gateway.audit.events if "send" in e]
    assert outcomes == ["sent", "limited", "failed"]
    user = await gateway.store.resolve(ALICE, fresh=True)
    assert gateway.store.decode(user).used.use_of(token.id).code == b""


@pytest_twisted.ensureDeferred
async def test_the_bind_cache_never_remembers_a_trigger_bind():
    """With the bind cache on, a trigger bind repeated at once is no cached success: it is
    decided again (here: the code already sent), and a cached success of the code itself does not
    make a later trigger bind succeed either."""
    gateway, sender = sending_gateway(bind_cache_seconds=30)
    await enroll_email(gateway)
    h = Harness(gateway)

    def trigger(mid: int) -> tuple[int, bytes]:
        h.send(bind(mid, ALICE, PW + ",email"))
        h.upstream_got()
        h.answer(bind_response(mid, 0))
        answer = bind_answer(h)
        h.upstream_got()
        h.answer(bind_response(mid, 0))  # the identity reset after the refusal
        return answer

    assert trigger(1)[0] == 49 and len(sender.sent) == 1
    again = trigger(2)  # decided again, not the cache: the code still outstanding
    assert again[0] == 49 and again[1].startswith(b"Code already sent") and len(sender.sent) == 1
    h.send(bind(3, ALICE, PW + "," + sender.last))
    h.upstream_got()
    h.answer(bind_response(3, 0))
    assert bind_answer(h) == (0, b"")
    h.send(bind(4, ALICE, PW + "," + sender.last))  # the application's rebind: the cache
    h.upstream_got()
    h.answer(bind_response(4, 0))
    assert bind_answer(h) == (0, b"")
    assert trigger(5) == (49, GENERIC) and len(sender.sent) == 1  # still the cooldown
    gateway.reactor.advance(31)
    code, diagnostic = trigger(6)
    assert code == 49 and diagnostic.startswith(b"Code sent") and len(sender.sent) == 2
    assert [e["outcome"] for e in gateway.audit.events].count("accept") == 2
