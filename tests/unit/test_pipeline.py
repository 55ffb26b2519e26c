"""The one pipeline, in milliseconds: OpenLDAP's test080-hotp checklist, policy order,
lockout, TOTP drift, scratch and Yubico paths, the entry cache and fail-closed, on an
in-memory directory (``memdir.py``) and ``twisted.internet.task.Clock``.

The same cases run against slapd and Samba in tests/integration (test_proxy.py,
test_store.py, test_radius.py); these run the pipeline's own code with no server.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.task import Clock

from otpgate.admin.enrollment import enroll_change, new_oath_token
from otpgate.admin.manage import scratch_change
from otpgate.audit import AuditTrail
from otpgate.auth.pipeline import Authenticator
from otpgate.config import Config, auth_settings, parse_config
from otpgate.otp.oath import Algorithm, hotp, totp
from otpgate.otp.scratch import generate_scratch_list
from otpgate.otp.yubico import modhex_encode
from otpgate.tokens import Secret, Token, TokenType
from otpgate.vault import Keyring
from tests.logins import appended, code_only, password_step, proof, separate
from tests.unit.memdir import MemoryDirectory, MemoryStore

PW = "correct horse"
START = 1_700_000_000.0
KEYRING = Keyring({"k1": os.urandom(32)}, "k1")


def config(layout: str = "user", **sections: Any) -> Config:
    directory = {
        "profile": "openldap",
        "urls": ["ldap://127.0.0.1:1"],
        "base_dn": "dc=x",
        "bind_dn": "cn=svc,dc=x",
        "bind_password": "p",
        **sections.pop("directory", {}),
    }
    if layout == "container":
        directory["state_dn"] = "ou=state,dc=x"
    return parse_config(
        {"directory": directory, "vault": {"keyring": "unused"}, **sections}, Path("/")
    )


class World:
    """One gateway's pipeline over an in-memory directory, with its own clock."""

    def __init__(self, cfg: Config, directory: MemoryDirectory | None = None) -> None:
        self.config = cfg
        self.clock = Clock()
        self.clock.advance(START)
        self.directory = directory or MemoryDirectory()
        self.store = MemoryStore(cfg, KEYRING, self.directory, self.clock)
        self.auth = Authenticator(
            auth_settings(cfg), self.store, self.clock, AuditTrail(cfg.logging, self.clock)
        )

    def other_gateway(self) -> World:
        """A second gateway on the same directory (its own entry cache)."""
        other = World(self.config, self.directory)
        other.clock = self.clock
        other.store.clock = self.clock
        other.auth.clock = self.clock
        return other

    async def enroll(self, name: str, token: Token, secret: Secret | None) -> None:
        user = await self.store.resolve(name, fresh=True)
        secret = secret or Secret(b"")

        def change(state: Any) -> Any:
            if token.type is TokenType.SCRATCH:
                assert token.scratch is not None
                return scratch_change(state, token.scratch, self.clock.seconds())
            return enroll_change(state, token, secret, 5, replace_software=False)

        await self.store.update(user, change)

    async def oath(self, name: str, kind: TokenType = TokenType.HOTP, **otp: Any) -> bytes:
        token, secret = new_oath_token(replace(self.config.otp, **otp), kind, now=START)
        await self.enroll(name, token, secret)
        return secret.key

    async def login(self, name: str, secret: str, client: str = "192.0.2.7", **kw: Any) -> Any:
        if kw.pop("require_otp", False):  # the portal: password and code apart, code required
            request: Any = separate(name, secret, "", client, require_otp=True)
        else:
            request = appended(name, secret, client, **kw)
        return await self.auth.login(request, self.directory.check_password)


@pytest.fixture(params=["user", "container"])
def world(request: pytest.FixtureRequest) -> World:
    w = World(config(request.param))
    w.directory.add_user("alice", PW)
    return w


@pytest_twisted.ensureDeferred
async def test_test080_hotp_checklist(world: World) -> None:
    key = await world.oath("alice")
    assert not (await world.login("alice", PW + hotp(key, 12))).ok  # beyond look-ahead
    assert (await world.login("alice", PW + hotp(key, 3))).ok  # valid, skips 0..2
    assert not (await world.login("alice", PW + hotp(key, 3))).ok  # replay
    assert not (await world.login("alice", PW + hotp(key, 1))).ok  # skipped code: retired
    wrong_pw = await world.login("alice", "not-" + PW + hotp(key, 4))
    assert not wrong_pw.ok and wrong_pw.reason.startswith("wrong password")
    retry = await world.login("alice", PW + hotp(key, 4))  # that code is spent now ...
    assert not retry.ok and retry.reason == "OTP already used"  # ... and no guess
    assert (await world.login("alice", PW + hotp(key, 5))).ok
    assert not (await world.login("alice", PW)).ok  # the OTP is required
    assert not (await world.login("alice", hotp(key, 6))).ok  # no password: nothing forwarded


@pytest_twisted.ensureDeferred
async def test_sha512_eight_digits(world: World) -> None:
    key = await world.oath("alice", digits=8, algorithm=Algorithm.SHA512)
    code = hotp(key, 0, digits=8, algorithm=Algorithm.SHA512)
    assert (await world.login("alice", PW + code)).ok
    assert not (await world.login("alice", PW + code)).ok


@pytest_twisted.ensureDeferred
async def test_fail_closed_when_the_directory_is_down(world: World) -> None:
    key = await world.oath("alice")
    world.directory.down = True
    result = await world.login("alice", PW + hotp(key, 0))
    assert not result.ok and result.unavailable
    world.directory.down = False
    assert (await world.login("alice", PW + hotp(key, 0))).ok  # the code was never spent


@pytest_twisted.ensureDeferred
async def test_lockout_counts_guesses_not_replays_and_expires(world: World) -> None:
    key = await world.oath("alice")
    assert (await world.login("alice", PW + hotp(key, 0))).ok
    for _ in range(3):  # the spent code again: refused, but no guess
        assert not (await world.login("alice", PW + hotp(key, 0))).ok
    for _ in range(world.config.lockout.max_failures):
        assert not (await world.login("alice", PW + "000000")).ok
    locked = await world.login("alice", PW + hotp(key, 1))
    assert not locked.ok and locked.reason == "locked out"
    world.clock.advance(60 * world.config.lockout.duration_minutes + 1)
    assert (await world.login("alice", PW + hotp(key, 1))).ok


@pytest_twisted.ensureDeferred
async def test_totp_window_and_drift(world: World) -> None:
    key = await world.oath("alice", TokenType.TOTP)
    now = world.clock.seconds()
    assert not (await world.login("alice", PW + totp(key, now + 90))).ok  # 3 steps ahead
    assert (await world.login("alice", PW + totp(key, now + 30))).ok  # +1: drift learned
    world.clock.advance(60)
    # drift +1 learned: the window now centres one step ahead, so +2 is inside it
    assert (await world.login("alice", PW + totp(key, world.clock.seconds() + 60))).ok
    assert not (await world.login("alice", PW + totp(key, world.clock.seconds()))).ok  # older


@pytest_twisted.ensureDeferred
async def test_scratch_codes_are_single_use(world: World) -> None:
    codes, scratch = generate_scratch_list(5, 8)
    token = Token(id="s1", type=TokenType.SCRATCH, created=0, scratch=scratch)
    await world.enroll("alice", token, None)
    first = await world.login("alice", PW + codes[0])
    assert first.ok and first.scratch_remaining == 4
    assert not (await world.login("alice", PW + codes[0])).ok
    assert (await world.login("alice", PW + codes[4])).ok


def _yubico_otp(key: bytes, public_id: str, private_id: bytes, use: int, session: int) -> str:
    path = shutil.which("ykgenerate")
    assert path, "ykgenerate is required (apt-get install libyubikey-dev)"
    out = subprocess.run(
        [path, key.hex(), private_id.hex(), f"{use:04x}", "0001", "00", f"{session:02x}"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    return public_id + out


@pytest_twisted.ensureDeferred
async def test_yubico_counters_only_move_forward(world: World) -> None:
    key, private_id = os.urandom(16), os.urandom(6)
    public_id = modhex_encode(os.urandom(6))
    token = Token(id="y1", type=TokenType.YUBICO, created=0, public_id=public_id)
    await world.enroll("alice", token, Secret(key, private_id))
    otp_5_1 = _yubico_otp(key, public_id, private_id, 5, 1)
    assert (await world.login("alice", PW + otp_5_1)).ok
    replay = await world.login("alice", PW + otp_5_1)
    assert not replay.ok and replay.reason == "OTP already used"
    assert not (await world.login("alice", PW + _yubico_otp(key, public_id, private_id, 4, 9))).ok
    assert (await world.login("alice", PW + _yubico_otp(key, public_id, private_id, 5, 2))).ok


@pytest_twisted.ensureDeferred
async def test_policy_order() -> None:
    admins, vpn = "cn=admins,ou=groups,dc=x", "cn=vpn,ou=groups,dc=x"
    cfg = config(policy={
        "exempt_dns": ["uid=svc,ou=people,dc=x"],
        "trusted_networks": ["10.0.0.0/8"],
        "require_otp_groups": [vpn],
        "admin_groups": [admins],
    })
    w = World(cfg)
    w.directory.add_user("svc", "svc-pw")
    boss = w.directory.add_user("boss", PW, memberOf=[admins, vpn])
    vpnuser = w.directory.add_user("vpnuser", PW, memberOf=[vpn])
    w.directory.add_user("other", PW)
    w.directory.add_group(admins, [boss])
    w.directory.add_group(vpn, [boss, vpnuser])
    key = await w.oath("boss")
    await w.oath("vpnuser")
    # admins always need an OTP, even from a trusted network
    assert not (await w.login("boss", PW, client="10.1.2.3")).ok
    assert (await w.login("boss", PW + hotp(key, 0), client="10.1.2.3")).ok
    assert (await w.login("uid=svc,ou=people,dc=x", "svc-pw")).ok  # exempt: password alone
    assert (await w.login("vpnuser", PW, client="10.9.9.9")).ok  # trusted network
    assert not (await w.login("vpnuser", PW, client="192.0.2.1")).ok  # required group
    assert (await w.login("other", PW, client="192.0.2.1")).ok  # not in a required group
    # A front end that insists on a code (the portal) ignores the exemptions.
    refused = await w.login("other", PW, client="192.0.2.1", require_otp=True)
    assert not refused.ok and refused.reason == "no token enrolled"
    assert ipaddress.ip_address("10.1.2.3") in cfg.policy.trusted_networks[0]


@pytest_twisted.ensureDeferred
async def test_cached_entry_never_lets_a_spent_code_through(world: World) -> None:
    """Another gateway spends a code while this one holds the entry cached: this one still
    refuses it (the compare-and-swap fails on the stale value, the re-read sees it spent)."""
    key = await world.oath("alice")
    assert (await world.login("alice", PW + hotp(key, 0))).ok  # cached here now
    other = world.other_gateway()
    assert (await other.login("alice", PW + hotp(key, 1))).ok
    assert not (await world.login("alice", PW + hotp(key, 1))).ok
    assert world.store.write_pool.stats.cas_conflicts == 1  # the stale value lost the CAS
    assert (await world.login("alice", PW + hotp(key, 2))).ok


@pytest_twisted.ensureDeferred
async def test_challenge_first_factor_sees_a_fresh_enrollment(world: World) -> None:
    """RADIUS challenge mode: a user cached without a token, then enrolled by another
    gateway, gets the challenge (the prologue re-reads a cached entry with no token)."""
    other = world.other_gateway()
    first = await world.auth.login(
        password_step("alice", PW, "192.0.2.1"), world.directory.check_password
    )
    assert not first.ok and first.reason == "no token enrolled"  # and now cached
    key = await other.oath("alice")
    first = await world.auth.login(
        password_step("alice", PW, "192.0.2.1"), world.directory.check_password
    )
    assert first.ok and first.needs_otp, first
    second = await world.auth.login(code_only(first.dn or "", hotp(key, 0), "192.0.2.1"))
    assert second.ok


@pytest_twisted.ensureDeferred
async def test_proofs_try_every_code_of_the_window(world: World) -> None:
    key = await world.oath("alice")
    wanted = hotp(key, 2)
    seen: list[str] = []

    def check(code: str) -> str | None:
        seen.append(code)
        return "ok" if code == wanted else None

    result = await world.auth.login(proof("alice", "chap", check, "192.0.2.1"))
    assert result.ok and result.proof == "ok"
    assert len(seen) == world.config.otp.hotp_look_ahead + 1  # no early exit
    again = await world.auth.login(proof("alice", "chap", check, "192.0.2.1"))
    assert not again.ok and again.reason == "proof of an OTP already used"


def test_requests_never_show_their_secret() -> None:
    request = appended("alice", PW + "123456", "192.0.2.1")
    assert PW not in repr(request) and "123456" not in repr(request)


Check = Callable[[str, bytes], Any]


@pytest_twisted.ensureDeferred
async def test_otp_delimiter_splits_for_every_front_end() -> None:
    w = World(config(otp={"otp_delimiter": ","}))
    w.directory.add_user("alice", "pw,with,commas")
    key = await w.oath("alice")
    assert (await w.login("alice", "pw,with,commas," + hotp(key, 0))).ok
    assert not (await w.login("alice", "pw,with,commas" + hotp(key, 1))).ok  # no delimiter


@pytest_twisted.ensureDeferred
async def test_cutting_the_failure_writes_does_not_buy_guesses(world: World) -> None:
    """Attack: someone on the path to the directory tells a failure write from a success
    write by its length and cuts only the failure writes.  The gateway keeps those failures
    itself: after max_failures unrecorded misses the user is locked, right code or not."""
    from otpgate.directory.engine import Modify

    key = await world.oath("alice")
    state_writes = {world.config.directory.used.spec.name.lower()}
    world.directory.cut = lambda op: isinstance(op, Modify) and any(
        m.attribute.lower() in state_writes for m in op.changes
    ) and (world.directory.cutting)
    world.directory.cutting = True
    for _ in range(world.config.lockout.max_failures):
        result = await world.login("alice", PW + "000000")
        assert not result.ok and result.unavailable  # the client sees "unavailable"
    world.directory.cutting = False
    refused = await world.login("alice", PW + hotp(key, 0))
    assert not refused.ok and refused.reason == "locked out"
    user = await world.store.resolve("alice", fresh=True)
    assert world.store.decode(user).used.failures == 0  # nothing reached the directory
    world.clock.advance(60 * world.config.lockout.duration_minutes + 1)
    assert (await world.login("alice", PW + hotp(key, 0))).ok


@pytest_twisted.ensureDeferred
async def test_the_secret_is_split_by_the_tokens_the_user_has_now(world: World) -> None:
    """Attack: a cached token list (6 digits) must not split password+code for a token
    enrolled meanwhile by another gateway (8 digits)."""
    six = await world.oath("alice")
    assert (await world.login("alice", PW + hotp(six, 0))).ok  # cached here now
    other = world.other_gateway()
    eight = await other.oath("alice", digits=8)
    result = await world.login("alice", PW + hotp(eight, 0, digits=8))
    assert result.ok, result


@pytest_twisted.ensureDeferred
async def test_membership_without_memberof_still_needs_the_otp() -> None:
    """Attack: on OpenLDAP without the memberof overlay the user has no memberOf values;
    a required group (or an admin group) must still be seen, through the group's members;
    a group that cannot be read counts as one the user is in (the OTP is required)."""
    admins, vpn = "cn=admins,ou=groups,dc=x", "cn=vpn,ou=groups,dc=x"
    w = World(config(policy={"require_otp_groups": [vpn], "admin_groups": [admins],
                             "trusted_networks": ["10.0.0.0/8"]}))
    carol = w.directory.add_user("carol", PW)  # no memberOf at all
    dave = w.directory.add_user("dave", PW)
    w.directory.add_group(vpn, [carol])
    w.directory.add_group(admins, [dave])
    key = await w.oath("carol")
    await w.oath("dave")
    assert not (await w.login("carol", PW, client="192.0.2.1")).ok  # in the required group
    assert (await w.login("carol", PW + hotp(key, 0), client="192.0.2.1")).ok
    assert not (await w.login("dave", PW, client="10.1.1.1")).ok  # admin: trusted net or not
    del w.directory.entries[vpn.lower()]  # the group can no longer be read: carol counts
    w2 = World(w.config, w.directory)  # as a member of it (it is a group that adds the OTP)
    assert not (await w2.login("carol", PW, client="192.0.2.1")).ok
    assert (await w2.login("carol", PW + hotp(key, 1), client="192.0.2.1")).ok


@pytest_twisted.ensureDeferred
async def test_a_planted_entry_is_no_state_entry() -> None:
    """Attack: whatever else sits under the state entry's name (an account someone could
    create there, or anything without the state classes) is refused, never used as state."""
    w = World(config("container"))
    w.directory.add_user("alice", PW)
    user = await w.store.resolve("alice", fresh=True)
    w.directory.entries[user.state_dn.lower()] = (user.state_dn, {
        "objectclass": [b"top", b"organizationalRole", b"extensibleObject", b"inetOrgPerson"],
        "cn": [user.state_dn.split(",")[0][3:].encode()],
    })
    result = await w.login("alice", PW + "123456")
    assert not result.ok and "not an otpgate state entry" in result.reason


@pytest_twisted.ensureDeferred
async def test_logins_that_write_nothing_do_not_keep_a_cached_entry_fresh() -> None:
    """The attack: a stream of portal sign-ins with a spent code (each re-reads only the
    state and writes nothing) kept the entry cached with its old groups, so a user just
    added to the OTP-required group kept binding with the password alone.  The cached user
    fields expire ``state_cache_seconds`` after the last full read, whatever else happens."""
    vpn = "cn=vpn,ou=groups,dc=x"
    w = World(config(policy={"require_otp_groups": [vpn]}))
    alice = w.directory.add_user("alice", PW)
    group = w.directory.add_group(vpn, [])
    key = await w.oath("alice")
    assert (await w.login("alice", PW)).ok  # not in the group: the password alone
    spent = hotp(key, 0)
    portal = separate("alice", PW, spent, require_otp=True)
    assert (await w.auth.login(portal, w.directory.check_password)).ok  # the code is spent
    w.directory.entries[group.lower()][1]["member"].append(alice.encode())
    ttl = w.config.directory.state_cache_seconds
    for _ in range(int(ttl) * 3):
        w.clock.advance(1)
        replay = await w.auth.login(portal, w.directory.check_password)
        assert not replay.ok and replay.reason == "OTP already used"
    refused = await w.login("alice", PW)
    assert not refused.ok and refused.reason == "no password+OTP in the secret", refused


@pytest_twisted.ensureDeferred
async def test_password_only_first_enrollment_passes_the_prologue() -> None:
    """The portal's password-only enrollment goes through the same door: allowed only where
    the settings say (networks, rollout window), only for a user who never had OTP state
    (a reset keeps the use state: a code from the help desk is needed then), never for a
    locked-out user, and the password is checked last."""
    from otpgate.admin.manage import reset_change
    from tests.logins import first_enrollment

    w = World(config(web={"password_only_enrollment_networks": ["192.0.2.0/24"]}))
    check = w.directory.check_password
    w.directory.add_user("newbie", PW)
    w.directory.add_user("reset", PW)
    outside = await w.auth.login(first_enrollment("newbie", PW, "198.51.100.1", "198.51.100.1"),
                                 check)
    assert not outside.ok and "does not apply" in outside.reason
    assert (await w.auth.login(first_enrollment("newbie", PW, "192.0.2.9", "192.0.2.9"),
                               check)).ok
    wrong = await w.auth.login(first_enrollment("newbie", "nope", "192.0.2.9", "192.0.2.9"), check)
    assert not wrong.ok
    key = await w.oath("reset")
    has_token = await w.auth.login(first_enrollment("reset", PW, "192.0.2.9", "192.0.2.9"), check)
    assert not has_token.ok and "has a token" in has_token.reason
    user = await w.store.resolve("reset", fresh=True)
    await w.store.update(user, reset_change)
    after_reset = await w.auth.login(first_enrollment("reset", PW, "192.0.2.9", "192.0.2.9"),
                                     check)
    assert not after_reset.ok and "reset" in after_reset.reason, after_reset
    assert key  # the reset user had a real token


@pytest_twisted.ensureDeferred
async def test_two_use_values_keep_every_spent_scratch_code(world: World) -> None:
    """Two values of the use state (replication merging two writers, or one written back
    beside the current one): the merge keeps the spent scratch codes of both, so neither
    code is accepted again (the merge kept only the first value's before)."""
    codes, scratch = generate_scratch_list(5, 8)
    await world.enroll("alice", Token(id="s1", type=TokenType.SCRATCH, created=0,
                                      scratch=scratch), None)
    user = await world.store.resolve("alice", fresh=True)
    key, attribute = user.state_dn.lower(), world.config.directory.used.spec.name.lower()

    def values() -> list[bytes]:
        return list(world.directory.entries[key][1][attribute])

    def put(new: list[bytes]) -> None:
        world.directory.entries[key][1][attribute] = new
        world.store.cache.drop(user)

    before = values()
    assert (await world.login("alice", PW + codes[0])).ok
    after_first = values()
    put(before)  # rolled back, then the other code spent
    assert (await world.login("alice", PW + codes[1])).ok
    put(after_first + values())
    for code in codes[:2]:
        again = await world.login("alice", PW + code)
        assert not again.ok and again.reason == "OTP already used", again


@pytest_twisted.ensureDeferred
async def test_names_outside_base_dn_are_no_users() -> None:
    """A DN-form name is looked up only below base_dn: the proof that users cannot write
    their own OTP state covers the entries below it, and nothing else."""
    w = World(config(directory={"base_dn": "ou=people,dc=x"}))
    w.directory.entries["uid=carol,ou=staff,dc=x"] = ("uid=carol,ou=staff,dc=x", {
        "objectclass": [b"inetOrgPerson"], "uid": [b"carol"],
        "entryuuid": [b"00000000-0000-4000-8000-00000000ca01"]})
    refused = await w.login("uid=carol,ou=staff,dc=x", PW + "123456")
    assert not refused.ok and "not below" in refused.reason, refused
    w.directory.add_user("alice", PW)
    key = await w.oath("alice")
    assert (await w.login("uid=alice,ou=people,dc=x", PW + hotp(key, 0))).ok
