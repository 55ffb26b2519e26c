"""OTP state in real directories: the same cases on slapd (two profiles) and Samba AD."""

from __future__ import annotations

import base64
import os
import subprocess

import pytest
import pytest_twisted
from twisted.internet import reactor

from otpgate.admin.enrollment import enroll_change, new_oath_token
from otpgate.auth.lockout import unlock
from otpgate.codec import Syntax
from otpgate.directory.records import StateChange
from otpgate.errors import AmbiguousUser, CodecError, UserNotFound
from otpgate.otp.oath import hotp
from otpgate.service import Gateway
from otpgate.tokens import TokenType
from otpgate.vault import Keyring
from tests.integration.backends import USER_PASSWORD
from tests.logins import appended, code_only


def gateway(backend, directory=None, **sections):
    config = backend.config(directory, **sections)
    return Gateway(config, Keyring.load(backend.keyring), reactor)


async def enroll(gw, name, kind=TokenType.HOTP, key=None, label="", replace=True):
    user = await gw.store.resolve(name)
    token, secret = new_oath_token(gw.config.otp, kind, key=key, label=label)
    await gw.store.update(
        user,
        lambda s: enroll_change(s, token, secret, gw.config.otp.max_tokens_per_user, replace),
    )
    return token, secret


def otp_only(name, code):
    return code_only(name, code, "127.0.0.1", "test")


def format_sets(backend):
    """Every allowed combination worth a round trip on this backend."""
    sets = [{"seed": "json-encrypted", "tokens": "json-encrypted", "used": "json-encrypted"}]
    config = backend.config()
    octet = {role for role in ("seed", "tokens", "used")
             if getattr(config.directory, role).spec.syntax is Syntax.OCTET}
    if octet:
        sets.append({role: ("binary" if role in octet else "json-encrypted")
                     for role in ("seed", "tokens", "used")})
    return sets


@pytest_twisted.ensureDeferred
async def test_round_trip_every_format_and_only_ciphertext_stored(backend):
    for formats in format_sets(backend):
        gw = gateway(backend, {"formats": formats})
        try:
            name, dn = backend.new_user("fmt")
            label = "Ann's $phone \\ é"
            token, secret = await enroll(gw, name, TokenType.TOTP, label=label)
            state = gw.store.decode(await gw.store.resolve(name))
            assert state.tokens == (token,)
            assert state.secrets[token.id].key == secret.key
            d = gw.config.directory
            raw_seed = backend.state_values(dn, d.seed.spec.name)
            assert len(raw_seed) == 1
            b32 = base64.b32encode(secret.key).rstrip(b"=")
            for raw in raw_seed + backend.state_values(dn, d.tokens.spec.name):
                assert secret.key not in raw and b32 not in raw and secret.key.hex().encode() not in raw
                assert b"phone" not in raw  # the label too: no plain value is ever stored
        finally:
            gw.close()


@pytest.mark.samba
@pytest_twisted.ensureDeferred
async def test_ad_attributes_hold_only_ciphertext_for_ldapsearch(request, tmp_path_factory):
    from tests.integration.backends import make_backend

    backend = make_backend("samba", request, tmp_path_factory.getbasetemp())
    gw = gateway(backend)
    try:
        name, dn = backend.new_user("ldapsearch")
        _token, secret = await enroll(gw, name, TokenType.TOTP)
        user = await gw.store.resolve(name)
        result = await gw.authenticator.login(
            otp_only(name, "000000"), None)  # a failure writes wWWHomePage too
        assert not result.ok and user.dn == dn
    finally:
        gw.close()
    dc = backend.server
    out = subprocess.run(
        ["ldapsearch", "-LLL", "-x", "-H", dc.ldaps_url, "-D", dc.admin_dn, "-w", dc.admin_password,
         "-b", backend.state_holder(dn), "-s", "base",
         "postalAddress", "registeredAddress", "wWWHomePage"],
        capture_output=True, text=True, check=True,
        env={**os.environ, "LDAPTLS_CACERT": str(dc.ca_file), "LDAPTLS_REQCERT": "demand"},
    ).stdout
    values = {}
    for line in out.replace("\n ", "").splitlines():
        if ":" in line and not line.startswith("dn:"):
            attr, _, value = line.partition(":")
            raw = base64.b64decode(value.strip(": ")) if value.startswith(":") else value.strip().encode()
            values[attr] = raw
    assert set(values) == {"postalAddress", "registeredAddress", "wWWHomePage"}, out
    for raw in values.values():
        assert raw.startswith(b"v1.k1."), raw  # the vault envelope, nothing readable
        assert b"secret" not in raw and base64.b32encode(secret.key).rstrip(b"=") not in raw


@pytest_twisted.ensureDeferred
async def test_identity_resolution(backend):
    gw = gateway(backend, {"search_attribute": "description"})
    try:
        name, dn = backend.new_user("who", description="shared-desc")
        backend.new_user("who", description="shared-desc")
        _, dn_unique = backend.new_user("who", description="unique-desc")
        assert (await gw.store.resolve(dn)).dn.lower() == dn.lower()
        assert (await gw.store.resolve("unique-desc")).dn.lower() == dn_unique.lower()
        assert (await gw.store.resolve(backend.upn(name))).dn.lower() == dn.lower()
        with pytest.raises(AmbiguousUser):
            await gw.store.resolve("shared-desc")
        with pytest.raises(UserNotFound):
            await gw.store.resolve("nobody-here")
        with pytest.raises(UserNotFound):
            await gw.store.resolve("desc*)(uid=*")  # filter metacharacters are escaped
    finally:
        gw.close()
    gw = gateway(backend)
    try:
        user = await gw.store.resolve(name)
        assert user.dn.lower() == dn.lower()
        assert len(user.entry_id) == (16 if backend.is_ad else 36)
        if backend.is_ad:
            domain = backend.server.domain
            assert (await gw.store.resolve(f"{domain}\\{name}")).dn.lower() == dn.lower()
            with pytest.raises(UserNotFound):
                await gw.store.resolve(f"OTHERDOM\\{name}")
    finally:
        gw.close()


@pytest_twisted.ensureDeferred
async def test_hotp_accept_replay_lockout_unlock(backend):
    gw = gateway(backend, lockout={"max_failures": 3, "duration_minutes": 5})
    try:
        name, _dn = backend.new_user("flow")
        key = os.urandom(20)
        await enroll(gw, name, TokenType.HOTP, key=key)
        auth = gw.authenticator.login
        assert (await auth(otp_only(name, hotp(key, 0)), None)).ok
        assert not (await auth(otp_only(name, hotp(key, 0)), None)).ok  # replay
        assert (await auth(otp_only(name, hotp(key, 5)), None)).ok  # within look-ahead
        assert not (await auth(otp_only(name, hotp(key, 3)), None)).ok  # skipped, retired
        assert not (await auth(otp_only(name, hotp(key, 17)), None)).ok  # beyond look-ahead
        failed = await auth(otp_only(name, "000000"), None)
        assert not failed.ok and "locked" in failed.reason  # third failure
        locked = await auth(otp_only(name, hotp(key, 6)), None)
        assert not locked.ok and locked.reason == "locked out"
        user = await gw.store.resolve(name)
        await gw.store.update(user, lambda s: StateChange(None, used=unlock(s.used)))
        assert (await auth(otp_only(name, hotp(key, 6)), None)).ok
        # right code, wrong password: refused, and the code is spent
        wrong = await auth(appended(name, "bad-password" + hotp(key, 7), None, "test"),
                           gw.check_password)
        assert not wrong.ok and wrong.reason.startswith("wrong password")
        good = await auth(appended(name, USER_PASSWORD + hotp(key, 8), None, "test"),
                          gw.check_password)
        assert good.ok, good.reason
        assert not (await auth(appended(name, USER_PASSWORD + hotp(key, 7), None, "test"),
                               gw.check_password)).ok
    finally:
        gw.close()


@pytest_twisted.ensureDeferred
async def test_size_limit_refused_before_anything_is_written(backend):
    config = backend.config()
    seed_name = config.directory.seed.spec.name
    gw = gateway(backend, {"attributes": {"seed": {"name": seed_name, "max_size": 900}}},
                 otp={"max_tokens_per_user": 50, "algorithm": "sha512"})
    try:
        name, dn = backend.new_user("size")
        enrolled = 0
        with pytest.raises(CodecError, match=rf"{dn.split(',')[0][3:]}.*{seed_name}.*900"):
            for _ in range(20):
                await enroll(gw, name, replace=False)
                enrolled += 1
        assert 0 < enrolled < 20
        state = gw.store.decode(await gw.store.resolve(name))
        assert len(state.tokens) == len(state.secrets) == enrolled  # nothing half-written
    finally:
        gw.close()


@pytest_twisted.ensureDeferred
async def test_ciphertext_copied_to_another_entry_is_rejected(backend):
    gw = gateway(backend)
    try:
        name_a, dn_a = backend.new_user("copya")
        name_b, dn_b = backend.new_user("copyb")
        key = os.urandom(20)
        await enroll(gw, name_a, key=key)
        await enroll(gw, name_b)
        d = gw.config.directory
        admin = backend.admin()
        try:
            holder_b = backend.state_holder(dn_b)
            for attr in (d.seed.spec.name, d.tokens.spec.name, d.used.spec.name):
                values = backend.state_values(dn_a, attr)
                assert admin.modify(holder_b, {attr: [("MODIFY_REPLACE", values)]}), admin.result
        finally:
            admin.unbind()
        with pytest.raises(CodecError, match="copied from another entry"):
            gw.store.decode(await gw.store.resolve(name_b, fresh=True))
        result = await gw.authenticator.login(otp_only(name_b, hotp(key, 0)), None)
        assert not result.ok and "CodecError" in result.reason
    finally:
        gw.close()


@pytest_twisted.ensureDeferred
async def test_directory_down_fails_closed(backend):
    from tests.netutil import free_port

    url = f"ldap://127.0.0.1:{free_port()}"  # write_url named: AD has no implicit discover then
    gw = gateway(backend, {"urls": [url], "start_tls": False, "write_url": url})
    try:
        result = await gw.authenticator.login(otp_only("anyone", "123456"), None)
        assert not result.ok and result.unavailable
        assert gw.directory_stats.errors["connect"] >= 1
    finally:
        gw.close()


@pytest_twisted.ensureDeferred
async def test_multi_valued_used_is_merged_monotonically(request, tmp_path_factory):
    """homePostalAddress (stock OpenLDAP profile) is multi-valued: a stray older value
    written by hand must neither roll the counter back nor survive the next write."""
    from tests.integration.backends import make_backend

    backend = make_backend("slapd-stock", request, tmp_path_factory.getbasetemp())
    gw = gateway(backend, {"state_cache_seconds": 0})  # repair happens on a read
    try:
        name, dn = backend.new_user("multi")
        key = os.urandom(20)
        await enroll(gw, name, key=key)
        assert (await gw.authenticator.login(otp_only(name, hotp(key, 4)), None)).ok
        used_attr = gw.config.directory.used.spec.name
        admin = backend.admin()
        try:
            assert admin.modify(dn, {used_attr: [("MODIFY_ADD", [b'{"u":{},"v":1}'])]})
        finally:
            admin.unbind()
        assert len(backend.raw_values(dn, used_attr)) == 2
        assert not (await gw.authenticator.login(otp_only(name, hotp(key, 4)), None)).ok
        assert (await gw.authenticator.login(otp_only(name, hotp(key, 5)), None)).ok
        assert len(backend.raw_values(dn, used_attr)) == 1  # repaired by the CAS write
    finally:
        gw.close()


@pytest_twisted.ensureDeferred
async def test_stale_cached_entry_costs_one_counted_cas_retry(backend):
    """Two gateways on one user: the one with a stale cached entry loses the compare-and-swap,
    re-reads, and still accepts the next code; the retry shows in its stats."""
    first, second = gateway(backend), gateway(backend)
    try:
        name, _dn = backend.new_user("stale")
        key = os.urandom(20)
        await enroll(first, name, key=key)
        assert (await first.authenticator.login(otp_only(name, hotp(key, 0)), None)).ok
        assert (await second.authenticator.login(otp_only(name, hotp(key, 1)), None)).ok
        assert first.directory_stats.cas_conflicts == 0
        assert (await first.authenticator.login(otp_only(name, hotp(key, 2)), None)).ok
        stats = first.directory_stats
        assert stats.cas_conflicts == 1
        # initialise + enroll, the first login, then the lost CAS write and its retry
        # (a state entry, on AD, is initialised by the Add that creates it)
        writes = stats.latency["modify"].count
        writes += stats.latency["add"].count if "add" in stats.latency else 0
        assert writes == 5
        assert stats.latency["search"].count >= 2 and not stats.errors
    finally:
        first.close()
        second.close()


@pytest_twisted.ensureDeferred
async def test_code_spent_elsewhere_is_refused_from_a_cached_entry(backend):
    """Attack on the entry cache: gateway A holds alice's entry and its decoded state
    cached; gateway B spends the next code; the same code sent to A is refused (A's
    compare-and-swap fails on the value B wrote, A re-reads and sees the code spent), and the
    code after it still works on A."""
    first, second = gateway(backend), gateway(backend)
    try:
        name, _dn = backend.new_user("spentelsewhere")
        key = os.urandom(20)
        await enroll(first, name, key=key)
        assert (await first.authenticator.login(otp_only(name, hotp(key, 0)), None)).ok
        assert (await second.authenticator.login(otp_only(name, hotp(key, 1)), None)).ok
        replayed = await first.authenticator.login(otp_only(name, hotp(key, 1)), None)
        assert not replayed.ok, replayed
        assert first.directory_stats.cas_conflicts == 1
        assert (await first.authenticator.login(otp_only(name, hotp(key, 2)), None)).ok
        assert not (await second.authenticator.login(otp_only(name, hotp(key, 2)), None)).ok
    finally:
        first.close()
        second.close()


@pytest.mark.samba
@pytest_twisted.ensureDeferred
async def test_disabled_and_expired_ad_accounts_get_no_code_only_login(request, tmp_path_factory):
    """Attack: CHAP, MS-CHAPv2 and otp-only logins bind nothing as the user, so AD never gets
    to say the account is disabled or expired: otpgate checks both itself."""
    from tests.integration.backends import make_backend

    backend = make_backend("samba", request, tmp_path_factory.getbasetemp())
    gw = gateway(backend, {"state_cache_seconds": 0})
    try:
        for change in ("disable", "expire"):
            name, dn = backend.new_user(change)
            key = os.urandom(20)
            await enroll(gw, name, key=key)
            assert (await gw.authenticator.login(otp_only(name, hotp(key, 0)), None)).ok
            admin = backend.admin()
            try:
                if change == "disable":
                    admin.search(dn, "(objectClass=*)", search_scope="BASE",
                                 attributes=["userAccountControl"])
                    flags = int(admin.response[0]["attributes"]["userAccountControl"]) | 2
                    value = str(flags)
                    attribute = "userAccountControl"
                else:  # a FILETIME in 2001
                    value, attribute = str((978307200 + 11644473600) * 10**7), "accountExpires"
                assert admin.modify(dn, {attribute: [("MODIFY_REPLACE", [value])]}), admin.result
            finally:
                admin.unbind()
            result = await gw.authenticator.login(otp_only(name, hotp(key, 1)), None)
            assert not result.ok, (change, result)
            assert ("expired" in result.reason) if change == "expire" else (
                "UserNotFound" in result.reason), result.reason
    finally:
        gw.close()


@pytest.mark.samba
@pytest_twisted.ensureDeferred
async def test_replayed_codes_do_not_keep_a_disabled_account_cached(request, tmp_path_factory):
    """The attack on Samba AD: the account is disabled, and a stream of logins with a spent
    code (each writes nothing and re-reads only the state) tried to keep the gateway's cached
    entry fresh, so that a CHAP-style code-only login, which binds nothing as the user, was
    still accepted long after.  The cached user fields expire ``state_cache_seconds`` after
    the last full read: after that the disabled account is refused."""
    from twisted.internet.task import deferLater

    from tests.integration.backends import make_backend

    backend = make_backend("samba", request, tmp_path_factory.getbasetemp())
    ttl = 2.0
    gw = gateway(backend, {"state_cache_seconds": ttl})
    try:
        name, dn = backend.new_user("stale")
        key = os.urandom(20)
        await enroll(gw, name, key=key)
        assert (await gw.authenticator.login(otp_only(name, hotp(key, 0)), None)).ok  # cached
        admin = backend.admin()
        try:
            admin.search(dn, "(objectClass=*)", search_scope="BASE",
                         attributes=["userAccountControl"])
            flags = int(admin.response[0]["attributes"]["userAccountControl"]) | 2
            assert admin.modify(dn, {"userAccountControl": [("MODIFY_REPLACE", [str(flags)])]})
        finally:
            admin.unbind()
        loop_until = reactor.seconds() + 3 * ttl
        while reactor.seconds() < loop_until:  # the replays, faster than the cache expires
            replay = await gw.authenticator.login(otp_only(name, hotp(key, 0)), None)
            assert not replay.ok
            await deferLater(reactor, 0.3, lambda: None)
        result = await gw.authenticator.login(otp_only(name, hotp(key, 1)), None)
        assert not result.ok and "UserNotFound" in result.reason, result
    finally:
        gw.close()
