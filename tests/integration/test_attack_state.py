"""The insider with a phished password attacks the OTP state in the directory itself.

On a default Active Directory every user may write their own ``postalAddress``,
``registeredAddress`` and ``wWWHomePage`` (SELF write); on OpenLDAP many sites grant
``by self write``. With only the user's password the attacker binds to the directory
directly (not through otpgate) and

* plants a plain-JSON scratch token whose codes they chose, or a plain use state that
  clears lockout (forgery): refused, because otpgate decodes nothing but authenticated
  envelopes bound to the entry, the attribute and the purpose;
* writes an old, genuine ciphertext of the use state back after a login (rollback), to
  replay the spent code: impossible with the state in a container only the service
  account writes (``[directory] state_dn``, required on AD). With the state kept in the
  user's own entry on such a directory the rollback works, which is why AD refuses that
  layout unless the admin asserts the right was removed.

Sites: the session's Samba AD DC with its default ACLs, and a slapd whose ACL lets every
user write their own entry (``acl="self-write"``). Every bind is a real client.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ldap3
import pytest
import pytest_twisted

from otpgate.directory.records import INITIAL_USED
from otpgate.otp.oath import hotp
from otpgate.otp.scratch import generate_scratch_list
from otpgate.tokens import Token, TokenType
from otpgate.vault import keygen
from tests.integration.backends import USER_PASSWORD, Backend
from tests.integration.proxyhelp import Proxy, enroll, start_proxy
from tests.servers import SambaDC, Slapd
from tests.logins import appended, first_enrollment

PW = USER_PASSWORD
INSUFFICIENT_ACCESS = 50
USER_LAYOUT = {"state_dn": "", "allow_self_writable_state": True}
"""The state in the user's own entry (on AD: the admin's explicit, risky opt-in)."""


@pytest.fixture(scope="module")
def self_write_slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    server = Slapd(tmp_path_factory.mktemp("slapd-self-write"), acl="self-write")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["samba", "slapd-self-write"])
def site(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Backend:
    keyring = tmp_path_factory.getbasetemp() / "keyring.json"
    if not keyring.exists():
        keygen(keyring, "k1")
    if request.param == "samba":
        return Backend("samba", "ad", request.getfixturevalue("samba_dc"), keyring)
    return Backend(
        "slapd-self-write", "openldap", request.getfixturevalue("self_write_slapd"), keyring
    )


def container(site: Backend) -> dict[str, Any]:
    """The state container layout on this site."""
    if isinstance(site.server, SambaDC):
        return {"state_dn": site.state_dn()}
    return {"state_dn": site.server.state_dn}


def as_user(site: Backend, dn: str) -> ldap3.Connection:
    """The attacker: the user's own password, bound to the directory directly (LDAPS)."""
    if isinstance(site.server, SambaDC):
        return site.server.connect(dn, PW, raise_exceptions=False)
    conn = site.server.connect(dn, PW)
    conn.raise_exceptions = False
    return conn


def write(conn: ldap3.Connection, dn: str, attribute: str, values: list[bytes]) -> int:
    conn.modify(dn, {attribute: [(ldap3.MODIFY_REPLACE, values)]})
    return int(conn.result["result"])


def forged_scratch_token() -> tuple[list[str], bytes]:
    """A scratch list whose codes the attacker knows, as the plain JSON a forger would write."""
    codes, scratch = generate_scratch_list(10, 8)
    token = Token(id="f0rged00", type=TokenType.SCRATCH, created=1, scratch=scratch)
    return codes, json.dumps(token.to_dict(), separators=(",", ":")).encode()


async def started(site: Backend, tmp_path: Path, layout: dict[str, Any]) -> Proxy:
    return await start_proxy(site, tmp_path, directory={**layout, "state_cache_seconds": 0})


@pytest.mark.parametrize("layout", ["user-entry", "container"])
@pytest_twisted.ensureDeferred
async def test_forged_plain_token_opens_nothing(site, tmp_path, layout):
    """The attacker adds a plain scratch token of their own making to the token attribute
    of their entry, then logs in with password + one of its codes through the LDAP proxy
    and through the pipeline as RADIUS and the portal use it."""
    proxy = await started(site, tmp_path, USER_LAYOUT if layout == "user-entry" else container(site))
    try:
        name, dn = site.new_user("forge")
        await enroll(proxy, name)  # a real token: the state exists
        d = proxy.gateway.config.directory
        codes, plain = forged_scratch_token()
        attacker = as_user(site, dn)
        try:
            # Their own entry: on these sites the directory lets them.
            assert write(attacker, dn, d.tokens.spec.name, [plain]) == 0, attacker.result
            if layout == "container":
                holder = site.state_holder(dn, proxy.gateway.config)
                assert write(attacker, holder, d.tokens.spec.name, [plain]) == INSUFFICIENT_ACCESS
        finally:
            attacker.unbind()
        assert await proxy.ldap3_bind(dn, PW + codes[0]) == (False, 49)
        for front_end in ("radius", "web"):
            result = await proxy.gateway.authenticator.login(
                appended(name, PW + codes[1], "127.0.0.1", front_end),
                proxy.gateway.check_password,
            )
            assert not result.ok, result
    finally:
        await proxy.stop()


@pytest_twisted.ensureDeferred
async def test_plain_use_state_cannot_reset_lockout(site, tmp_path):
    """Locked out after wrong codes, the attacker replaces their use state with plain values
    (the first-writer placeholder, or a document with no failures): still refused."""
    proxy = await started(site, tmp_path, USER_LAYOUT)
    try:
        name, dn = site.new_user("unlock")
        key = await enroll(proxy, name)
        for _ in range(proxy.gateway.config.lockout.max_failures):
            assert await proxy.ldap3_bind(dn, PW + "000000") == (False, 49)
        assert await proxy.ldap3_bind(dn, PW + hotp(key, 0)) == (False, 49)  # locked
        used = proxy.gateway.config.directory.used.spec.name
        for plain in (INITIAL_USED, b'{"u":{},"v":1,"f":0}'):
            attacker = as_user(site, dn)
            try:
                assert write(attacker, dn, used, [plain]) == 0, attacker.result
            finally:
                attacker.unbind()
            assert await proxy.ldap3_bind(dn, PW + hotp(key, 1)) == (False, 49)
    finally:
        await proxy.stop()


@pytest_twisted.ensureDeferred
async def test_rollback_of_the_use_state_replays_nothing(site, tmp_path):
    """Default layout of the site (AD: the state container): the attacker saves the stored
    use state, logs in, writes the saved value back and replays the spent code."""
    proxy = await started(site, tmp_path, container(site))
    try:
        name, dn = site.new_user("rollback")
        key = await enroll(proxy, name)
        config = proxy.gateway.config
        used = config.directory.used.spec.name
        holder = site.state_holder(dn, config)
        saved = site.state_values(dn, used, config)
        assert saved
        assert await proxy.ldap3_bind(dn, PW + hotp(key, 0)) == (True, 0)
        attacker = as_user(site, dn)
        try:
            assert write(attacker, holder, used, saved) == INSUFFICIENT_ACCESS
            assert write(attacker, dn, used, saved) == 0  # their own entry: irrelevant now
        finally:
            attacker.unbind()
        assert await proxy.ldap3_bind(dn, PW + hotp(key, 0)) == (False, 49)  # spent
        assert await proxy.ldap3_bind(dn, PW + hotp(key, 1)) == (True, 0)
    finally:
        await proxy.stop()


@pytest_twisted.ensureDeferred
async def test_user_writable_layout_is_replayable_which_is_why_ad_refuses_it(site, tmp_path):
    """The same attack where the state sits in the user's own, user-writable entry (AD needs
    allow_self_writable_state = true for that): the rollback works. This is the measured
    reason for the AD default and for doctor's warning, not a property anyone should rely on."""
    proxy = await started(site, tmp_path, USER_LAYOUT)
    try:
        name, dn = site.new_user("replay")
        key = await enroll(proxy, name)
        used = proxy.gateway.config.directory.used.spec.name
        saved = site.raw_values(dn, used)
        assert await proxy.ldap3_bind(dn, PW + hotp(key, 0)) == (True, 0)
        assert await proxy.ldap3_bind(dn, PW + hotp(key, 0)) == (False, 49)
        attacker = as_user(site, dn)
        try:
            assert write(attacker, dn, used, saved) == 0
        finally:
            attacker.unbind()
        assert await proxy.ldap3_bind(dn, PW + hotp(key, 0)) == (True, 0)  # replayed
    finally:
        await proxy.stop()


@pytest_twisted.ensureDeferred
async def test_a_reset_user_cannot_enroll_with_the_password_alone(site, tmp_path):
    """Attack: the help desk resets alice's tokens (lost phone); whoever phished her password
    signs in to the portal's password-only enrollment first and enrolls their own phone.
    The reset keeps her use state: the door refuses a password-only first enrollment for a
    user who had OTP state (a code from the help desk is needed), while a new user may."""
    from otpgate.admin.manage import reset_change

    proxy = await started(site, tmp_path, container(site))
    try:
        gw = proxy.gateway
        auth = gw.authenticator
        auth.settings = dataclasses.replace(auth.settings, enrollment_until=time.time() + 600)
        name, _dn = site.new_user("reset")
        key = await enroll(proxy, name)
        user = await gw.store.resolve(name, fresh=True)
        await gw.store.update(user, reset_change)
        refused = await auth.login(first_enrollment(name, PW), gw.check_password)
        assert not refused.ok and "reset" in refused.reason, refused
        fresh, _ = site.new_user("fresh")
        assert (await auth.login(first_enrollment(fresh, PW), gw.check_password)).ok
        assert key
    finally:
        await proxy.stop()


@pytest_twisted.ensureDeferred
async def test_deleted_tokens_fail_closed(site, tmp_path):
    """The attacker deletes their own token records (user layout): no login with any code,
    and no password-only login either."""
    proxy = await started(site, tmp_path, USER_LAYOUT)
    try:
        name, dn = site.new_user("wipe")
        key = await enroll(proxy, name)
        assert await proxy.ldap3_bind(dn, PW + hotp(key, 0)) == (True, 0)
        d = proxy.gateway.config.directory
        attacker = as_user(site, dn)
        try:
            assert write(attacker, dn, d.tokens.spec.name, []) == 0, attacker.result
        finally:
            attacker.unbind()
        assert await proxy.ldap3_bind(dn, PW + hotp(key, 1)) == (False, 49)
        assert await proxy.ldap3_bind(dn, PW) == (False, 49)
    finally:
        await proxy.stop()


def test_state_entries_are_created_by_the_service_account_only(site):
    """Nobody but the service account can plant a state entry for a user who has none."""
    name, dn = site.new_user("plant")
    config = site.config(container(site))
    holder = site.state_holder(dn, config)
    attacker = as_user(site, dn)
    try:
        classes = list(config.directory.state_classes)
        cn = holder.split(",", 1)[0].split("=", 1)[1]
        attacker.add(holder, classes, {"cn": cn, config.directory.used.spec.name: b"planted"})
        assert attacker.result["result"] == INSUFFICIENT_ACCESS, attacker.result
    finally:
        attacker.unbind()
    assert name


@pytest_twisted.ensureDeferred
async def test_switching_to_the_container_fails_closed_until_migrated(site, tmp_path, capsys):
    """Attack: after [directory] state_dn is set, a state still in the user's own entry
    must not read as "never enrolled" (a phished password could then enroll the attacker's
    device).  Refused until `otpgate migrate-state` moves it; then the same state (spent
    codes included) is in force."""
    from otpgate.cli import main
    from tests.integration.test_cli import write_config

    before = await started(site, tmp_path, USER_LAYOUT)
    try:
        name, dn = site.new_user("migr")
        key = await enroll(before, name)
        assert await before.ldap3_bind(dn, PW + hotp(key, 0)) == (True, 0)
    finally:
        await before.stop()
    proxy = await started(site, tmp_path, container(site))
    try:
        assert await proxy.ldap3_bind(dn, PW + hotp(key, 1)) == (False, 49)
        gw = proxy.gateway
        # password-only enrollment open to all (a rollout window): the unmigrated state
        # still refuses it
        auth = gw.authenticator
        auth.settings = dataclasses.replace(auth.settings, enrollment_until=time.time() + 600)
        first = await auth.login(first_enrollment(name, PW), gw.check_password)
        assert not first.ok and "migrate-state" in first.reason
        config = write_config(tmp_path / "migrate.toml", {
            "directory": site.directory_section(**container(site)),
            "vault": {"keyring": str(site.keyring)},
        })
        assert main(["migrate-state", "--dry-run", "--config", str(config)]) == 0
        assert main(["migrate-state", "--config", str(config)]) == 0
        assert "moved" in capsys.readouterr().out
        d = gw.config.directory
        for attribute in (d.seed.spec.name, d.tokens.spec.name, d.used.spec.name):
            assert not site.raw_values(dn, attribute)  # gone from the user's own entry
        assert await proxy.ldap3_bind(dn, PW + hotp(key, 0)) == (False, 49)  # still spent
        assert await proxy.ldap3_bind(dn, PW + hotp(key, 1)) == (True, 0)
    finally:
        await proxy.stop()


@pytest.mark.parametrize("layout", ["user-entry", "container"])
@pytest_twisted.ensureDeferred
async def test_the_user_cannot_remove_or_set_her_pin(site, tmp_path, layout):
    """The insider's own account on a NAS with ``require_pin``: she has a PIN (set by the
    help desk) and wants logins with the code alone, or a PIN of her choosing.  With the
    password she writes her own state values: in the container she cannot write at all; in
    her own entry, a seed without the PIN (her seed from before it was set), no seed, or a
    plain seed with her own PIN: each leaves the state refused as tampered, so no code works
    (fail closed).  Writing back both the old seed and the old use state does remove the PIN
    in that layout (a NAS with ``require_pin`` then refuses her; one without takes the code
    alone): it is the rollback the layout allows anyway (above), which is why the state
    belongs in the container."""
    from otpgate.admin.pin import set_pin_change
    from otpgate.auth.requests import Channel, CodeOnly

    user_layout = layout == "user-entry"
    proxy = await started(site, tmp_path, USER_LAYOUT if user_layout else container(site))
    try:
        gw = proxy.gateway
        name, dn = site.new_user("pinatk")
        key = await enroll(proxy, name)
        config = gw.config
        seed, used = config.directory.seed.spec.name, config.directory.used.spec.name
        holder = site.state_holder(dn, config)
        seed_before = site.state_values(dn, seed, config)
        used_before = site.state_values(dn, used, config)
        user = await gw.store.resolve(name, fresh=True)
        await gw.store.update(user, lambda s: set_pin_change(s, "4711", time.time()))
        nas = Channel("radius", name="vpn", pin=True, require_pin=True)
        counter = iter(range(100))

        async def login(pin: str) -> Any:
            code = hotp(key, next(counter))
            request = CodeOnly(name=name, client="127.0.0.1", channel=nas, code=pin + code)
            return await gw.authenticator.login(request)

        assert not (await login("")).ok  # the code alone: no
        attacker = as_user(site, dn)
        try:
            if not user_layout:
                assert write(attacker, holder, seed, seed_before) == INSUFFICIENT_ACCESS
                assert write(attacker, holder, seed, []) == INSUFFICIENT_ACCESS
                assert write(attacker, holder, used, used_before) == INSUFFICIENT_ACCESS
                assert not (await login("")).ok
                assert (await login("4711")).ok
                return
            plain = json.dumps({"v": 1, "s": {}, "pin": {"p": "1111", "k": "A" * 43}}).encode()
            for forged in (seed_before, [], [plain]):
                assert write(attacker, dn, seed, forged) == 0, attacker.result
                for pin in ("", "1111", "4711"):
                    refused = await login(pin)
                    assert not refused.ok, (forged, pin)
                    assert "TamperedState" in refused.reason or "CodecError" in refused.reason
            assert write(attacker, dn, seed, seed_before) == 0
            assert write(attacker, dn, used, used_before) == 0
        finally:
            attacker.unbind()
        refused = await login("")  # both rolled back (the replayable layout, measured) ...
        assert not refused.ok and refused.reason == "no PIN set (NAS vpn requires one)"
        lax = Channel("radius", name="lax", pin=True)  # ... a NAS without require_pin
        request = CodeOnly(name=name, client="127.0.0.1", channel=lax, code=hotp(key, 0))
        assert (await gw.authenticator.login(request)).ok  # (no code was ever spent)
    finally:
        await proxy.stop()
