"""The portal's parts for codes sent by e-mail/SMS, without a server: the plain words for a
refused send, the code step's expiry, the enrollment send limits, masked destinations, the
HTML, and the shared enrollment flow (``SentEnroller``) over the in-memory directory with a
sender that records the codes.  The portal over HTTP and in Chromium against slapd and
Samba AD with real SMTP and HTTPS SMS gateways: tests/integration/test_web_sent_codes.py."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted

from otpgate.auth.requests import Sent
from otpgate.directory.records import OtpState
from otpgate.tokens import Token, TokenType
from otpgate.web import render, render_codes
from otpgate.web.codestep import refusal
from otpgate.web.sentenroll import SendLimits, SentEnroller, SentRefused, shown_destination
from otpgate.web.sessions import CodeStep
from tests.unit.test_pipeline import PW, config
from tests.unit.test_sent_codes import DELIVERY, RecordingSender, sending_world

DOT = "\u2022"


def limited(detail: str) -> Sent:
    return Sent("sms", "", "limited", detail=detail)


def test_refusals_in_plain_words() -> None:
    text, status = refusal(limited("send refused: cooldown (42 s left)"))
    assert text == "A code was sent moments ago: wait 42 seconds before asking again."
    assert status == 429
    assert "wait a minute" in refusal(limited("send refused: cooldown"))[0]
    assert "last hour" in refusal(limited("send refused: hourly limit (6 per hour) reached"))[0]
    assert "right now" in refusal(limited("global budget"))[0]
    assert refusal(limited("locked out: no code is sent"))[1] == 403
    assert refusal(Sent("sms", "+•••••89", "failed", detail="gw: status 500"))[1] == 503
    text, _ = refusal(Sent("sms", "", "refused", detail="no mobile values"))
    assert "phone number" in text and "mobile" not in text
    assert "e-mail address" in refusal(Sent("email", "", "refused"))[0]
    # Without a send ("send again" only: its password was checked by the first step).
    assert "Too many failed" in refusal(None, "no code sent: locked out")[0]
    assert refusal(None, "directory unavailable: down")[1] == 503
    assert refusal(None, "no SMS token to send a code to") == ("No code was sent.", 400)


def test_a_code_step_ends_with_its_code() -> None:
    step = CodeStep("uid=a,dc=x", "00ff", "sms", "Code sent by SMS to +•••••89", expires=100.0)
    assert step.live(99.9) and not step.live(100.0)
    assert "password" not in repr(step).lower()


def test_enrollment_send_limits() -> None:
    limits = SendLimits(cooldown=60, per_hour=3, max_keys=2)
    assert limits.take("a", 0) is None
    assert "wait 60 seconds" in (limits.take("a", 1) or "")
    assert limits.take("b", 1) is None  # per entry
    assert limits.take("a", 61) is None and limits.take("a", 122) is None
    assert "3 codes were sent in the last hour" in (limits.take("a", 200) or "")
    assert limits.take("a", 3600.5) is None  # the first send left the hour
    limits.take("c", 3601)  # a third key evicts the oldest ("b")
    assert limits.take("b", 3602) is None


def test_destinations_are_masked_from_the_entry() -> None:
    sms = Token(id="s1", type=TokenType.SMS, created=0, digits=6, attribute="mobile")
    mail = Token(id="m1", type=TokenType.EMAIL, created=0, digits=6, attribute="mail")
    assert shown_destination(sms, [b"+49 151 1234589"]) == f"+{DOT * 5}89"
    assert shown_destination(mail, [b"alice@example.org"]) == f"a{DOT * 3}@example.org"
    assert shown_destination(sms, []) == "(no mobile values)"
    assert shown_destination(mail, [b"a@x", b"b@x"]) == "(2 mail values)"
    assert shown_destination(mail, None) == "(could not be read)"
    html = render.devices_table(OtpState(tokens=(sms,)), "c", "/revoke", destinations={"s1": "<+>"})
    assert 'code by SMS to <span class="destination">&lt;+&gt;</span>' in html


def test_sign_in_offers_a_sent_code_only_when_codes_can_be_sent() -> None:
    assert 'id="send-code"' not in render.sign_in()
    form = render.sign_in("oops", "al<ice", send=True)
    assert 'id="send-code" name="send"' in form and "al&lt;ice" in form
    # Enter presses the first button: "Sign in" comes before "Send me a code".
    assert form.index('id="signin"') < form.index('id="send-code"')


def test_code_step_and_proof_pages_escape_and_carry_csrf() -> None:
    page = render_codes.code_step("Code sent by SMS to <b>", 'cs"rf', error="x<y")
    assert "&lt;b&gt;" in page and "x&lt;y" in page
    assert page.count('name="csrf" value="cs&quot;rf"') == 3
    for action in ("/signin/code", "/signin/resend", "/signin/cancel"):
        assert f'action="{action}"' in page
    own = render_codes.sent_proof(f"+{DOT * 5}89", "c", "/enroll-sent")
    assert 'action="/enroll-sent/confirm"' in own and 'action="/enroll-sent/cancel"' in own
    desk = render_codes.sent_proof("a@x", "c", "/helpdesk/enroll-sent", helpdesk_user="<bob>")
    assert "Ask &lt;bob&gt; to read it" in desk


def test_enrollment_buttons_per_channel_never_for_protected_users() -> None:
    state = OtpState()
    mine = render.my_devices(state, "c", False, channels=("email", "sms"))
    assert 'id="enroll-email"' in mine and 'id="enroll-sms"' in mine
    assert 'id="enroll-sms"' not in render.my_devices(state, "c", False, channels=("email",))
    assert "enroll-email" not in render.my_devices(state, "c", True)
    desk = render.helpdesk_user("uid=a,dc=x", state, "c", 0.0, False, channels=("sms",)).html
    assert 'id="hd-enroll-sms"' in desk and 'value="uid=a,dc=x"' in desk
    protected = render.helpdesk_user(
        "uid=a,dc=x", state, "c", 0.0, False, protected="an administrator", channels=("sms",)
    ).html
    assert "hd-enroll" not in protected


# -- the shared enrollment flow over the in-memory directory -----------------------------------


class FakeGateway:
    """What SentEnroller uses of the gateway: the store, the sender, the entry's values."""

    def __init__(self, world: Any, sender: RecordingSender) -> None:
        self.store = world.store
        self.code_sender = sender
        self.directory = world.directory

    async def entry_values(self, dn: str, attribute: str) -> list[bytes]:
        _dn, attrs = self.directory.entries[dn.lower()]
        return list(attrs.get(attribute.lower(), []))


@pytest.fixture
def flow() -> tuple[Any, RecordingSender, SentEnroller, str]:
    sms = {"url": "https://sms.example/", "body": {"to": "{to}", "text": "{code}"}}
    cfg = config(
        delivery={**DELIVERY, "sms_http": [sms], "sms_country_prefixes": ["+49"]},
        otp={"otp_delimiter": ","},
    )
    world, sender = sending_world(cfg)
    dn = world.directory.add_user("alice", PW, telephoneNumber=["+49 30 1234589"])
    return world, sender, SentEnroller(FakeGateway(world, sender), cfg), dn


@pytest_twisted.ensureDeferred
async def test_enroll_sms_token_proven_by_the_code(flow) -> None:
    world, sender, enroller, dn = flow
    assert enroller.channels == ("email", "sms")
    now = world.clock.seconds()
    pending, sent = await enroller.start(dn, "alice", "sms", now)
    assert sent.outcome == "sent" and pending.dn == dn and not pending.helpdesk
    token = pending.proof.token
    # No mobile: the first of sms_attributes the entry has.
    assert token.type is TokenType.SMS and token.attribute == "telephoneNumber"
    code = sender.last
    assert code not in repr(pending)
    wrong = "000000" if code != "000000" else "111111"
    with pytest.raises(SentRefused) as refused:
        await enroller.finish(pending, wrong, now + 1)
    assert not refused.value.over
    assert not world.store.decode(await world.store.resolve("alice", fresh=True)).tokens
    written = await enroller.finish(pending, f" {code[:3]} {code[3:]} ", now + 2)
    state = world.store.decode(await world.store.resolve("alice", fresh=True))
    assert [t.id for t in state.tokens] == [written.id] == [token.id]
    assert await enroller.destinations(dn, state) == {token.id: f"+{DOT * 5}89"}
    # The new token signs in like any e-mail/SMS token: a code is sent after the password.
    result = await world.login("alice", PW + ",sms")
    assert result.challenge == f"Code sent by SMS to a{DOT * 3}@x"  # the recording sender's


@pytest_twisted.ensureDeferred
async def test_enrollment_proof_limits(flow) -> None:
    world, sender, enroller, dn = flow
    now = world.clock.seconds()
    pending, _ = await enroller.start(dn, "alice", "email", now)
    with pytest.raises(SentRefused, match="wait 30 seconds"):
        await enroller.start(dn, "alice", "email", now + 1)
    assert len(sender.sent) == 1
    for _ in range(3):
        with pytest.raises(SentRefused):
            await enroller.finish(pending, "x", now + 2)
    with pytest.raises(SentRefused) as over:
        await enroller.finish(pending, sender.last, now + 3)  # three wrong tries: void
    assert over.value.over
    late, _ = await enroller.start(dn, "alice", "email", now + 31)
    with pytest.raises(SentRefused) as expired:
        await enroller.finish(late, sender.last, now + 31 + 300)
    assert expired.value.over
    with pytest.raises(SentRefused, match="cannot be sent by that channel"):
        await enroller.start(dn, "alice", "totp", now + 100)
    sender.fail = True
    with pytest.raises(SentRefused, match="could not be sent") as failed:
        await enroller.start(dn, "alice", "email", now + 200)
    assert failed.value.sent is not None and failed.value.sent.outcome == "failed"
    assert not world.store.decode(await world.store.resolve("alice", fresh=True)).tokens


@pytest_twisted.ensureDeferred
async def test_no_number_nothing_sent(flow) -> None:
    world, sender, enroller, _dn = flow
    bare = world.directory.add_user("bob", PW)
    with pytest.raises(SentRefused, match="none of mobile, telephoneNumber"):
        await enroller.start(bare, "bob", "sms", world.clock.seconds())
    assert sender.sent == []
