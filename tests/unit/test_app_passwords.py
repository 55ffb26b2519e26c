"""App passwords in the one pipeline (in memory, ``twisted.internet.task.Clock``): scope by
listener, NAS and network, end dates, revocation seen at once, a lockout of their own,
nothing bound upstream, and what is stored (no clear copy)."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted

from otpgate.admin.apppasswords import create_change, listing, revoke_change, scope_for
from otpgate.admin.manage import unlock_change
from otpgate.apppass import FORM, SECRET_BITS, looks_like_app_password
from otpgate.auth.requests import Appended, Channel, PasswordStep
from otpgate.errors import PolicyError, TamperedState
from otpgate.otp.oath import hotp
from otpgate.tokens import AppUse
from tests.unit.test_pipeline import PW, START, World, config

MAIL = "tcp:10389:interface=127.0.0.1"
VPN = "tcp:20389:interface=127.0.0.1"
OTHER = "tcp:30389:interface=127.0.0.1"
LISTEN = [MAIL, VPN, OTHER]
DAY = 86400.0


def world(**app_passwords: Any) -> World:
    places = {"listeners": [MAIL, VPN], "nas": ["wifi"], **app_passwords}
    cfg = config(
        ldap_proxy={"listen": LISTEN},
        radius={"clients": [{"name": "wifi", "address": "192.0.2.0/24", "secret": "s" * 16}]},
        app_passwords=places,
    )
    w = World(cfg)
    w.events: list[dict[str, Any]] = []  # type: ignore[misc]
    w.auth.audit.observers.append(w.events.append)
    w.directory.add_user("alice", PW)
    return w


def ldap(where: str, enforce: bool = True) -> Channel:
    return Channel("ldap", name=where, where=where, enforce=enforce)


async def create(w: World, name: str = "mail", **scope: Any) -> str:
    chosen = scope_for(w.config.app_passwords, **{"listeners": [MAIL], **scope}, now=START)
    limit = w.config.app_passwords.max_per_user
    secret, change = create_change(name, chosen, w.clock.seconds(), limit)
    user = await w.store.resolve("alice", fresh=True)
    await w.store.update(user, change)
    return secret


def never_bound(*_args: Any) -> Any:
    raise AssertionError("an app-password login binds nothing upstream")


async def login(w: World, secret: str, channel: Channel, client: str = "192.0.2.7",
                check: Any = never_bound) -> Any:
    request = Appended(name="alice", typed=secret, client=client, channel=channel)
    return await w.auth.login(request, check)


def test_the_form_and_the_entropy() -> None:
    from otpgate.apppass import generate

    secret = generate()
    assert SECRET_BITS >= 128 and FORM.fullmatch(secret) and looks_like_app_password(secret)
    assert not looks_like_app_password(PW + "123456")
    assert not looks_like_app_password(secret.replace("-", ""))  # the dashes tell it apart


@pytest_twisted.ensureDeferred
async def test_accepted_in_scope_only_and_nothing_bound() -> None:
    w = world()
    secret = await create(w)
    ok = await login(w, secret, ldap(MAIL))
    assert ok.ok and ok.reason == "app password 'mail' accepted"
    event = w.events[-1]
    assert event["policy"] == "app password" and event["token"] == ok.token_id
    assert (await login(w, secret.upper(), ldap(MAIL))).ok  # typed in capitals
    for where in (VPN, OTHER):  # taken by the gateway, but not in this one's scope; not taken
        out = await login(w, secret, ldap(where))
        assert not out.ok and out.reason == "app password 'mail' out of scope"
    user = await w.store.resolve("alice", fresh=True)
    assert w.store.decode(user).used.app_failures == 0  # out of scope is no guess
    rows = listing(w.store.decode(user), w.clock.seconds())
    assert rows[0]["last_where"] == MAIL and rows[0]["last_from"] == "192.0.2.7"


@pytest_twisted.ensureDeferred
async def test_radius_scope_by_nas_and_ldap_scope_by_network_and_no_challenge() -> None:
    w = world()
    secret = await create(w, "phone", listeners=[], nas=["wifi"])
    wifi = Channel("radius", name="wifi", where="wifi")
    step = PasswordStep(name="alice", password=secret, client="192.0.2.7", channel=wifi)
    done = await w.auth.login(step, never_bound)
    assert done.ok and not done.needs_otp  # no Access-Challenge: the app password is all
    assert not (await login(w, secret, ldap(MAIL))).ok
    mail = await create(w, "mail", networks=["192.0.2.0/28"])
    assert (await login(w, mail, ldap(MAIL), client="192.0.2.7")).ok
    assert not (await login(w, mail, ldap(MAIL), client="192.0.2.99")).ok
    # A RADIUS request comes from the NAS, not the device: no network for a NAS scope.
    with pytest.raises(PolicyError, match="LDAP listeners only"):
        scope_for(w.config.app_passwords, nas=["wifi"], networks=["192.0.2.0/28"])


@pytest_twisted.ensureDeferred
async def test_the_end_date_and_a_revocation_hold_at_once_on_every_gateway() -> None:
    w = world()
    secret = await create(w, expires="2023-11-15")  # START is 2023-11-14 22:13 UTC
    other = w.other_gateway()
    assert (await login(other, secret, ldap(MAIL))).ok
    w.clock.advance(DAY * 2)
    gone = await login(w, secret, ldap(MAIL))
    assert not gone.ok and gone.reason == "app password 'mail' expired"
    second = await create(w, "second")
    assert (await login(other, second, ldap(MAIL))).ok  # the other gateway has it cached
    user = await w.store.resolve("alice", fresh=True)
    await w.store.update(user, lambda s: revoke_change(s, "second"))
    refused = await login(other, second, ldap(MAIL))
    assert not refused.ok and refused.reason == "wrong app password"


@pytest_twisted.ensureDeferred
async def test_a_lockout_of_their_own_that_leaves_the_codes_working() -> None:
    w = world()
    secret = await create(w)
    key = await w.oath("alice")
    wrong = "aaaa-bbbb-cccc-dddd-eeee-ffff-gggg"
    for _ in range(w.config.lockout.max_failures):
        assert not (await login(w, wrong, ldap(MAIL))).ok
    assert w.events[-1]["reason"] == "wrong app password (now locked out)"
    locked = await login(w, secret, ldap(MAIL))
    assert not locked.ok and locked.reason == "app passwords locked out"
    otp = await login(w, PW + hotp(key, 0), ldap(MAIL), check=w.directory.check_password)
    assert otp.ok, otp  # the codes are not locked
    user = await w.store.resolve("alice", fresh=True)
    await w.store.update(user, unlock_change)  # the help desk's unlock clears both
    assert (await login(w, secret, ldap(MAIL))).ok


@pytest_twisted.ensureDeferred
async def test_without_app_passwords_or_with_the_feature_off_the_secret_is_what_it_was() -> None:
    w = world()
    key = await w.oath("alice")
    lookalike = "abcd-efgh-ijkl-mnop-qrst-uvwx-yz23"
    refused = await login(w, lookalike, ldap(MAIL), check=w.directory.check_password)
    assert not refused.ok and "app password" not in refused.reason  # a password + code
    assert key
    off = World(config(ldap_proxy={"listen": LISTEN}))
    off.directory.add_user("alice", PW)
    scope = scope_for(world().config.app_passwords, listeners=[MAIL], now=START)
    secret, change = create_change("mail", scope, START, 5)
    await off.store.update(await off.store.resolve("alice", fresh=True), change)
    stays = await off.auth.login(
        Appended(name="alice", typed=secret, client="192.0.2.7", channel=ldap(MAIL)),
        off.directory.check_password,
    )
    assert not stays.ok and "app password" not in stays.reason


@pytest_twisted.ensureDeferred
async def test_suspension_expiry_and_report_only() -> None:
    from otpgate.admin.suspend import suspend_change

    w = world()
    secret = await create(w)
    assert (await login(w, secret, ldap(MAIL, enforce=False))).ok  # checked as anywhere
    wrong = await login(w, "aaaa-bbbb-cccc-dddd-eeee-ffff-gggg", ldap(MAIL, enforce=False))
    assert not wrong.ok
    user = await w.store.resolve("alice", fresh=True)
    await w.store.update(user, lambda s: suspend_change(s, None, 0, START))
    held = await login(w, secret, ldap(MAIL))
    assert not held.ok and held.reason.startswith("suspended for the user")


@pytest_twisted.ensureDeferred
async def test_stored_without_a_clear_copy_and_limits() -> None:
    w = world(max_per_user=2)
    secret = await create(w)
    user = await w.store.resolve("alice", fresh=True)
    raw = b"".join(user.tokens) + (user.seed or b"") + b"".join(user.used)
    assert secret.encode() not in raw and secret.replace("-", "").encode() not in raw
    await create(w, "two")
    with pytest.raises(PolicyError, match="maximum is 2"):
        await create(w, "three")
    with pytest.raises(PolicyError, match="does not take app passwords"):
        scope_for(w.config.app_passwords, listeners=[OTHER])
    with pytest.raises(PolicyError, match="at least one"):
        scope_for(w.config.app_passwords)


@pytest_twisted.ensureDeferred
async def test_records_without_their_key_are_refused() -> None:
    import dataclasses

    w = world()
    await create(w)
    user = await w.store.resolve("alice", fresh=True)
    state = w.store.decode(user)
    # The seed written back from before the first app password: records, no key.
    mapper = w.store.mapper
    doc = {"v": 1, "s": {}}
    old_seed = mapper.seed_codec.encode(doc, user.entry_id, user.dn)
    stale = dataclasses.replace(user, seed=old_seed, decoded=None)
    with pytest.raises(TamperedState, match="without their key"):
        mapper.decode(stale)
    assert state.apps


@pytest_twisted.ensureDeferred
async def test_an_account_gone_from_the_directory_is_refused_once_the_cache_has_aged() -> None:
    """No bind is made, so a disabled account (on AD: no longer a user, the profile's filter)
    is seen through the entry: from the cache for at most state_cache_seconds, like every
    login that binds nothing (CHAP, otp-only), then refused."""
    w = world()
    secret = await create(w)
    assert (await login(w, secret, ldap(MAIL))).ok  # the entry is cached now
    dn = (await w.store.resolve("alice", fresh=True)).dn
    w.directory.entries.pop(dn.lower())  # disabled: no longer found as a user
    w.clock.advance(w.config.directory.state_cache_seconds + 1)
    gone = await login(w, secret, ldap(MAIL))
    assert not gone.ok and "UserNotFound" in gone.reason, gone


@pytest_twisted.ensureDeferred
async def test_created_on_another_gateway_is_never_bound_upstream_as_a_password() -> None:
    """This gateway's cached entry predates the app password: it reads again rather than take
    the secret for a password + code (which would be bound upstream)."""
    w = world()
    key = await w.oath("alice")
    assert (await login(w, PW + hotp(key, 0), ldap(MAIL), check=w.directory.check_password)).ok
    other = w.other_gateway()
    scope = scope_for(w.config.app_passwords, listeners=[MAIL], now=START)
    secret, change = create_change("mail", scope, START, 5)
    await other.store.update(await other.store.resolve("alice", fresh=True), change)
    assert (await login(w, secret, ldap(MAIL))).ok  # never_bound: nothing went upstream


# -- what the attacks found -------------------------------------------------------------------


async def portal_create(w: World, name: str, by: str) -> str:
    scope = scope_for(w.config.app_passwords, listeners=[MAIL], now=START)
    secret, change = create_change(name, scope, w.clock.seconds(), 5, by=by)
    await w.store.update(await w.store.resolve("alice", fresh=True), change)
    return secret


@pytest_twisted.ensureDeferred
async def test_a_thiefs_app_password_goes_with_the_lost_phone() -> None:
    """A thief with the phone and a phished password signs in to the portal and makes an app
    password: the help desk's suspension of the phone holds it, declaring the phone lost or
    revoking it removes it; one made with the CLI stays."""
    from otpgate.admin.manage import revoke_change as revoke_token
    from otpgate.admin.suspend import lost_change, suspend_change
    from otpgate.otp.scratch import generate_scratch_list

    w = world()
    await w.oath("alice")
    phone = w.store.decode(await w.store.resolve("alice", fresh=True)).tokens[0].id
    thiefs = await portal_create(w, "thief", by=phone)
    cli = await create(w, "cli")
    assert (await login(w, thiefs, ldap(MAIL))).ok
    user = await w.store.resolve("alice", fresh=True)
    await w.store.update(user, lambda s: suspend_change(s, phone, 0, START))
    held = await login(w, thiefs, ldap(MAIL))
    assert not held.ok and held.reason == f"app password 'thief' suspended with token {phone}"
    _codes, scratch = generate_scratch_list(5, 8)
    user = await w.store.resolve("alice", fresh=True)
    lost, _user = await w.store.update(
        user, lambda s: lost_change(s, phone, scratch, int(START + DAY), START))
    state = w.store.decode(await w.store.resolve("alice", fresh=True))
    assert [a.name for a in state.apps] == ["cli"] and len(lost.apps) == 1
    assert not (await login(w, thiefs, ldap(MAIL))).ok
    assert (await login(w, cli, ldap(MAIL))).ok
    again = await portal_create(w, "again", by=state.tokens[0].id)
    user = await w.store.resolve("alice", fresh=True)
    await w.store.update(user, lambda s: revoke_token(s, state.tokens[0].id))
    assert not (await login(w, again, ldap(MAIL))).ok


@pytest_twisted.ensureDeferred
async def test_a_session_opened_with_an_emailed_code_makes_no_app_password() -> None:
    from otpgate.tokens import Token, TokenType

    w = world()
    mail = Token(id="m1", type=TokenType.EMAIL, created=0, attribute="mail", bound=b"x" * 32)
    await w.enroll("alice", mail, None)
    with pytest.raises(PolicyError, match="sent by e-mail"):
        await portal_create(w, "imap", by="m1")


@pytest_twisted.ensureDeferred
async def test_misses_where_no_app_password_works_lock_nothing() -> None:
    """Anyone who knows a name could otherwise lock her app passwords from any listener."""
    w = world()
    secret = await create(w)
    wrong = "aaaa-bbbb-cccc-dddd-eeee-ffff-gggg"
    for _ in range(w.config.lockout.max_failures * 2):
        miss = await login(w, wrong, ldap(OTHER))
        assert not miss.ok and miss.reason == "wrong app password (not taken here)"
    assert (await login(w, secret, ldap(MAIL))).ok


@pytest_twisted.ensureDeferred
async def test_a_disabled_account_refuses_its_app_passwords_whatever_the_user_filter() -> None:
    w = world()
    secret = await create(w)
    dn = (await w.store.resolve("alice", fresh=True)).dn
    w.directory.entries[dn.lower()][1]["pwdaccountlockedtime"] = [b"000001010000Z"]
    w.clock.advance(w.config.directory.state_cache_seconds + 1)
    locked = await login(w, secret, ldap(MAIL))
    assert not locked.ok and locked.reason == "account disabled"


@pytest_twisted.ensureDeferred
async def test_two_merged_use_values_naming_a_revoked_app_password_are_no_tampering() -> None:
    """A revocation raced with a login on another provider: the merged use state names the
    revoked one; the user's logins go on (its last use is dropped)."""
    import dataclasses

    w = world()
    await create(w, "one")
    await create(w, "two")
    user = await w.store.resolve("alice", fresh=True)
    before = user.used
    await w.store.update(user, lambda s: revoke_change(s, "one"))
    after = await w.store.resolve("alice", fresh=True)
    state = w.store.decode(after)
    with_use = dataclasses.replace(
        state.used, apps={"x" * 8: AppUse(1, "", "")})
    mapper = w.store.mapper
    extra = mapper.used_codec.encode(with_use.to_dict(), after.entry_id, after.dn)
    merged = dataclasses.replace(after, used=(*after.used, extra), decoded=None)
    assert [a.name for a in mapper.decode(merged).apps] == ["two"]
    single = dataclasses.replace(after, used=(extra,), decoded=None)
    with pytest.raises(TamperedState):
        mapper.decode(single)
    assert before


def test_a_listener_that_takes_app_passwords_in_clear_is_refused() -> None:
    from otpgate.errors import ConfigError

    plain = "tcp:10389:interface=0.0.0.0"
    with pytest.raises(ConfigError, match="in clear"):
        config(ldap_proxy={"listen": [plain], "require_tls_for_binds": False},
               app_passwords={"listeners": [plain]})
    loop = "tcp:10389:interface=127.0.0.1"
    config(ldap_proxy={"listen": [loop], "require_tls_for_binds": False},
           app_passwords={"listeners": [loop]})


@pytest_twisted.ensureDeferred
async def test_an_app_password_ends_with_its_token_whatever_route_removed_it() -> None:
    """Signed in with a scratch code, an app password is made; printing a new list replaces
    the old one (not a revocation): the app password ends with it all the same, and a reset
    afterwards clears it."""
    from otpgate.admin.manage import reset_change, scratch_change
    from otpgate.otp.scratch import generate_scratch_list

    w = world()
    _codes, first = generate_scratch_list(5, 8)
    user = await w.store.resolve("alice", fresh=True)
    await w.store.update(user, lambda s: scratch_change(s, first, START))
    old_list = w.store.decode(await w.store.resolve("alice", fresh=True)).tokens[0].id
    thiefs = await portal_create(w, "thief", by=old_list)
    assert (await login(w, thiefs, ldap(MAIL))).ok
    _codes, second = generate_scratch_list(5, 8)
    user = await w.store.resolve("alice", fresh=True)
    await w.store.update(user, lambda s: scratch_change(s, second, START))
    gone = await login(w, thiefs, ldap(MAIL))
    assert not gone.ok and gone.reason == f"app password 'thief' ended with token {old_list}"
    user = await w.store.resolve("alice", fresh=True)
    await w.store.update(user, reset_change)
    assert not w.store.decode(await w.store.resolve("alice", fresh=True)).apps


@pytest_twisted.ensureDeferred
async def test_a_wrong_app_password_whose_write_was_cut_still_counts() -> None:
    """Someone who cuts exactly the failure writes (they can tell them apart on the wire)
    still meets the app-password lockout on this gateway."""
    w = world()
    await create(w)
    wrong = "aaaa-bbbb-cccc-dddd-eeee-ffff-gggg"
    w.directory.cut = lambda op: type(op).__name__ == "Modify"
    cut = await login(w, wrong, ldap(MAIL))
    assert not cut.ok and cut.unavailable
    w.directory.cut = None
    for _ in range(w.config.lockout.max_failures - 2):
        assert (await login(w, wrong, ldap(MAIL))).reason == "wrong app password"
    last = await login(w, wrong, ldap(MAIL))
    assert last.reason == "wrong app password (now locked out)", last


@pytest_twisted.ensureDeferred
async def test_cut_failure_writes_up_to_the_limit_lock_before_the_match() -> None:
    """As for codes: once the wrong app passwords this gateway could not write reach the
    limit, the next login is locked out, even with the right app password."""
    w = world()
    secret = await create(w)
    wrong = "aaaa-bbbb-cccc-dddd-eeee-ffff-gggg"
    w.directory.cut = lambda op: type(op).__name__ == "Modify"
    for _ in range(w.config.lockout.max_failures):
        assert (await login(w, wrong, ldap(MAIL))).unavailable
    w.directory.cut = None
    locked = await login(w, secret, ldap(MAIL))
    assert not locked.ok and locked.reason == "app passwords locked out", locked
