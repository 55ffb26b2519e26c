"""Per-channel access rules and the PIN, on the in-memory directory: the policy step (allow,
deny, unreadable groups, fresh reads), the stored PIN (digest, seed, tamper checks), PIN +
code in otp-only mode and in proofs, lockout counting, ``require_pin``, and the config.

The same with real clients (radclient, radtest, ldapwhoami) against slapd and Samba AD:
tests/integration/test_radius_access_pin.py."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import pytest_twisted

from otpgate.admin.manage import reset_change
from otpgate.admin.pin import PinRefused, clear_pin_change, set_pin_change, valid_pin
from otpgate.admin.rekey import rewrite_all
from otpgate.auth.policy import channel_refusal
from otpgate.auth.requests import Appended, Channel, CodeOnly, Proof, Sasl
from otpgate.config import membership_groups
from otpgate.errors import ConfigError, TamperedState
from otpgate.otp.oath import hotp
from otpgate.pin import NO_PIN, PinRecord, PinVerifier, check_pin, consistent, new_pin, pin_matches
from tests.unit.test_pipeline import PW, World, config

VPN = "cn=VPN-Users,ou=groups,dc=x"
CONTRACTORS = "cn=Contractors,ou=groups,dc=x"
PIN = "4711"


def nas(name: str = "vpn", **rules: Any) -> Channel:
    """A RADIUS NAS in otp-only mode (the PIN goes before the code)."""
    return Channel("radius", name=name, pin=True, **rules)


def chap_nas(name: str = "vpn", **rules: Any) -> Channel:
    return Channel("radius-chap", name=name, proofs=frozenset({"chap"}), pin=True, **rules)


def otp_only(world: World, name: str, typed: str, channel: Channel) -> Any:
    return world.auth.login(CodeOnly(name=name, client="192.0.2.1", channel=channel, code=typed))


def appended_on(world: World, name: str, typed: str, channel: Channel, **kw: Any) -> Any:
    request = Appended(name=name, client="192.0.2.1", channel=channel, typed=typed, **kw)
    return world.auth.login(request, world.directory.check_password)


def chap(world: World, name: str, wanted: str, channel: Channel) -> Any:
    """A proof that matches exactly ``wanted`` (what the user typed into the NAS)."""
    seen: list[str] = []

    def check(candidate: str) -> str | None:
        seen.append(candidate)
        return "ok" if candidate == wanted else None

    request = Proof(name=name, client="192.0.2.1", channel=channel, kind="chap", check=check)
    return world.auth.login(request)


async def set_pin(world: World, name: str, pin: str = PIN) -> None:
    user = await world.store.resolve(name, fresh=True)
    await world.store.update(user, lambda s: set_pin_change(s, pin, world.clock.seconds()))


def rules_world(**policy: Any) -> World:
    cfg = config(
        radius={
            "clients": [
                {"address": "192.0.2.0/24", "secret": "s" * 16, "mode": "otp-only",
                 "allow_groups": [VPN], "deny_groups": [CONTRACTORS]},
            ]
        },
        **({"policy": policy} if policy else {}),
    )
    w = World(cfg)
    return w


# -- the policy step (pure) --------------------------------------------------------------------


def test_channel_refusal_allow_deny_and_unreadable_groups() -> None:
    open_nas = Channel("radius", name="open")
    assert channel_refusal(open_nas, ()) is None
    only = Channel("radius", name="vpn", allow_groups=(VPN,))
    assert channel_refusal(only, (VPN.upper().replace(",", ", "),)) is None  # DNs by RDN
    refused = channel_refusal(only, ("cn=other,dc=x",))
    assert refused == f"not allowed on NAS vpn: not a member of {VPN}"
    both = Channel("radius", name="vpn", allow_groups=(VPN,), deny_groups=(CONTRACTORS,))
    assert channel_refusal(both, (VPN, CONTRACTORS)) == (
        f"not allowed on NAS vpn: member of {CONTRACTORS}"  # deny wins over allow
    )
    # A group whose membership cannot be read refuses either way (fail closed).
    assert "cannot be read" in (channel_refusal(both, (VPN,), (CONTRACTORS,)) or "")
    assert "cannot be read" in (channel_refusal(only, (VPN,), (VPN,)) or "")
    listener = Channel("ldap", name="ssl:10636", deny_groups=(CONTRACTORS,))
    assert channel_refusal(listener, (CONTRACTORS,)) == (
        f"not allowed on listener ssl:10636: member of {CONTRACTORS}"
    )


def test_the_store_resolves_every_rule_group() -> None:
    cfg = config(
        radius={"clients": [{"address": "192.0.2.1", "secret": "s" * 16,
                             "allow_groups": [VPN], "deny_groups": [CONTRACTORS]}]},
        ldap_proxy={"listen": ["tcp:10389:interface=127.0.0.1"],
                    "listener_rules": {"tcp:10389:interface=127.0.0.1": {
                        "allow_groups": ["cn=app,dc=x"]}}},
        policy={"admin_groups": ["cn=admins,dc=x"]},
    )
    groups, cautious = membership_groups(cfg)
    assert {VPN, CONTRACTORS, "cn=app,dc=x", "cn=admins,dc=x"} <= set(groups)
    assert VPN not in cautious and CONTRACTORS not in cautious  # rules use unknown_groups


# -- the policy step in the pipeline -----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_user_outside_the_allowed_group_is_refused_before_her_code_is_looked_at() -> None:
    w = rules_world()
    carol = w.directory.add_user("carol", PW)  # in no group
    w.directory.add_group(VPN, [])
    w.directory.add_group(CONTRACTORS, [])
    key = await w.oath("carol")
    restricted = nas(allow_groups=(VPN,), deny_groups=(CONTRACTORS,))
    refused = await otp_only(w, "carol", hotp(key, 0), restricted)
    assert not refused.ok and refused.reason == f"not allowed on NAS vpn: not a member of {VPN}"
    before = await w.store.resolve("carol", fresh=True)
    assert w.store.decode(before).used.failures == 0  # nothing counted, nothing spent
    # The same code works on another NAS: it was never spent.
    assert (await otp_only(w, "carol", hotp(key, 0), nas("other"))).ok
    assert carol


@pytest_twisted.ensureDeferred
async def test_deny_wins_and_membership_is_read_fresh_for_a_refusal() -> None:
    w = rules_world()
    dave = w.directory.add_user("dave", PW)
    w.directory.add_group(VPN, [dave])
    w.directory.add_group(CONTRACTORS, [dave])
    key = await w.oath("dave")
    restricted = nas(allow_groups=(VPN,), deny_groups=(CONTRACTORS,))
    refused = await otp_only(w, "dave", hotp(key, 0), restricted)
    assert not refused.ok and refused.reason.endswith(f"member of {CONTRACTORS}")
    # Removed from Contractors; the entry cached a moment ago still lists it: the refusal
    # is decided on a fresh read, so the change counts at once.
    assert (await w.store.resolve("dave")).from_cache
    w.directory.add_group(CONTRACTORS, [])
    assert (await otp_only(w, "dave", hotp(key, 0), restricted)).ok


@pytest_twisted.ensureDeferred
async def test_unreadable_rule_groups_refuse() -> None:
    w = rules_world()
    erin = w.directory.add_user("erin", PW)
    w.directory.add_group(VPN, [erin])
    key = await w.oath("erin")
    # CONTRACTORS does not exist: its membership cannot be read; a deny rule refuses.
    refused = await otp_only(w, "erin", hotp(key, 0), nas(deny_groups=(CONTRACTORS,)))
    assert not refused.ok and "cannot be read" in refused.reason
    assert (await otp_only(w, "erin", hotp(key, 0), nas(allow_groups=(VPN,)))).ok
    del w.directory.entries[VPN.lower()]
    w2 = World(w.config, w.directory)
    refused = await otp_only(w2, "erin", hotp(key, 1), nas(allow_groups=(VPN,)))
    assert not refused.ok and "cannot be read" in refused.reason


@pytest_twisted.ensureDeferred
async def test_listener_rules_apply_to_exempt_accounts_and_sasl() -> None:
    app = "cn=app-users,ou=groups,dc=x"
    cfg = config(
        policy={"exempt_dns": ["uid=svc,ou=people,dc=x", "uid=ghost,ou=people,dc=x"],
                "allow_sasl_for_exempt": True},
        ldap_proxy={"listen": ["tcp:10389:interface=127.0.0.1"],
                    "listener_rules": {"tcp:10389:interface=127.0.0.1": {"allow_groups": [app]}}},
    )
    w = World(cfg)
    svc = w.directory.add_user("svc", "svc-pw")
    w.directory.add_user("other-svc", "svc-pw")
    w.directory.add_group(app, [svc])
    listener = Channel("ldap", name="tcp:10389", allow_groups=(app,))
    # An exempt DN is looked up on a restricted listener: a member binds with its password...
    assert (await appended_on(w, "uid=svc,ou=people,dc=x", "svc-pw", listener)).ok
    # ... an exempt DN with no entry cannot be checked: refused (fail closed).
    ghost = await appended_on(w, "uid=ghost,ou=people,dc=x", "whatever", listener)
    assert not ghost.ok and "UserNotFound" in ghost.reason
    # On an open listener the exempt DN still binds without a lookup.
    assert not (await appended_on(w, "uid=ghost,ou=people,dc=x", "x", Channel("ldap"))).ok

    forwarded: list[str] = []

    def sasl(name: str) -> Sasl:
        async def forward() -> int:
            forwarded.append(name)
            return 0

        async def who() -> tuple[int, bytes]:
            return 0, b"dn:" + name.encode()

        return Sasl(name=name, client="192.0.2.1", channel=listener, mechanism="EXTERNAL",
                    forward=forward, who_am_i=who)

    assert (await w.auth.login(sasl("uid=svc,ou=people,dc=x"))).ok
    refused = await w.auth.login(sasl("uid=ghost,ou=people,dc=x"))
    assert not refused.ok and "UserNotFound" in refused.reason
    assert forwarded == ["uid=svc,ou=people,dc=x"]  # a refused SASL bind is never forwarded


@pytest_twisted.ensureDeferred
async def test_the_bind_cache_never_skips_another_listeners_rules() -> None:
    app = "cn=app-users,ou=groups,dc=x"
    w = World(config(ldap_proxy={
        "bind_cache_seconds": 5, "listen": ["tcp:10389:interface=127.0.0.1"],
        "listener_rules": {"tcp:10389:interface=127.0.0.1": {"allow_groups": [app]}}}))
    w.directory.add_user("frank", PW)
    w.directory.add_group(app, [])
    key = await w.oath("frank")
    typed = PW + hotp(key, 0)
    open_listener = Channel("ldap", name="tcp:389")
    assert (await appended_on(w, "frank", typed, open_listener, rebind=True)).ok
    assert (await appended_on(w, "frank", typed, open_listener, rebind=True)).ok  # the cache
    restricted = Channel("ldap", name="tcp:10389", allow_groups=(app,))
    refused = await appended_on(w, "frank", typed, restricted, rebind=True)
    assert not refused.ok and "not allowed on listener tcp:10389" in refused.reason


# -- the stored PIN ----------------------------------------------------------------------------


def test_pin_digest_and_records() -> None:
    record, verifier = new_pin(PIN, 100.0)
    assert pin_matches(record, verifier, PIN)
    assert not pin_matches(record, verifier, "4712") and not pin_matches(None, verifier, PIN)
    assert consistent(record, verifier) and consistent(None, None)
    other, other_verifier = new_pin(PIN, 200.0)
    assert other.key != record.key and other_verifier.digest != verifier.digest  # a new key
    assert not consistent(record, other_verifier) and not consistent(None, verifier)
    assert PIN not in repr(record) and PIN not in repr(verifier)
    assert PinRecord.from_dict(record.to_dict()) == record
    assert PinVerifier.from_dict(verifier.to_dict()) == verifier
    for bad in ({"p": "12a4", "k": record.to_dict()["k"]}, {"p": PIN, "k": "AAAA"}, []):
        with pytest.raises(ValueError):
            PinRecord.from_dict(bad)
    for good in ("0412", "1234567890123456"):
        assert check_pin(good) == good
    for bad_pin in ("123", "12345678901234567", "12 34", "١٢٣٤", "0000", "12a4", ""):
        with pytest.raises(ValueError):
            check_pin(bad_pin)
    with pytest.raises(PinRefused, match="differ"):
        valid_pin("4711", "4712")


@pytest_twisted.ensureDeferred
async def test_the_pin_lives_in_the_seed_and_its_digest_in_the_use_state() -> None:
    w = World(config())
    w.directory.add_user("gina", PW)
    await w.oath("gina")
    await set_pin(w, "gina")
    user = await w.store.resolve("gina", fresh=True)
    state = w.store.decode(user)
    assert state.pin is not None and state.pin.pin == PIN and state.used.pin is not None
    listing = w.store.mapper.decode(replace(user, decoded=None), with_secrets=False)
    assert listing.pin is None and listing.used.pin is not None  # no seed decrypted
    # Rekey (every part written again) and a reset of the tokens keep the PIN.
    await w.store.update(user, rewrite_all)
    user = await w.store.resolve("gina", fresh=True)
    await w.store.update(user, reset_change)
    user = await w.store.resolve("gina", fresh=True)
    state = w.store.decode(user)
    assert not state.tokens and state.pin is not None and user.seed is not None
    had, user = await w.store.update(user, clear_pin_change)
    state = w.store.decode(await w.store.resolve("gina", fresh=True))
    assert had and state.pin is None and state.used.pin is None
    assert NO_PIN.pin == ""


@pytest_twisted.ensureDeferred
async def test_a_seed_from_before_the_pin_is_refused_as_tampered() -> None:
    """Attack (a layout where the user can write her own state): write back the seed from
    before the PIN was set, keeping the new use state: the two no longer belong together."""
    w = World(config())
    w.directory.add_user("hana", PW)
    key = await w.oath("hana")
    seed_name = w.config.directory.seed.spec.name.lower()
    dn = (await w.store.resolve("hana", fresh=True)).dn
    old_seed = w.directory.entries[dn.lower()][1][seed_name]
    await set_pin(w, "hana")
    w.directory.entries[dn.lower()][1][seed_name] = old_seed
    with pytest.raises(TamperedState, match="PIN"):
        w.store.decode(await w.store.resolve("hana", fresh=True))
    refused = await otp_only(w, "hana", hotp(key, 0), nas())
    assert not refused.ok and "TamperedState" in refused.reason


# -- PIN + code where no password arrives -------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_otp_only_takes_pin_and_code_and_counts_a_wrong_pin_like_a_wrong_code() -> None:
    w = World(config(lockout={"max_failures": 3}))
    w.directory.add_user("ida", PW)
    key = await w.oath("ida")
    assert (await otp_only(w, "ida", hotp(key, 0), nas())).ok  # no PIN yet: the code alone
    await set_pin(w, "ida")
    alone = await otp_only(w, "ida", hotp(key, 1), nas())
    assert not alone.ok and alone.reason == "wrong PIN or OTP"  # a PIN is set: code alone fails
    wrong_pin = await otp_only(w, "ida", "9999" + hotp(key, 1), nas())
    assert not wrong_pin.ok and wrong_pin.reason == "wrong PIN or OTP"
    state = w.store.decode(await w.store.resolve("ida", fresh=True))
    assert state.used.failures == 2 and state.used.use_of(state.tokens[0].id).last == 0
    # The code that came with the wrong PIN was not spent: with the right PIN it works.
    assert (await otp_only(w, "ida", PIN + hotp(key, 1), nas())).ok
    replay = await otp_only(w, "ida", PIN + hotp(key, 1), nas())
    assert not replay.ok and replay.reason == "OTP already used"  # right PIN: no guess
    # A spent code after a wrong PIN is a guess at the PIN: it counts.
    guess = await otp_only(w, "ida", "1111" + hotp(key, 1), nas())
    assert not guess.ok and guess.reason == "wrong PIN or OTP"
    # The PIN applies only where no password arrives: append mode knows nothing of it.
    assert (await appended_on(w, "ida", PW + hotp(key, 2), Channel("radius"))).ok


@pytest_twisted.ensureDeferred
async def test_wrong_pins_lock_the_user_out() -> None:
    w = World(config(lockout={"max_failures": 3}))
    w.directory.add_user("jo", PW)
    key = await w.oath("jo")
    await set_pin(w, "jo")
    for pin in ("1111", "2222"):
        assert not (await otp_only(w, "jo", pin + hotp(key, 0), nas())).ok
    last = await otp_only(w, "jo", "3333" + hotp(key, 0), nas())
    assert last.reason == "wrong PIN or OTP (now locked out)"
    locked = await otp_only(w, "jo", PIN + hotp(key, 0), nas())
    assert not locked.ok and locked.reason == "locked out"


@pytest_twisted.ensureDeferred
async def test_proofs_cover_pin_and_code() -> None:
    w = World(config())
    w.directory.add_user("kim", PW)
    key = await w.oath("kim")
    await set_pin(w, "kim")
    alone = await chap(w, "kim", hotp(key, 0), chap_nas())
    assert not alone.ok and alone.reason == "no valid PIN+OTP matches the proof"
    wrong = await chap(w, "kim", "0815" + hotp(key, 0), chap_nas())
    assert not wrong.ok and wrong.reason == "no valid PIN+OTP matches the proof"
    state = w.store.decode(await w.store.resolve("kim", fresh=True))
    assert state.used.failures == 2
    assert (await chap(w, "kim", PIN + hotp(key, 0), chap_nas())).ok
    again = await chap(w, "kim", PIN + hotp(key, 0), chap_nas())
    assert not again.ok and again.reason == "proof of a PIN+OTP already used"
    # A channel that is no PIN channel (no such NAS today) would hash the code alone.
    plain = Channel("radius-chap", name="x", proofs=frozenset({"chap"}))
    assert (await chap(w, "kim", hotp(key, 1), plain)).ok


@pytest_twisted.ensureDeferred
async def test_require_pin_refuses_a_user_without_one_and_sees_a_new_pin_at_once() -> None:
    w = World(config())
    w.directory.add_user("lea", PW)
    key = await w.oath("lea")
    strict = nas(require_pin=True)
    assert (await otp_only(w, "lea", hotp(key, 0), nas())).ok  # cached now
    refused = await otp_only(w, "lea", hotp(key, 1), strict)
    assert not refused.ok and refused.reason == "no PIN set (NAS vpn requires one)"
    proof = await chap(w, "lea", hotp(key, 1), chap_nas(require_pin=True))
    assert not proof.ok and proof.reason.startswith("no PIN set")
    state = w.store.decode(await w.store.resolve("lea", fresh=True))
    assert state.used.failures == 0  # refused before any code was tried
    other = w.other_gateway()
    await set_pin(other, "lea")  # set elsewhere; this gateway's cache still shows none
    assert (await otp_only(w, "lea", PIN + hotp(key, 1), strict)).ok
    # Cleared elsewhere while this gateway's cached entry still has it: the decision on the
    # fresh state refuses as "no PIN", counting nothing (the code is no guess).
    cached = await other.store.resolve("lea", fresh=True)
    await other.store.update(cached, clear_pin_change)
    assert (await w.store.resolve("lea")).from_cache
    for login in (otp_only(w, "lea", PIN + hotp(key, 2), strict),
                  chap(w, "lea", PIN + hotp(key, 2), chap_nas(require_pin=True))):
        refused = await login
        assert not refused.ok and refused.reason == "no PIN set (NAS vpn requires one)"
    state = w.store.decode(await w.store.resolve("lea", fresh=True))
    assert state.used.failures == 0


@pytest_twisted.ensureDeferred
async def test_a_suspended_tokens_code_after_the_right_pin_is_no_guess() -> None:
    """As without a PIN: a right code of a suspended token is refused and not counted (the
    holder of a lost phone must not lock its owner out) -- but only after the right PIN;
    after a wrong one it is a guess at the PIN, and counts."""
    from otpgate.admin.suspend import suspend_change

    w = World(config())
    w.directory.add_user("max", PW)
    lost = await w.oath("max")
    await w.oath("max")  # a second device that still works
    await set_pin(w, "max")
    user = await w.store.resolve("max", fresh=True)
    first = w.store.decode(user).tokens[0].id
    now = w.clock.seconds()
    await w.store.update(user, lambda s: suspend_change(s, first, 0, now))
    refused = await otp_only(w, "max", PIN + hotp(lost, 0), nas())
    assert not refused.ok and "suspended token" in refused.reason
    assert w.store.decode(await w.store.resolve("max", fresh=True)).used.failures == 0
    guess = await otp_only(w, "max", "1212" + hotp(lost, 0), nas())
    assert not guess.ok and guess.reason == "wrong PIN or OTP"
    assert w.store.decode(await w.store.resolve("max", fresh=True)).used.failures == 1


# -- configuration ----------------------------------------------------------------------------


def test_radius_client_rules_and_require_pin_config() -> None:
    base = {"address": "192.0.2.1", "secret": "s" * 16}
    cfg = config(radius={"clients": [{**base, "mode": "otp-only", "allow_groups": [VPN],
                                      "deny_groups": [CONTRACTORS], "require_pin": True}]})
    client = cfg.radius.clients[0]
    assert client.allow_groups == (VPN,) and client.deny_groups == (CONTRACTORS,)
    assert client.require_pin and client.pin_logins
    with pytest.raises(ConfigError, match=r"radius.clients\[0\].require_pin"):
        config(radius={"clients": [{**base, "require_pin": True}]})  # append: a password
    config(radius={"clients": [{**base, "require_pin": True, "allow_mschapv2": True}]})
    with pytest.raises(ConfigError, match=r"radius.clients\[0\].allow_groups: 'VPN' is not a DN"):
        config(radius={"clients": [{**base, "allow_groups": ["VPN"]}]})


def test_listener_rules_config() -> None:
    listen = ["tcp:10389:interface=127.0.0.1", "tcp:10390:interface=127.0.0.1"]
    cfg = config(ldap_proxy={"listen": listen, "listener_rules": {
        listen[0]: {"name": "app", "allow_groups": [VPN]}}})
    rules = cfg.ldap_proxy.rules_for(listen[0])
    assert rules.name == "app" and rules.allow_groups == (VPN,)
    assert cfg.ldap_proxy.rules_for(listen[1]).allow_groups == ()  # the old form: no rules
    with pytest.raises(ConfigError, match=r"listener_rules.*tcp:1.*is not one of \[ldap_proxy\].listen"):
        config(ldap_proxy={"listen": listen, "listener_rules": {"tcp:1": {"allow_groups": [VPN]}}})
    with pytest.raises(ConfigError, match=r'listener_rules."tcp:10389:interface=127.0.0.1"\].deny'):
        config(ldap_proxy={"listen": listen, "listener_rules": {listen[0]: {"deny": [VPN]}}})
    with pytest.raises(ConfigError, match="give allow_groups, deny_groups or enforce"):
        config(ldap_proxy={"listen": listen, "listener_rules": {listen[0]: {"name": "x"}}})


def test_radius_channels_describe_the_nas() -> None:
    from types import SimpleNamespace

    from otpgate.radius.handler import AccessHandler

    base = {"secret": "s" * 16}
    cfg = config(radius={"clients": [
        {**base, "address": "192.0.2.1", "name": "vpn", "mode": "otp-only", "require_pin": True,
         "allow_groups": [VPN], "deny_groups": [CONTRACTORS]},
        {**base, "address": "192.0.2.2", "name": "wifi", "allow_chap": True},
        {**base, "address": "192.0.2.3", "name": "ssh", "mode": "challenge"},
    ]})
    gateway = SimpleNamespace(config=cfg, authenticator=None)
    handler = AccessHandler(gateway, None, None, None)  # type: ignore[arg-type]
    vpn, wifi, ssh = cfg.radius.clients
    channel = handler._channel(vpn)
    assert channel.name == "vpn" and channel.pin and channel.require_pin
    assert channel.allow_groups == (VPN,) and channel.deny_groups == (CONTRACTORS,)
    assert not handler._channel(wifi).pin  # append: a password arrives, no PIN
    assert handler._channel(wifi, "radius-chap").pin  # CHAP: the PIN goes before the code
    assert not handler._channel(ssh).pin  # challenge: step two follows a checked password


def test_pin_forms_in_the_portal() -> None:
    from otpgate.directory.records import OtpState
    from otpgate.tokens import UsedState
    from otpgate.web import render_pin

    none = render_pin.my_pin(OtpState(), 'c"s')
    assert 'action="/pin"' in none and 'id="clear-pin"' not in none
    assert 'id="pin-state">none<' in none and 'value="c&quot;s"' in none
    assert 'type="password"' in none and 'name="pin2"' in none
    _record, verifier = new_pin(PIN, 86400.0)
    with_pin = OtpState(used=UsedState(pin=verifier))
    mine = render_pin.my_pin(with_pin, "c")
    assert 'id="clear-pin"' in mine and "set 1970-01-02 00:00:00 UTC" in mine and PIN not in mine
    desk = render_pin.helpdesk_pin("uid=a,dc=x", with_pin, "c", protected=False).html
    assert 'action="/helpdesk/pin"' in desk and 'id="hd-pin-clear"' in desk
    assert 'name="user" value="uid=a,dc=x"' in desk
    protected = render_pin.helpdesk_pin("uid=a,dc=x", with_pin, "c", protected=True).html
    assert "/helpdesk/pin" not in protected and "set 1970" in protected


def test_metrics_reason_classes_of_the_new_refusals() -> None:
    from otpgate.web.metrics import reason_class

    assert reason_class(f"not allowed on NAS vpn: not a member of {VPN}") == "not_allowed"
    assert reason_class("SASL EXTERNAL: not allowed on listener app: member of x") == "not_allowed"
    assert reason_class("wrong PIN or OTP (now locked out)") == "wrong_otp"
    assert reason_class("no valid PIN+OTP matches the proof") == "wrong_otp"
    assert reason_class("proof of a PIN+OTP already used") == "replayed"
    assert reason_class("no PIN set (NAS vpn requires one)") == "no_pin"


@pytest_twisted.ensureDeferred
async def test_the_bind_cache_never_carries_a_bind_to_a_listener_with_other_rules() -> None:
    """Listener names are labels: one given twice, or equal to another listener's listen
    string, must not let a rebind accepted on an open listener skip a restricted one."""
    app = "cn=app-users,ou=groups,dc=x"
    w = World(config(ldap_proxy={"bind_cache_seconds": 5, "require_tls_for_binds": False}))
    w.directory.add_user("frank", PW)
    w.directory.add_group(app, [])
    key = await w.oath("frank")
    typed = PW + hotp(key, 0)
    open_listener = Channel("ldap", name="app")
    restricted = Channel("ldap", name="app", allow_groups=(app,))
    assert (await appended_on(w, "frank", typed, open_listener, rebind=True)).ok
    refused = await appended_on(w, "frank", typed, restricted, rebind=True)
    assert not refused.ok and refused.reason != "bind cache"
    again = await appended_on(w, "frank", typed, open_listener, rebind=True)
    assert again.ok and again.reason == "bind cache"
