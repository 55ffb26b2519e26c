"""Who needs an OTP (pure): DN matching by parsed RDNs, policy order."""

import ipaddress

from otpgate.auth.policy import Policy, dn_key, normalise_dn
from otpgate.config import PolicyConfig


def policy(**kw):
    return Policy(PolicyConfig(**kw))


def test_an_escaped_comma_does_not_make_a_subtree():
    """cn=Smith\\, ou=Service Accounts,... is ONE RDN below ou=people, not an entry in the
    exempt ou=Service Accounts subtree (as splitting the DN at every comma would say)."""
    p = policy(exempt_subtrees=("ou=Service Accounts,dc=example,dc=org",))
    assert p.is_exempt("cn=jenkins,ou=Service Accounts,dc=example,dc=org")
    assert not p.is_exempt(r"cn=Smith\, ou=Service Accounts,dc=example,dc=org")
    assert not p.is_exempt(r"cn=x\,ou=Service Accounts,dc=example,dc=org")
    assert not p.is_exempt(r"cn=x\2Cou=Service Accounts\2Cdc=example\2Cdc=org,ou=people,dc=example,dc=org")
    assert not p.is_exempt("ou=Service Accounts,dc=example,dc=org")  # the subtree's root itself


def test_dns_compare_case_space_and_escape_insensitively():
    p = policy(exempt_dns=(r"CN=Smith\, John,OU=Svc,DC=example,DC=org",))
    assert p.is_exempt(r"cn=smith\2C john, ou=svc , dc=EXAMPLE,dc=org")
    assert p.is_exempt(r"cn=Smith\,  John,ou=Svc,dc=example,dc=org")
    assert not p.is_exempt("cn=Smith,cn=John,ou=Svc,dc=example,dc=org")
    assert dn_key("cn=a+sn=b,dc=x") == dn_key("SN=B + CN=A,dc=x")
    assert dn_key("not a dn") is None and not p.is_exempt("not a dn")
    assert normalise_dn("not a dn") != normalise_dn("cn=not a dn")


def test_policy_order():
    admins = "cn=admins,ou=groups,dc=x"
    p = policy(
        exempt_dns=("uid=svc,dc=x",),
        trusted_networks=(ipaddress.ip_network("10.0.0.0/8"),),
        require_otp_groups=("cn=vpn,ou=groups,dc=x",),
        admin_groups=(admins,),
    )
    assert p.decide("uid=svc,dc=x", (admins.upper(),), "10.1.1.1").needs_otp  # admin first
    assert not p.decide("uid=svc,dc=x", (), None).needs_otp
    assert not p.decide("uid=a,dc=x", ("cn=vpn,ou=groups,dc=x",), "10.1.1.1").needs_otp
    assert p.decide("uid=a,dc=x", ("CN=VPN, OU=Groups, DC=X",), "192.0.2.1").needs_otp
    assert not p.decide("uid=a,dc=x", (), "192.0.2.1").needs_otp  # not in a required group


def test_long_names_are_answered_but_never_memoised() -> None:
    """Attack: a bind name can be 256 KiB; memoising such names would let anyone who can
    send binds pin gigabytes in the DN and exemption caches."""
    from otpgate.auth import policy as module

    p = Policy(PolicyConfig(exempt_subtrees=("ou=Service Accounts,dc=example,dc=org",)))
    before = (module._dn_key_memo.cache_info().currsize, p._exempt_memo.cache_info().currsize)
    long_dn = "cn=" + "x" * 300_000 + ",ou=Service Accounts,dc=example,dc=org"
    assert p.is_exempt(long_dn)
    assert module.dn_key(long_dn) is not None
    assert not p.is_exempt("cn=" + "y" * 300_000 + ",dc=example,dc=org")
    after = (module._dn_key_memo.cache_info().currsize, p._exempt_memo.cache_info().currsize)
    assert after == before
    assert p.is_exempt("cn=jenkins,ou=Service Accounts,dc=example,dc=org")
    assert p._exempt_memo.cache_info().currsize == before[1] + 1
