"""Suspended tokens and users, and the lost-device temporary list, in the pure verification
and the one pipeline, on an in-memory directory and ``twisted.internet.task.Clock``:
codes of a suspended token are refused (reason "suspended", no guess, nothing spent), a
suspension with an end date ends by itself, a user with no working factor is refused
before the password, proofs and sends skip suspended tokens, the temporary list expires
("expired"); the stored form round-trips and a tampered one is refused.

The same through the LDAP proxy, the CLI and the help desk on slapd and Samba AD:
tests/integration/test_suspend.py."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import pytest_twisted

from otpgate.admin.manage import scratch_change
from otpgate.admin.suspend import (
    DAY,
    MAX_SUSPEND_DAYS,
    MAX_TEMPORARY_DAYS,
    BadEndDate,
    end_date,
    lost_change,
    resume_change,
    suspend_change,
)
from otpgate.auth.decide import low_scratch_claim, verify_typed
from otpgate.auth.oob import only_sent_codes, plan_send
from otpgate.auth.suspension import refusal, status
from otpgate.auth.verify import Match, candidate_codes, verify_code
from otpgate.config import auth_settings
from otpgate.directory.records import OtpState, StateChange
from otpgate.errors import CodecError, NoSuchToken, PolicyError, TamperedState
from otpgate.otp.oath import hotp, totp
from otpgate.otp.scratch import generate_scratch_list
from otpgate.tokens import Secret, Suspension, Token, TokenType, TokenUse, UsedState
from otpgate.web import render, render_suspend
from otpgate.web.metrics import reason_class
from tests.logins import appended, code_only, password_step, proof
from tests.unit.test_pipeline import PW, START, World, config
from tests.unit.test_sent_codes import enroll_sent, sending_world


@pytest.fixture(params=["user", "container"])
def world(request: pytest.FixtureRequest) -> World:
    w = World(config(request.param))
    w.directory.add_user("alice", PW)
    return w


def audited(world: World) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    world.auth.audit.observers.append(events.append)
    return events


async def change(world: World, name: str, fn: Any) -> Any:
    user = await world.store.resolve(name, fresh=True)
    result, _user = await world.store.update(user, fn)
    return result


async def state_of(world: World, name: str) -> OtpState:
    return world.store.decode(await world.store.resolve(name, fresh=True))


async def suspend(world: World, ref: str | None, until: int = 0) -> None:
    now = world.clock.seconds()
    await change(world, "alice", lambda s: suspend_change(s, ref, until, now))


async def resume(world: World, ref: str | None) -> None:
    now = world.clock.seconds()
    await change(world, "alice", lambda s: resume_change(s, ref, now))


async def token_ids(world: World) -> list[str]:
    return [t.id for t in (await state_of(world, "alice")).tokens]


# -- one token suspended -----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_suspended_tokens_right_code_is_refused_uncounted_and_unspent(world) -> None:
    key = await world.oath("alice")
    scratch_codes, scratch = generate_scratch_list(3, 8)
    await change(world, "alice", lambda s: scratch_change(s, scratch, START))
    hotp_id = next(t.id for t in (await state_of(world, "alice")).tokens if t.type.value == "hotp")
    await suspend(world, hotp_id)
    events = audited(world)
    for _ in range(world.config.lockout.max_failures + 2):  # right codes: never a guess
        refused = await world.login("alice", PW + hotp(key, 0))
        assert not refused.ok and "suspended" in refused.reason, refused
    assert "suspended" in events[-1]["reason"] and events[-1]["outcome"] == "reject"
    used = (await state_of(world, "alice")).used
    assert used.failures == 0 and used.use_of(hotp_id).last == -1  # not counted, not spent
    # The other token still works while this one is suspended; a wrong code still counts.
    assert (await world.login("alice", PW + scratch_codes[0])).ok
    wrong = await world.login("alice", PW + "000000")
    assert not wrong.ok and wrong.reason.startswith("wrong OTP")
    await resume(world, hotp_id)
    assert (await world.login("alice", PW + hotp(key, 0))).ok  # the refused code was not spent


@pytest_twisted.ensureDeferred
async def test_a_suspension_with_an_end_date_ends_by_itself(world) -> None:
    key = await world.oath("alice", TokenType.TOTP)
    [token] = await token_ids(world)
    await suspend(world, token, int(world.clock.seconds()) + 3600)
    refused = await world.login("alice", PW + totp(key, world.clock.seconds()))
    assert not refused.ok and refused.reason == "every token suspended"
    world.clock.advance(3599)
    assert not (await world.login("alice", PW + totp(key, world.clock.seconds()))).ok
    world.clock.advance(1)  # the pipeline's clock, not the wall clock
    assert (await world.login("alice", PW + totp(key, world.clock.seconds()))).ok


@pytest_twisted.ensureDeferred
async def test_no_working_factor_is_refused_before_the_password(world) -> None:
    key = await world.oath("alice")
    await suspend(world, None)
    binds: list[str] = []
    check = world.directory.check_password

    async def counting(dn: str, password: bytes) -> Any:
        binds.append(dn)
        return await check(dn, password)

    for request in (
        password_step("alice", PW),
        code_only("alice", hotp(key, 0)),
    ):
        result = await world.auth.login(request, counting)
        assert not result.ok and result.reason.endswith(
            "OTP suspended for the user (until resumed)"
        ), result
    appended_result = await world.auth.login(appended("alice", PW + hotp(key, 0)), counting)
    assert not appended_result.ok and "suspended" in appended_result.reason
    assert binds == []  # no password oracle for a user with no working factor
    # A token enrolled while the user is suspended is suspended too.
    key2 = await world.oath("alice", TokenType.TOTP)
    assert not (await world.login("alice", PW + totp(key2, world.clock.seconds()))).ok
    await resume(world, None)
    assert (await world.login("alice", PW + hotp(key, 0))).ok


@pytest_twisted.ensureDeferred
async def test_a_cached_entry_never_outlives_a_suspension_or_a_resume(world) -> None:
    """Gateway B holds alice's entry in its cache from before the suspension written through
    gateway A: the suspension is in the value B's compare-and-swap is made on, so B decides
    again on the fresh state. After a resume through A, B's cached refusal is read again."""
    key = await world.oath("alice")
    other = world.other_gateway()
    assert (await other.login("alice", PW + hotp(key, 0))).ok  # B caches alice
    await suspend(world, None)
    refused = await other.login("alice", PW + hotp(key, 1))
    assert not refused.ok and "suspended" in refused.reason
    await resume(world, None)
    assert (await other.login("alice", PW + hotp(key, 1))).ok


@pytest_twisted.ensureDeferred
async def test_proofs_skip_suspended_tokens(world) -> None:
    key = await world.oath("alice")
    [token] = await token_ids(world)
    await suspend(world, token, int(world.clock.seconds()) + 600)
    wanted = hotp(key, 1)
    seen: list[str] = []

    def check(code: str) -> str | None:
        seen.append(code)
        return "ok" if code == wanted else None

    result = await world.auth.login(proof("alice", "chap", check))
    assert not result.ok and "suspended" in result.reason and seen == []  # prologue refusal
    assert (await state_of(world, "alice")).used.failures == 0
    world.clock.advance(600)
    assert (await world.auth.login(proof("alice", "chap", check))).ok
    # With a working token left, a proof of the suspended one's code is refused in the
    # decision itself ("suspended"), tried after every usable code, and is no guess.
    other = await world.oath("alice", TokenType.TOTP)
    await suspend(world, token)
    wanted = hotp(key, 2)
    seen.clear()
    result = await world.auth.login(proof("alice", "chap", check))
    assert not result.ok and result.reason == f"proof: OTP of a suspended token ({token})"
    assert totp(other, world.clock.seconds()) in seen
    assert (await state_of(world, "alice")).used.failures == 0


def test_candidates_and_verification_skip_suspended_tokens_pure() -> None:
    """The pure functions with two tokens, one suspended: its codes are not candidates and
    not matches; the prologue-level refusal stays None (a working factor is left)."""
    otp = config().otp
    keys = (b"k" * 20, b"j" * 20)
    tokens = tuple(
        Token(id=f"t{i}", type=TokenType.HOTP, created=0) for i in range(2)
    )
    secrets = {f"t{i}": Secret(keys[i]) for i in range(2)}
    used = UsedState(suspensions={"t0": Suspension(100, 0)})
    state = OtpState(tokens, secrets, used)
    assert refusal(state, 200) is None
    codes = {c.code for c in candidate_codes(tokens, secrets, used, 200, otp)}
    assert hotp(keys[1], 0) in codes and hotp(keys[0], 0) not in codes
    assert verify_code(tokens, secrets, used, hotp(keys[0], 0), 200, otp) is None
    assert verify_code(tokens, secrets, used, hotp(keys[1], 0), 200, otp) is not None
    verdict = verify_typed(state, ("pw", hotp(keys[0], 0)), 200, auth_settings(config()))
    assert verdict.result.match is None and verdict.result.why == "OTP of a suspended token (t0)"
    assert not verdict.writes
    assert status(used, tokens[0], 200) == "suspended until resumed"
    assert status(used, tokens[1], 200) == "active"
    ended = UsedState(suspensions={"t0": Suspension(100, 150)})
    assert verify_code(tokens, secrets, ended, hotp(keys[0], 0), 200, otp) is not None


# -- codes sent by e-mail/SMS ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_suspended_sms_token_gets_no_code() -> None:
    world, sender = sending_world()
    world.directory.add_user("alice", PW, mobile=["+49 151 1234589"])
    sms = await enroll_sent(world, "alice", TokenType.SMS)
    mail = await enroll_sent(world, "alice", TokenType.EMAIL)
    await suspend(world, sms.id)
    asked = await world.login("alice", PW + ",sms")
    assert not asked.ok and sender.sent == [], asked  # the trigger names no usable token
    state = await state_of(world, "alice")
    rules = world.auth.settings.codes
    assert rules is not None
    plan = plan_send(state, sms, None, "123456", world.clock.seconds(), rules)
    assert not plan.result.ok and "suspended" in plan.result.why and not plan.writes
    assert only_sent_codes(state, world.clock.seconds())  # the e-mail token is left
    asked = await world.login("alice", PW + ",email")
    assert asked.challenge and sender.sent[-1][1] == "email"
    assert (await world.login("alice", PW + "," + sender.last)).ok
    await suspend(world, mail.id)
    asked = await world.login("alice", PW + ",email")
    assert not asked.ok and "suspended" in asked.reason and len(sender.sent) == 1


# -- the lost device and its temporary list ----------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_lost_device_temporary_list_works_then_expires(world) -> None:
    key = await world.oath("alice")
    [lost] = await token_ids(world)
    codes, scratch = generate_scratch_list(5, 8)
    now = world.clock.seconds()
    until = int(now) + 3 * DAY
    done = await change(world, "alice", lambda s: lost_change(s, None, scratch, until, now))
    assert done.lost.id == lost and done.temporary.expires == until
    assert (await world.login("alice", PW + codes[0])).ok
    refused = await world.login("alice", PW + hotp(key, 0))
    assert not refused.ok and "suspended" in refused.reason
    events = audited(world)
    world.clock.advance(3 * DAY)
    expired = await world.login("alice", PW + codes[1])
    assert not expired.ok and expired.reason == "every token suspended or expired"
    assert "expired" in events[-1]["reason"]
    # The device's suspension stays until resumed; a right code of the expired list while
    # another token works is refused as "expired", and is no guess.
    await resume(world, lost)
    late = await world.login("alice", PW + codes[2])
    assert not late.ok and "expired" in late.reason and "temporary list" in late.reason
    assert (await state_of(world, "alice")).used.failures == 0
    assert (await world.login("alice", PW + hotp(key, 0))).ok
    assert reason_class(late.reason) == "suspended"


@pytest_twisted.ensureDeferred
async def test_a_second_lost_list_replaces_the_first_and_a_new_scratch_list_keeps_it(
    world,
) -> None:
    await world.oath("alice")
    now = world.clock.seconds()
    first, first_list = generate_scratch_list(3, 8)
    second, second_list = generate_scratch_list(3, 8)
    done1 = await change(
        world, "alice", lambda s: lost_change(s, None, first_list, int(now) + DAY, now)
    )
    done2 = await change(
        world, "alice", lambda s: lost_change(s, None, second_list, int(now) + DAY, now)
    )
    assert done2.replaced == (done1.temporary.id,)
    assert not (await world.login("alice", PW + first[0])).ok
    printed, printed_list = generate_scratch_list(3, 8)
    await change(world, "alice", lambda s: scratch_change(s, printed_list, now))
    assert (await world.login("alice", PW + second[0])).ok  # the temporary list stays
    assert (await world.login("alice", PW + printed[0])).ok
    state = await state_of(world, "alice")
    with pytest.raises(NoSuchToken):  # a temporary list is no device to report lost
        lost_change(state, done2.temporary.id, second_list, int(now) + DAY, now)


def test_a_temporary_list_claims_no_low_codes_warning() -> None:
    _codes, scratch = generate_scratch_list(3, 8)
    kept = Token(id="s1", type=TokenType.SCRATCH, created=0, scratch=scratch)
    temporary = replace(kept, expires=START + DAY)
    assert low_scratch_claim(Match(kept, TokenUse(), 2), 10)
    assert not low_scratch_claim(Match(temporary, TokenUse(), 2), 10)


# -- admin changes and end dates ---------------------------------------------------------------


def test_end_dates() -> None:
    now = 1_700_000_000.0
    assert end_date(None, None, now, MAX_SUSPEND_DAYS) == 0
    assert end_date(None, 2, now, MAX_SUSPEND_DAYS) == int(now) + 2 * DAY
    assert end_date("2024-01-01T12:00:00+02:00", None, now, 9) == 1704103200
    assert end_date("2024-01-01T10:00:00Z", None, now, 9) == 1704103200
    for bad_until, bad_days in (
        ("2024-01-01T10:00:00", None),  # no offset
        ("2024-01-01", None),
        ("next tuesday", None),
        ("2020-01-01T00:00:00Z", None),  # the past
        (None, 0),
        (None, MAX_TEMPORARY_DAYS + 1),
        ("2024-01-01T10:00:00Z", 3),  # both
    ):
        with pytest.raises(BadEndDate):
            end_date(bad_until, bad_days, now, MAX_TEMPORARY_DAYS)


def test_resume_says_what_is_not_suspended() -> None:
    token = Token(id="t1", type=TokenType.HOTP, created=0)
    state = OtpState((token,), {"t1": Secret(b"k" * 20)}, UsedState())
    with pytest.raises(PolicyError, match="not suspended"):
        resume_change(state, None, 10)
    with pytest.raises(PolicyError, match="token t1 is not suspended"):
        resume_change(state, "t1", 10)
    one = suspend_change(state, "t1", 0, 10).used
    assert one is not None
    with pytest.raises(PolicyError, match="suspended tokens: t1"):
        resume_change(replace(state, used=one), None, 10)
    with pytest.raises(BadEndDate):
        suspend_change(state, "t1", 5, 10)
    # An ended suspension is dropped by the next change.
    short = suspend_change(state, None, 20, 10).used
    assert short is not None and short.suspension == Suspension(10, 20)
    after = suspend_change(replace(state, used=short), "t1", 0, 30).used
    assert after is not None and after.suspension is None


# -- the stored form ---------------------------------------------------------------------------


def test_suspensions_and_expiry_round_trip() -> None:
    used = UsedState(
        tokens={"t1": TokenUse(3)},
        suspension=Suspension(5, 0),
        suspensions={"t1": Suspension(7, 99)},
    )
    assert UsedState.from_dict(used.to_dict()) == used
    assert UsedState.from_dict(UsedState().to_dict()) == UsedState()
    _codes, scratch = generate_scratch_list(2, 8)
    token = Token(id="s1", type=TokenType.SCRATCH, created=1, scratch=scratch, expires=50)
    assert Token.from_dict(token.to_dict()) == token
    assert used.without({"t1"}).suspensions == {}
    for bad in ([1], [1, -2], ["1", 2], [True, 2], {"since": 1}):
        with pytest.raises(ValueError):
            UsedState.from_dict({**used.to_dict(), "ss": bad})
    with pytest.raises(ValueError):
        Token.from_dict({**token.to_dict(), "expires": "soon"})


@pytest_twisted.ensureDeferred
async def test_a_tampered_suspension_is_refused_as_any_tampered_state(world) -> None:
    """The suspension is inside the authenticated use-state envelope: changing a byte of the
    stored value, or storing a plain use state without it, makes the state undecodable (no
    login); a suspension of a token that is not stored is refused as tampered."""
    key = await world.oath("alice")
    [token] = await token_ids(world)
    await suspend(world, token)
    user = await world.store.resolve("alice", fresh=True)
    key_dn, name = user.state_dn.lower(), world.config.directory.used.spec.name.lower()
    [stored] = world.directory.entries[key_dn][1][name]

    def put(value: bytes) -> None:
        world.directory.entries[key_dn][1][name] = [value]
        world.store.cache.drop(user)

    flipped = bytearray(stored)
    flipped[len(flipped) // 2] ^= 0x01
    for forged in (bytes(flipped), b'{"u":{},"v":1}', b'{"u":{},"v":1,"f":0}'):
        put(forged)
        result = await world.login("alice", PW + hotp(key, 0))
        assert not result.ok, result
        with pytest.raises((CodecError, TamperedState)):
            await state_of(world, "alice")
    put(stored)
    state = await state_of(world, "alice")
    orphan = replace(state.used, suspensions={**state.used.suspensions, "gone": Suspension(1)})
    await change(world, "alice", lambda s: StateChange(None, used=orphan))
    with pytest.raises(TamperedState):
        await state_of(world, "alice")


@pytest_twisted.ensureDeferred
async def test_two_use_values_keep_a_suspension_of_either(world) -> None:
    """A use state merged from two values (one from before the suspension written back
    beside the current one, or replication) keeps the suspension: fail closed."""
    key = await world.oath("alice")
    user = await world.store.resolve("alice", fresh=True)
    key_dn, name = user.state_dn.lower(), world.config.directory.used.spec.name.lower()
    before = list(world.directory.entries[key_dn][1][name])
    await suspend(world, None, int(world.clock.seconds()) + 600)
    after = list(world.directory.entries[key_dn][1][name])
    world.directory.entries[key_dn][1][name] = before + after
    world.store.cache.drop(user)
    refused = await world.login("alice", PW + hotp(key, 0))
    assert not refused.ok and "suspended" in refused.reason


# -- what people see ---------------------------------------------------------------------------


def test_the_portal_shows_suspensions_and_escapes() -> None:
    _codes, scratch = generate_scratch_list(2, 8)
    tokens = (
        Token(id="t1", type=TokenType.HOTP, created=0, label="<b>phone</b>"),
        Token(id="s1", type=TokenType.SCRATCH, created=0, scratch=scratch, expires=1000),
    )
    used = UsedState(suspensions={"t1": Suspension(10, 500)})
    state = OtpState(tokens, {"t1": Secret(b"k" * 20)}, used)
    html = render.devices_table(state, "csrf", "/revoke", now=100)
    assert "suspended until 1970-01-01T00:08:20Z" in html and "<b>phone" not in html
    assert "temporary list, works until" in html
    actions = render_suspend.device_actions("uid=a,dc=x", state, "csrf", 100)
    assert 'id="hd-resume-t1"' in actions["t1"].html and "hd-lost" not in actions["s1"].html
    assert 'id="hd-lost-t1"' not in actions["t1"].html  # suspended: resume first
    block = render_suspend.user_suspension_block("uid=a,dc=x", state, "csrf", 100)
    assert 'id="hd-suspend-all"' in block.html
    whole = replace(state, used=replace(used, suspension=Suspension(10, 0)))
    block = render_suspend.user_suspension_block("uid=a,dc=x", whole, "csrf", 100)
    assert "until resumed" in block.html and 'id="hd-resume-all"' in block.html
    read_only = render_suspend.user_suspension_block("uid=a,dc=x", whole, "csrf", 100, True)
    assert "hd-resume-all" not in read_only.html
    page = render.helpdesk_user(
        "uid=a,dc=x", whole, "csrf", 100, False, suspension=block,
        row_actions=render_suspend.device_actions("uid=a,dc=x", whole, "csrf", 100),
    )  # fmt: skip
    assert 'id="suspension"' in page.html and 'id="hd-resume-t1"' in page.html
