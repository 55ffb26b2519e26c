"""Who needs an OTP (pure): DN matching by parsed RDNs, policy order."""

import ipaddress

from otpgate.auth.policy import Policy
from otpgate.auth.requests import Channel
from otpgate.dn import dn_key, normalise_dn
from otpgate.config import PolicyConfig

LDAP = Channel("ldap", where="tcp:389")


class _Policy(Policy):
    def is_exempt(self, dn: str) -> bool:
        return self.exempt_by_name(dn, LDAP, None, 0.0) is not None

    def decide(self, dn, groups, client, channel=LDAP, now=0.0):
        return super().decide(dn, groups, client, channel, now)


def policy(**kw):
    return _Policy(PolicyConfig(**kw))


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
    from otpgate import dn as module

    p = policy(exempt_subtrees=("ou=Service Accounts,dc=example,dc=org",))
    memo = p.exemptions._memo
    before = (module._dn_key_memo.cache_info().currsize, memo.cache_info().currsize)
    long_dn = "cn=" + "x" * 300_000 + ",ou=Service Accounts,dc=example,dc=org"
    assert p.is_exempt(long_dn)
    assert module.dn_key(long_dn) is not None
    assert not p.is_exempt("cn=" + "y" * 300_000 + ",dc=example,dc=org")
    after = (module._dn_key_memo.cache_info().currsize, memo.cache_info().currsize)
    assert after == before
    assert p.is_exempt("cn=jenkins,ou=Service Accounts,dc=example,dc=org")
    assert memo.cache_info().currsize == before[1] + 1


def test_dn_parsing_is_linear_on_escaped_commas() -> None:
    """``cn=`` + 100,000 x ``\\,`` (a 200-KB bind name) cost ldap3's parser 3 s of the
    reactor; parsing is one pass now: ten times the name costs about ten times the work,
    measured against the parser's own time on a short name, not a wall-clock budget."""
    import time

    from otpgate.dn import _dn_key

    def cost(n: int) -> float:
        name = "cn=" + "\\," * n + ",ou=Service Accounts,dc=example,dc=org"
        best = float("inf")
        for _ in range(3):
            start = time.process_time()
            assert _dn_key(name) is not None
            best = min(best, time.process_time() - start)
        return best

    small, large = cost(10_000), cost(100_000)
    assert large < 30 * small, (small, large)  # quadratic would be ~100x


def test_dn_key_agrees_with_the_rfc_4514_forms() -> None:
    assert dn_key("cn=a\\2Cb,dc=x") == dn_key("CN=a\\,b, DC=X") == ("cn=a\\,b", "dc=x")
    assert dn_key("cn=#04024869,dc=x") == ("cn=#04024869", "dc=x")
    assert dn_key("cn=caf\\C3\\A9,dc=x") == ("cn=café", "dc=x")
    assert dn_key("1.3.6.1.4.1.1466.0=x,dc=y") == ("1.3.6.1.4.1.1466.0=x", "dc=y")
    for bad in ("", "cn", "=x", "cn=a,", "cn=a\\", "cn=a=b", "cn=#zz,dc=x", "cn=a,,dc=x"):
        assert dn_key(bad) is None, bad
