"""Who needs an OTP, decided from the live directory: groups (memberOf), admins, networks."""

from __future__ import annotations

import os

import pytest
import pytest_twisted

from otpgate.otp.oath import hotp
from tests.integration.backends import USER_PASSWORD, make_backend
from tests.integration.proxyhelp import enroll, start_proxy

PW = USER_PASSWORD


@pytest.mark.samba
@pytest_twisted.ensureDeferred
async def test_groups_and_admins_on_ad(request, tmp_path, tmp_path_factory):
    backend = make_backend("samba", request, tmp_path_factory.getbasetemp())
    dc = backend.server
    member_name, member_dn = backend.new_user("grpin")
    _, outsider_dn = backend.new_user("grpout")
    admin_name, admin_dn = backend.new_user("grpadm")
    tag = os.urandom(3).hex()
    otp_group = dc.create_group(f"otp-required-{tag}", [member_dn])
    admin_group = dc.create_group(f"gateway-admins-{tag}", [admin_dn])
    proxy = await start_proxy(backend, tmp_path, policy={
        "require_otp_groups": [otp_group],
        "admin_groups": [admin_group],
        "exempt_dns": [admin_dn],  # listed as exempt, but an admin: still needs an OTP
    })
    try:
        key = await enroll(proxy, member_name)
        admin_key = await enroll(proxy, admin_name)
        assert await proxy.ldap3_bind(member_dn, PW) == (False, 49)
        assert await proxy.ldap3_bind(member_dn, PW + hotp(key, 0)) == (True, 0)
        assert await proxy.ldap3_bind(outsider_dn, PW) == (True, 0)  # not in an OTP group
        assert await proxy.ldap3_bind(admin_dn, PW) == (False, 49)
        assert await proxy.ldap3_bind(admin_dn, PW + hotp(admin_key, 0)) == (True, 0)
    finally:
        await proxy.stop()


@pytest_twisted.ensureDeferred
async def test_trusted_network_needs_no_otp_but_admins_do(request, tmp_path, tmp_path_factory):
    backend = make_backend("slapd-stock", request, tmp_path_factory.getbasetemp())
    _, user_dn = backend.new_user("trusted")
    proxy = await start_proxy(backend, tmp_path, policy={"trusted_networks": ["127.0.0.0/8"]})
    try:
        assert await proxy.ldap3_bind(user_dn, PW) == (True, 0)
        assert await proxy.ldap3_bind(user_dn, "wrong") == (False, 49)
    finally:
        await proxy.stop()
    proxy = await start_proxy(backend, tmp_path, policy={"trusted_networks": ["10.99.0.0/16"]})
    try:
        assert await proxy.ldap3_bind(user_dn, PW) == (False, 49)  # loopback is not trusted here
    finally:
        await proxy.stop()


@pytest_twisted.ensureDeferred
async def test_lockout_through_the_proxy(request, tmp_path, tmp_path_factory):
    backend = make_backend("slapd-stock", request, tmp_path_factory.getbasetemp())
    name, dn = backend.new_user("lock")
    proxy = await start_proxy(backend, tmp_path, lockout={"max_failures": 3, "duration_minutes": 1})
    try:
        key = await enroll(proxy, name)
        for _ in range(3):
            assert await proxy.ldap3_bind(dn, PW + "000000") == (False, 49)
        # locked: even the right code is refused, with the same answer
        assert await proxy.ldap3_bind(dn, PW + hotp(key, 0)) == (False, 49)
    finally:
        await proxy.stop()


@pytest.mark.samba
@pytest_twisted.ensureDeferred
async def test_nested_and_primary_groups_need_the_otp_on_ad(request, tmp_path, tmp_path_factory):
    """Attack: memberOf alone misses nested groups and the primary group (Domain Users); a
    policy that read "not in a group that needs an OTP" from it alone would fail open."""
    backend = make_backend("samba", request, tmp_path_factory.getbasetemp())
    dc = backend.server
    name, dn = backend.new_user("nested")
    tag = os.urandom(3).hex()
    inner = dc.create_group(f"inner-{tag}", [dn])
    outer = dc.create_group(f"outer-{tag}", [inner])  # dn is a member of outer only via inner
    admin_name, admin_dn = backend.new_user("nestadm")
    inner_admins = dc.create_group(f"inner-admins-{tag}", [admin_dn])
    admins = dc.create_group(f"admins-{tag}", [inner_admins])
    domain_users = f"CN=Domain Users,CN=Users,{dc.base_dn}"
    for required in (outer, domain_users):
        proxy = await start_proxy(backend, tmp_path, policy={
            "require_otp_groups": [required],
            "admin_groups": [admins],
            "trusted_networks": ["127.0.0.0/8"] if required == domain_users else [],
        })
        try:
            await enroll(proxy, name)
            await enroll(proxy, admin_name)
            if required == outer:
                assert await proxy.ldap3_bind(dn, PW) == (False, 49)  # nested member
            # a nested admin needs the OTP even from a trusted network
            assert await proxy.ldap3_bind(admin_dn, PW) == (False, 49)
        finally:
            await proxy.stop()
    proxy = await start_proxy(backend, tmp_path, policy={"require_otp_groups": [domain_users]})
    try:
        assert await proxy.ldap3_bind(dn, PW) == (False, 49)  # the primary group counts
    finally:
        await proxy.stop()


@pytest_twisted.ensureDeferred
async def test_group_members_without_memberof_need_the_otp(request, tmp_path, tmp_path_factory):
    """Attack: OpenLDAP without the memberof overlay (the test slapd has none): members are
    only in the group's member values, and they must still need the OTP."""
    backend = make_backend("slapd-stock", request, tmp_path_factory.getbasetemp())
    name, dn = backend.new_user("member")
    group = backend.server.add_group(f"otp-{os.urandom(3).hex()}", [dn])
    proxy = await start_proxy(backend, tmp_path, policy={"require_otp_groups": [group]})
    try:
        key = await enroll(proxy, name)
        assert await proxy.ldap3_bind(dn, PW) == (False, 49)
        assert await proxy.ldap3_bind(dn, PW + hotp(key, 0)) == (True, 0)
    finally:
        await proxy.stop()
    missing = f"cn=no-such-group,ou=groups,{backend.server.suffix}"
    proxy = await start_proxy(backend, tmp_path, policy={"require_otp_groups": [missing]})
    try:
        assert await proxy.ldap3_bind(dn, PW) == (False, 49)  # membership unknown: refused
    finally:
        await proxy.stop()
