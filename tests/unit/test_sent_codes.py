"""Codes sent by e-mail/SMS through the pipeline, on an in-memory directory and a Clock:
on-demand triggers, single use, expiry, the per-user and global limits, one outstanding
code, lockout, failed sends withdrawn, retransmissions and two racing gateways.

The sender here records codes instead of sending them; tests/integration sends them
through real SMTP and HTTP gateways."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer

from otpgate.admin.sentcodes import (
    EnrollmentProof,
    choose_attribute,
    new_sent_token,
    sent_enroll_change,
)
from otpgate.auth.oob import code_digest, destination_binding, plan_send
from otpgate.auth.pipeline import Authenticator
from otpgate.auth.requests import Channel, PasswordStep, SendCode, Sent
from otpgate.config import auth_settings
from otpgate.directory.records import OtpState
from otpgate.errors import PolicyError
from otpgate.outofband.codes import NoDestination, OutOfBandSender, phone_number
from otpgate.tokens import Secret, Token, TokenType, UsedState
from tests.logins import appended, code_only
from tests.unit.test_pipeline import PW, World, config

DELIVERY = {
    "smtp": [{"host": "127.0.0.1", "security": "none", "from": "otp@x"}],
    "code_lifetime": 300,
    "send_cooldown": 30,
    "sends_per_hour": 4,
    "sends_per_minute": 100,
}


class RecordingSender:
    """A CodeSender that keeps what it would send (the code included: tests read it)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str]] = []
        self.fail = False
        self.budget = 1000
        self.refuse: Sent | None = None
        self.users: list[str] = []

    async def check(self, dn: str, token: Token, secret: Secret) -> Sent | None:
        return self.refuse

    def take_budget(self, now: float) -> bool:
        self.budget -= 1
        return self.budget >= 0

    async def send(self, dn: str, user: str, token: Token, secret: Secret, code: str) -> Sent:
        kind = token.type.value
        if self.fail:
            return Sent(kind, "a\u2022\u2022\u2022@x", "failed", detail="smtp: refused")
        self.sent.append((dn, token.type.value, code))
        self.users.append(user)
        binding = destination_binding(secret.key, "alice@x")
        return Sent(kind, "a\u2022\u2022\u2022@x", "sent", "smtp://127.0.0.1:25", binding=binding)

    async def destination(self, dn: str, token: Token) -> str:
        return "a\u2022\u2022\u2022@x"

    @property
    def last(self) -> str:
        return self.sent[-1][2]


def sending_world(cfg: Any = None, directory: Any = None) -> tuple[World, RecordingSender]:
    world = World(
        cfg or config(delivery=dict(DELIVERY), otp={"otp_delimiter": ","}), directory
    )
    sender = RecordingSender()
    world.auth = Authenticator(
        auth_settings(world.config), world.store, world.clock, world.auth.audit, None, sender
    )
    return world, sender


async def enroll_sent(world: World, name: str, kind: TokenType = TokenType.EMAIL) -> Token:
    attribute = "mail" if kind is TokenType.EMAIL else "mobile"
    token, secret = new_sent_token(kind, attribute, 6, now=world.clock.seconds())
    token = replace(token, bound=destination_binding(secret.key, "alice@x"))
    user = await world.store.resolve(name, fresh=True)
    await world.store.update(user, lambda s: sent_enroll_change(s, token, secret))
    return token


@pytest.fixture
def sending() -> tuple[World, RecordingSender]:
    world, sender = sending_world()
    world.directory.add_user("alice", PW, mobile=["+49 151 1234589"])
    return world, sender


def challenge_channel() -> Channel:
    return Channel("radius", challenges=True)


@pytest_twisted.ensureDeferred
async def test_trigger_word_sends_then_the_code_logs_in_once(sending) -> None:
    world, sender = sending
    await enroll_sent(world, "alice")
    asked = await world.login("alice", PW + ",email")
    assert not asked.ok and asked.challenge.startswith("Code sent by e-mail to")
    assert asked.sent is not None and asked.sent.outcome == "sent"
    assert len(sender.sent) == 1
    code = sender.last
    assert (await world.login("alice", PW + "," + code)).ok
    replay = await world.login("alice", PW + "," + code)
    assert not replay.ok and replay.reason == "OTP already used"
    assert len(sender.sent) == 1  # a bind that carries a code never sends


@pytest_twisted.ensureDeferred
async def test_a_wrong_password_sends_nothing(sending) -> None:
    world, sender = sending
    await enroll_sent(world, "alice")
    result = await world.login("alice", "wrong,email")
    assert not result.ok and "wrong password" in result.reason and not result.challenge
    assert sender.sent == []


@pytest_twisted.ensureDeferred
async def test_trigger_for_a_channel_the_user_lacks_is_just_a_secret(sending) -> None:
    world, sender = sending
    await enroll_sent(world, "alice", TokenType.EMAIL)
    result = await world.login("alice", PW + ",sms")
    assert not result.ok and not result.challenge and sender.sent == []


@pytest_twisted.ensureDeferred
async def test_cooldown_hourly_limit_and_replacement(sending) -> None:
    world, sender = sending
    await enroll_sent(world, "alice")
    assert (await world.login("alice", PW + ",email")).challenge
    first = sender.last
    again = await world.login("alice", PW + ",email")  # within the cooldown: the same code
    assert not again.ok and again.challenge.startswith("Code already sent")
    assert again.sent is not None and again.sent.outcome == "repeat" and len(sender.sent) == 1
    assert (await world.login("alice", PW + "," + first)).ok  # spent: nothing outstanding now
    limited = await world.login("alice", PW + ",email")
    assert not limited.ok and "cooldown" in limited.reason and len(sender.sent) == 1
    assert limited.sent is not None and limited.sent.outcome == "limited"
    world.clock.advance(31)
    assert (await world.login("alice", PW + ",email")).challenge
    assert len(sender.sent) == 2
    world.clock.advance(31)
    assert (await world.login("alice", PW + ",email")).challenge
    old = await world.login("alice", PW + "," + sender.sent[1][2])  # replaced by the new send
    assert not old.ok
    world.clock.advance(31)
    assert (await world.login("alice", PW + ",email")).challenge
    assert (await world.login("alice", PW + "," + sender.last)).ok
    world.clock.advance(31)
    limited = await world.login("alice", PW + ",email")
    assert "hourly limit" in limited.reason and len(sender.sent) == 4
    world.clock.advance(3600)
    assert (await world.login("alice", PW + ",email")).challenge


@pytest_twisted.ensureDeferred
async def test_codes_expire(sending) -> None:
    world, sender = sending
    await enroll_sent(world, "alice")
    await world.login("alice", PW + ",email")
    world.clock.advance(301)
    assert not (await world.login("alice", PW + "," + sender.last)).ok


@pytest_twisted.ensureDeferred
async def test_a_locked_out_user_gets_no_code(sending) -> None:
    world, sender = sending
    await enroll_sent(world, "alice")
    for _ in range(world.config.lockout.max_failures):
        await world.login("alice", PW + ",000000")
    result = await world.login("alice", PW + ",email")
    assert not result.ok and "locked out" in result.reason and sender.sent == []


@pytest_twisted.ensureDeferred
async def test_wrong_codes_count_towards_lockout(sending) -> None:
    world, sender = sending
    await enroll_sent(world, "alice")
    await world.login("alice", PW + ",email")
    for _ in range(world.config.lockout.max_failures):
        assert not (await world.login("alice", PW + ",000000")).ok
    locked = await world.login("alice", PW + "," + sender.last)
    assert not locked.ok and locked.reason == "locked out"


@pytest_twisted.ensureDeferred
async def test_a_send_no_gateway_took_is_withdrawn(sending) -> None:
    world, sender = sending
    token = await enroll_sent(world, "alice")
    sender.fail = True
    result = await world.login("alice", PW + ",email")
    assert not result.ok and not result.challenge and "not sent" in result.reason
    user = await world.store.resolve("alice", fresh=True)
    use = world.store.decode(user).used.use_of(token.id)
    assert use.code == b"" and len(world.store.decode(user).used.sends) == 1


@pytest_twisted.ensureDeferred
async def test_global_budget(sending) -> None:
    world, sender = sending
    await enroll_sent(world, "alice")
    sender.budget = 0
    result = await world.login("alice", PW + ",email")
    assert not result.ok and "budget" in result.reason and sender.sent == []


@pytest_twisted.ensureDeferred
async def test_radius_challenge_mode_sends_after_the_password(sending) -> None:
    world, sender = sending
    await enroll_sent(world, "alice", TokenType.SMS)
    step = PasswordStep(name="alice", client="127.0.0.1", channel=challenge_channel(),
                        password=PW)  # fmt: skip
    first = await world.auth.login(step, world.directory.check_password)
    assert first.ok and first.needs_otp and first.challenge.startswith("Code sent by SMS")
    wrong = PasswordStep(name="alice", client="127.0.0.1", channel=challenge_channel(),
                         password="nope")  # fmt: skip
    world.clock.advance(60)
    assert not (await world.auth.login(wrong, world.directory.check_password)).ok
    assert len(sender.sent) == 1
    second = await world.auth.login(code_only("alice", sender.last))
    assert second.ok


@pytest_twisted.ensureDeferred
async def test_append_mode_password_alone_challenges_on_a_challenge_channel(sending) -> None:
    world, sender = sending
    await enroll_sent(world, "alice")
    plain = await world.auth.login(appended("alice", PW), world.directory.check_password)
    assert not plain.ok and not plain.challenge  # LDAP cannot challenge: no send
    request = appended("alice", PW, front_end="radius")
    request = type(request)(name="alice", client="127.0.0.1", channel=challenge_channel(),
                            typed=PW)  # fmt: skip
    asked = await world.auth.login(request, world.directory.check_password)
    assert not asked.ok and asked.challenge and len(sender.sent) == 1
    with_code = type(request)(name="alice", client="127.0.0.1", channel=challenge_channel(),
                              typed=PW + "," + sender.last)  # fmt: skip
    assert (await world.auth.login(with_code, world.directory.check_password)).ok


@pytest_twisted.ensureDeferred
async def test_a_retransmitted_request_sends_once_even_on_another_gateway(sending) -> None:
    world, sender = sending
    await enroll_sent(world, "alice")
    other = world.other_gateway()
    other.auth = Authenticator(
        auth_settings(world.config), other.store, world.clock, other.auth.audit, None, sender
    )
    identity = b"\x01" * 32
    request = type(appended("alice", PW))(
        name="alice", client="127.0.0.1", channel=challenge_channel(), typed=PW,
        retransmission=identity,
    )  # fmt: skip
    first = await world.auth.login(request, world.directory.check_password)
    again = await other.auth.login(request, other.directory.check_password)
    assert first.challenge and again.challenge and len(sender.sent) == 1
    assert again.sent is not None and again.sent.outcome == "repeat"


@pytest_twisted.ensureDeferred
async def test_two_gateways_racing_send_one_code(sending) -> None:
    world, sender = sending
    await enroll_sent(world, "alice")
    other = world.other_gateway()
    other.auth = Authenticator(
        auth_settings(world.config), other.store, world.clock, other.auth.audit, None, sender
    )
    results = await defer.gatherResults([
        defer.ensureDeferred(world.login("alice", PW + ",email")),
        defer.ensureDeferred(other.login("alice", PW + ",email")),
    ])  # fmt: skip
    outcomes = sorted(r.sent.outcome for r in results if r.sent is not None)
    assert outcomes == ["repeat", "sent"] and len(sender.sent) == 1


@pytest_twisted.ensureDeferred
async def test_send_code_request_the_portal_uses(sending) -> None:
    world, sender = sending
    await enroll_sent(world, "alice", TokenType.SMS)
    channel = Channel("web")
    wrong = SendCode(name="alice", client="127.0.0.1", channel=channel, password="x")
    assert not (await world.auth.login(wrong, world.directory.check_password)).challenge
    first = SendCode(name="alice", client="127.0.0.1", channel=channel, password=PW)
    assert (await world.auth.login(first, world.directory.check_password)).challenge
    world.clock.advance(31)
    resend = SendCode(name="alice", client="127.0.0.1", channel=channel)  # step one checked it
    assert (await world.auth.login(resend)).challenge
    assert len(sender.sent) == 2
    empty = SendCode(name="alice", client="127.0.0.1", channel=channel, password="")
    assert "empty password" in (await world.auth.login(empty)).reason


@pytest_twisted.ensureDeferred
async def test_audit_has_the_send_but_never_the_code(sending) -> None:
    world, sender = sending
    events: list[dict[str, Any]] = []
    world.auth.audit.observers.append(events.append)
    await enroll_sent(world, "alice")
    await world.login("alice", PW + ",email")
    event = events[-1]
    assert event["outcome"] == "challenge" and event["send"]["outcome"] == "sent"
    assert sender.last not in repr(event)


def test_plan_send_refuses_without_a_key_and_keeps_sends_bounded() -> None:
    token, secret = new_sent_token(TokenType.SMS, "mobile", 6, now=0)
    from otpgate.auth.config import CodeRules

    state = OtpState((token,), {}, UsedState())
    assert not plan_send(state, token, None, "123456", 100, CodeRules()).result.ok
    state = OtpState((token,), {token.id: secret}, UsedState(sends=tuple(range(0, 90))))
    change = plan_send(state, token, None, "123456", 5000, CodeRules())
    assert change.result.ok and change.used is not None and change.used.sends == (5000,)
    use = change.used.use_of(token.id)
    assert use.code == code_digest(secret.key, 5000, "123456")


def test_enrollment_proof_three_tries() -> None:
    token, secret = new_sent_token(TokenType.EMAIL, "mail", 8, now=0)
    proof, code = EnrollmentProof.start(token, secret, 100.0, 300)
    assert len(code) == 8 and code not in repr(proof)
    assert not proof.check("00000000", 101) and not proof.check("1", 101)
    assert proof.check(code, 102)
    for _ in range(3):
        proof.check("x", 103)
    assert proof.void and not proof.check(code, 104)
    late, code = EnrollmentProof.start(token, secret, 100.0, 300)
    assert not late.check(code, 401)


def test_attribute_choice_and_numbers() -> None:
    values = {"telephoneNumber": [b"+4930123456"]}
    sms = ["mobile", "telephoneNumber"]
    assert choose_attribute(TokenType.SMS, "mail", sms, values) == "telephoneNumber"
    assert choose_attribute(TokenType.EMAIL, "mail", sms, {}) == "mail"
    with pytest.raises(PolicyError):
        choose_attribute(TokenType.SMS, "mail", sms, {})
    assert phone_number([b"+49 (151) 123-45.89"], "mobile", ["+49"]) == "+491511234589"
    for bad in ([b"+491511234589", b"+491700000000"], [], [b"0151 1234589"],
                [b"+491511234589,+4412345678"]):  # fmt: skip
        with pytest.raises(NoDestination):
            phone_number(bad, "mobile", ["+49"])
    with pytest.raises(NoDestination, match="outside"):
        phone_number([b"+8821234567890"], "mobile", ["+49"])


def test_token_and_use_round_trip() -> None:
    token, _ = new_sent_token(TokenType.SMS, "mobile", 7, "phone", now=5)
    assert Token.from_dict(token.to_dict()) == token
    with pytest.raises(ValueError, match="digits"):
        Token(id="t", type=TokenType.SMS, created=0, digits=5, attribute="mobile")
    with pytest.raises(ValueError, match="attribute"):
        Token(id="t", type=TokenType.EMAIL, created=0, attribute="mail,x")
    used = UsedState(sends=(1, 2))
    assert UsedState.from_dict(used.to_dict()) == used
    with pytest.raises(ValueError):
        UsedState.from_dict({"v": 1, "u": {}, "sn": list(range(101))})


@pytest_twisted.ensureDeferred
async def test_a_changed_destination_gets_no_code() -> None:
    """On AD every user may write her own mobile: a number changed after enrollment (with a
    phished password) is refused before any gateway is asked."""
    gateway = {"url": "http://127.0.0.1:9/x", "body": {"to": "{to}", "text": "{code}"}}
    cfg = config(delivery={**DELIVERY, "sms_http": [gateway], "sms_country_prefixes": ["+49"]})
    assert cfg.delivery is not None
    values = {"mobile": [b"+49 151 1234589"]}

    async def read(dn: str, attribute: str) -> list[bytes]:
        return values.get(attribute, [])

    sender = OutOfBandSender(None, cfg.delivery, "otpgate", read)
    token, secret = new_sent_token(TokenType.SMS, "mobile", 6, now=0)
    proof, _code = EnrollmentProof.start(token, secret, 0.0, 300)
    with pytest.raises(ValueError, match="never proven"):
        sent_enroll_change(OtpState(), token, secret)
    bound = replace(token, bound=destination_binding(secret.key, "+491511234589"))
    values["mobile"] = [b"+49 170 0000000"]  # the attacker's phone
    sent = await sender.send("uid=alice,dc=x", "alice", bound, secret, "123456")
    assert sent.outcome == "refused" and "enroll the token again" in sent.detail
    with pytest.raises(ValueError):
        proof.delivered(sent)


@pytest_twisted.ensureDeferred
async def test_a_token_without_an_enrolled_destination_is_never_sent_to(sending) -> None:
    world, sender = sending
    token, secret = new_sent_token(TokenType.EMAIL, "mail", 6, now=world.clock.seconds())
    change = sent_enroll_change(
        OtpState(), replace(token, bound=b"x" * 16), secret
    )  # what enrollment writes, then the binding is lost as if by an old writer
    assert change.tokens is not None
    user = await world.store.resolve("alice", fresh=True)
    await world.store.update(
        user,
        lambda s: type(change)(token, used=s.used, tokens=(token,), secrets={token.id: secret}),
    )
    result = await world.login("alice", PW + ",email")
    assert not result.ok and "no enrolled destination" in result.reason and sender.sent == []


@pytest_twisted.ensureDeferred
async def test_no_usable_destination_writes_and_counts_nothing(sending) -> None:
    world, sender = sending
    token = await enroll_sent(world, "alice")
    sender.refuse = Sent("email", "", "refused", detail="2 mail values")
    for _ in range(3):
        result = await world.login("alice", PW + ",email")
        assert not result.ok and "2 mail values" in result.reason and not result.challenge
    user = await world.store.resolve("alice", fresh=True)
    used = world.store.decode(user).used
    assert used.sends == () and used.use_of(token.id).code == b""
    sender.refuse = None
    assert (await world.login("alice", PW + ",email")).challenge  # no cooldown was spent


@pytest_twisted.ensureDeferred
async def test_only_a_message_that_goes_out_takes_the_gateways_budget(sending) -> None:
    """One user asking again and again (answered with the code already sent) must not spend
    the budget every other user needs; a send refused for the budget counts for nobody."""
    world, sender = sending
    world.directory.add_user("bob", PW)
    await enroll_sent(world, "alice")
    bob = await enroll_sent(world, "bob")
    sender.budget = 1
    assert (await world.login("alice", PW + ",email")).challenge
    for _ in range(20):
        again = await world.login("alice", PW + ",email")
        assert again.sent is not None and again.sent.outcome == "repeat"
    refused = await world.login("bob", PW + ",email")
    assert not refused.ok and "budget" in refused.reason and len(sender.sent) == 1
    used = world.store.decode(await world.store.resolve("bob", fresh=True)).used
    assert used.sends == () and used.use_of(bob.id).code == b""
    sender.budget = 1
    assert (await world.login("bob", PW + ",email")).challenge  # no cooldown was spent


@pytest_twisted.ensureDeferred
async def test_wrong_passwords_on_a_send_path_count_towards_lockout(sending) -> None:
    """"guess,email" answers differently for a right password: each wrong one counts."""
    world, sender = sending
    await enroll_sent(world, "alice")
    for _ in range(world.config.lockout.max_failures):
        assert not (await world.login("alice", f"guess{_},email")).ok
    locked = await world.login("alice", PW + ",email")
    assert not locked.ok and "locked out" in locked.reason and sender.sent == []


@pytest_twisted.ensureDeferred
async def test_a_sent_code_is_withdrawn_after_three_wrong_codes() -> None:
    world, sender = sending_world(
        config(delivery=dict(DELIVERY), otp={"otp_delimiter": ","}, lockout={"max_failures": 50})
    )
    world.directory.add_user("alice", PW)
    token = await enroll_sent(world, "alice")
    await world.login("alice", PW + ",email")
    code = sender.last
    wrong = "000000" if code != "000000" else "111111"
    for _ in range(3):
        assert not (await world.login("alice", PW + "," + wrong)).ok
    assert not (await world.login("alice", PW + "," + code)).ok  # withdrawn
    use = world.store.decode(await world.store.resolve("alice", fresh=True)).used.use_of(token.id)
    assert use.code == b"" and use.misses == 3


def test_a_replication_conflict_never_brings_back_a_withdrawn_code() -> None:
    from otpgate.directory.state import _order
    from otpgate.tokens import TokenUse

    outstanding_use = TokenUse(last=5, sent=9, code=b"c" * 16)
    withdrawn = TokenUse(last=5, sent=9, code=b"")
    assert _order(withdrawn) > _order(outstanding_use)
    spent = TokenUse(last=9, sent=9, code=b"c" * 16)
    newer = TokenUse(last=5, sent=12, code=b"d" * 16)
    assert _order(spent) > _order(outstanding_use) and _order(newer) > _order(withdrawn)


@pytest_twisted.ensureDeferred
async def test_the_message_names_the_entry_never_the_name_typed(sending) -> None:
    """``{user}`` in an SMS body: the entry's own name, not attacker-chosen text."""
    world, sender = sending
    await enroll_sent(world, "alice")
    dn = "uid=alice,ou=people,dc=x"
    assert (await world.login(dn.upper().replace("UID=ALICE", "uid=alice"), PW + ",email")).challenge
    assert sender.users == ["alice"]
    from otpgate.dn import first_rdn_value

    assert first_rdn_value("CN=Smith\\, Alice,OU=People,DC=x") == "Smith, Alice"
    assert first_rdn_value("not a dn") == ""
