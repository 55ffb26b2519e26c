"""Rolling out (pure and in-memory): exemptions by DN, subtree, pattern, group and source
network per listener/NAS, each with an end date; the grace for users not yet enrolled; and
report-only mode, decided by the one pipeline with ``twisted.internet.task.Clock``."""

from __future__ import annotations

import datetime
import ipaddress
from typing import Any

import pytest
import pytest_twisted

from otpgate.auth.exemptions import Exemption, Exemptions, first_active
from otpgate.auth.policy import Policy
from otpgate.auth.requests import Appended, Channel, CodeOnly, PasswordStep, Separate
from otpgate.config import PolicyConfig
from otpgate.errors import ConfigError
from otpgate.otp.oath import hotp
from tests.unit.test_pipeline import PW, START, World, config

LISTENER = Channel("ldap", name="apps", where="tcp:10389")
OTHER = Channel("ldap", name="vpn", where="tcp:20389")
NAS = Channel("radius", name="wifi", where="wifi")
DAY = 86400.0
TOMORROW = datetime.date.fromtimestamp(START + DAY).isoformat()


def net(text: str) -> Any:
    return ipaddress.ip_network(text)


# -- exemptions, pure ------------------------------------------------------------------------


def test_a_pattern_matches_rdn_by_rdn() -> None:
    ex = Exemptions((Exemption("pattern", "uid=svc-*,ou=Services,dc=x"),))
    assert ex.named("uid=svc-backup,ou=services,dc=x")
    assert ex.named("UID=SVC-Sync , OU=Services,DC=X")
    assert ex.named("uid=svc-,ou=services,dc=x")  # * may stand for nothing
    assert not ex.named("uid=backup,ou=services,dc=x")
    assert not ex.named("uid=svc-a,ou=people,dc=x")
    # * never crosses an RDN nor a value of a multi-valued RDN
    assert not ex.named("uid=svc-a,ou=x,ou=services,dc=x")
    assert ex.named(r"uid=svc-a\,b,ou=services,dc=x")  # an escaped comma is in the value
    assert not ex.named("uid=svc-a+cn=admin,ou=services,dc=x")
    assert not ex.named("not a dn")


def test_a_pattern_wildcard_in_a_middle_rdn_and_type_is_exact() -> None:
    ex = Exemptions((Exemption("pattern", "cn=*,ou=*-printers,dc=x"),))
    assert ex.named("cn=hp1,ou=floor2-printers,dc=x")
    assert not ex.named("uid=hp1,ou=floor2-printers,dc=x")  # the type is not a wildcard
    assert not ex.named("cn=hp1,ou=floor2-scanners,dc=x")


def test_pattern_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"policy\.exempt\[0\]\.pattern: .*one value each"):
        config(policy={"exempt": [{"pattern": "uid=a*+cn=b,dc=x"}]})
    with pytest.raises(ConfigError, match=r"policy\.exempt\[0\]\.pattern: .*not a DN pattern"):
        config(policy={"exempt": [{"pattern": "svc-*"}]})
    with pytest.raises(ConfigError, match=r"policy\.exempt\[0\]\.subtree: give one of"):
        config(policy={"exempt": [{"dn": "uid=a,dc=x", "subtree": "dc=x"}]})
    with pytest.raises(ConfigError, match=r"policy\.exempt\[0\]\.until: .*time zone"):
        config(policy={"exempt": [{"dn": "uid=a,dc=x", "until": "2027-01-01T00:00:00"}]})
    with pytest.raises(ConfigError, match=r"policy\.exempt\[0\]\.networks: .*names the listen"):
        config(policy={"exempt": [{"networks": ["10.0.0.0/8"]}]})
    with pytest.raises(ConfigError, match=r"policy\.exempt\[0\]\.listeners: 'tcp:1' is not"):
        config(policy={"exempt": [{"dn": "uid=a,dc=x", "listeners": ["tcp:1"]}]})
    with pytest.raises(ConfigError, match=r"policy\.exempt\[0\]\.nas: 'vpn' is not"):
        config(policy={"exempt": [{"dn": "uid=a,dc=x", "nas": ["vpn"]}]})
    with pytest.raises(ConfigError, match=r"policy\.grace\[0\]\.until is required"):
        config(policy={"grace": [{"group": "cn=staff,dc=x"}]})
    with pytest.raises(ConfigError, match=r"policy\.exempt\[0\]\.colour: unknown key"):
        config(policy={"exempt": [{"dn": "uid=a,dc=x", "colour": "red"}]})


def test_until_a_date_means_through_that_day_utc() -> None:
    cfg = config(policy={"exempt": [{"dn": "uid=a,dc=x", "until": datetime.date(2027, 1, 31)}]})
    (ex,) = cfg.policy.exemptions
    end = datetime.datetime(2027, 2, 1, tzinfo=datetime.UTC).timestamp()
    assert ex.until == end and ex.until_text == "2027-01-31"
    assert first_active((ex,), LISTENER, None, end - 1)[0] is ex
    active, ended = first_active((ex,), LISTENER, None, end)
    assert active is None and ended is ex
    at = "2027-01-31T18:00:00+01:00"
    (exact,) = config(policy={"exempt": [{"dn": "uid=a,dc=x", "until": at}]}).policy.exemptions
    assert exact.until == datetime.datetime.fromisoformat(at).timestamp()


def test_network_exemption_holds_only_on_its_listener_or_nas() -> None:
    ex = Exemption("network", networks=(net("10.1.0.0/16"),), listeners=("tcp:10389",))
    assert ex.holds(LISTENER, "10.1.2.3")
    assert not ex.holds(LISTENER, "10.2.0.1")
    assert not ex.holds(OTHER, "10.1.2.3")
    assert not ex.holds(NAS, "10.1.2.3")
    assert not ex.holds(LISTENER, None)  # no address: no network exemption
    on_nas = Exemption("dn", "uid=a,dc=x", nas=("wifi",))
    assert on_nas.holds(NAS, None) and not on_nas.holds(LISTENER, None)
    assert not on_nas.holds(Channel("web"), None)


def test_policy_decisions_say_which_exemption_and_when_one_ended() -> None:
    group = "cn=printers,ou=groups,dc=x"
    end = START + DAY
    p = Policy(
        PolicyConfig(
            exemptions=(
                Exemption("pattern", "uid=svc-*,dc=x", until=end, until_text="tomorrow"),
                Exemption("group", group),
                Exemption("network", networks=(net("10.9.0.0/16"),), nas=("wifi",)),
            ),
            admin_groups=("cn=admins,dc=x",),
        )
    )
    d = p.decide("uid=svc-a,dc=x", (), None, LISTENER, START)
    assert not d.needs_otp and d.reason == "exempt: pattern uid=svc-*,dc=x until tomorrow"
    d = p.decide("uid=svc-a,dc=x", (), None, LISTENER, end)
    assert d.needs_otp and d.reason == "policy (exemption pattern uid=svc-*,dc=x ended tomorrow)"
    assert p.decide("uid=hp,dc=x", ("CN=Printers,OU=Groups,DC=X",), None, LISTENER, START).reason == (
        f"exempt: group {group}"
    )
    assert not p.decide("uid=b,dc=x", (), "10.9.1.1", NAS, START).needs_otp
    assert p.decide("uid=b,dc=x", (), "10.9.1.1", LISTENER, START).needs_otp
    # administrators always need a code, exempt or not
    assert p.decide("uid=svc-a,dc=x", ("cn=admins,dc=x",), None, LISTENER, START).needs_otp
    # by name, without a lookup: only the DN kinds, and only while they hold
    assert p.exempt_by_name("uid=svc-a,dc=x", LISTENER, None, START) is not None
    assert p.exempt_by_name("uid=svc-a,dc=x", LISTENER, None, end) is None
    assert p.exempt_by_name("uid=hp,dc=x", LISTENER, None, START) is None


def test_grace_for_members_until_a_date() -> None:
    cfg = config(policy={"grace": [{"group": "cn=staff,dc=x", "until": TOMORROW}]})
    p = Policy(cfg.policy)
    decision, _ = p.grace(("cn=Staff,dc=x",), START)
    assert decision is not None and not decision.needs_otp
    assert decision.reason.startswith("grace: not yet enrolled (member of cn=staff,dc=x until")
    assert p.grace(("cn=other,dc=x",), START) == (None, "")
    later = START + 2 * DAY
    decision, ended = p.grace(("cn=staff,dc=x",), later)
    assert decision is None and ended == f" (grace for cn=staff,dc=x ended {TOMORROW})"


# -- the pipeline ----------------------------------------------------------------------------


def world(layout: str = "user", **sections: Any) -> World:
    w = World(config(layout, **sections))
    w.events: list[dict[str, Any]] = []  # type: ignore[misc]
    w.auth.audit.observers.append(w.events.append)
    w.directory.add_user("alice", PW)
    return w


async def login(w: World, typed: str, channel: Channel, name: str = "alice", **kw: Any) -> Any:
    request = Appended(name=name, typed=typed, client=kw.pop("client", "192.0.2.7"),
                       channel=channel, **kw)
    return await w.auth.login(request, w.directory.check_password)


REPORT = Channel("ldap", name="apps", where="tcp:10389", enforce=False)


@pytest_twisted.ensureDeferred
async def test_report_only_accepts_the_password_alone_and_says_what_enforcement_would_do() -> None:
    w = world()
    done = await login(w, PW, REPORT)
    assert done.ok
    event = w.events[-1]
    assert event["reason"] == "report-only: would refuse: no token enrolled"
    assert event["report_only"] is True and event["policy"] == "otp"
    assert event["enrolled"] is False and event["channel"] == "apps"
    assert not (await login(w, "wrong", REPORT)).ok  # the password is still checked
    assert not (await login(w, PW, LISTENER)).ok  # enforced elsewhere
    assert w.events[-1]["reason"] == "no token enrolled" and "report_only" not in w.events[-1]


@pytest_twisted.ensureDeferred
async def test_report_only_verifies_and_spends_a_code_and_refuses_a_wrong_one() -> None:
    w = world()
    key = await w.oath("alice")
    alone = await login(w, PW, REPORT)
    assert alone.ok and w.events[-1]["reason"] == "report-only: would refuse: no valid code"
    assert w.events[-1]["enrolled"] is True
    with_code = await login(w, PW + hotp(key, 0), REPORT)
    assert with_code.ok and with_code.token_id
    assert w.events[-1]["reason"] == "report-only: password+OTP accepted"
    replay = await login(w, PW + hotp(key, 0), REPORT)  # no code is accepted twice
    assert not replay.ok and w.events[-1]["reason"] == "report-only: OTP already used"
    wrong = await login(w, PW + "000000", REPORT)
    assert not wrong.ok and w.events[-1]["reason"].startswith("report-only: wrong OTP")
    user = await w.store.resolve("alice", fresh=True)
    assert w.store.decode(user).used.failures == 1  # the wrong code counted
    # password alone: nothing written, nothing counted
    assert (await login(w, PW, REPORT)).ok
    user = await w.store.resolve("alice", fresh=True)
    assert w.store.decode(user).used.failures == 1


@pytest_twisted.ensureDeferred
async def test_report_only_guessing_codes_still_locks_the_codes_out() -> None:
    w = world()
    key = await w.oath("alice")
    for guess in range(5):
        assert not (await login(w, PW + f"{guess:06d}", REPORT)).ok
    assert "now locked out" in w.events[-1]["reason"]
    # locked: a right code is not even looked at, the password alone is accepted (as before)
    assert not (await login(w, PW + hotp(key, 0), REPORT)).ok
    assert (await login(w, PW, REPORT)).ok
    assert w.events[-1]["reason"] == "report-only: would refuse: locked out"
    assert not (await login(w, PW + hotp(key, 1), LISTENER)).ok  # enforced: locked


@pytest_twisted.ensureDeferred
async def test_report_only_separate_code_given_is_always_checked() -> None:
    w = world()
    await w.oath("alice")
    request = Separate(name="alice", password=PW, code="123456", client=None, channel=REPORT)
    assert not (await w.auth.login(request, w.directory.check_password)).ok
    request = Separate(name="alice", password=PW, code="", client=None, channel=REPORT)
    assert (await w.auth.login(request, w.directory.check_password)).ok
    # a user without a token who gives a code: it cannot be checked, refused
    w.directory.add_user("bob", PW)
    request = Separate(name="bob", password=PW, code="123456", client=None, channel=REPORT)
    assert not (await w.auth.login(request, w.directory.check_password)).ok


@pytest_twisted.ensureDeferred
async def test_report_only_does_not_apply_where_no_password_arrives() -> None:
    w = world()
    key = await w.oath("alice")
    nas = Channel("radius", name="otp", where="otp", enforce=False, pin=True)
    request = CodeOnly(name="alice", code="000000", client=None, channel=nas)
    assert not (await w.auth.login(request, None)).ok
    request = CodeOnly(name="alice", code=hotp(key, 0), client=None, channel=nas)
    assert (await w.auth.login(request, None)).ok


@pytest_twisted.ensureDeferred
async def test_report_only_challenge_mode_accepts_the_password_step() -> None:
    w = world()
    await w.oath("alice")
    nas = Channel("radius", name="vpn", where="vpn", enforce=False, challenges=True)
    step = await w.auth.login(
        PasswordStep(name="alice", password=PW, client=None, channel=nas),
        w.directory.check_password,
    )
    assert step.ok and not step.needs_otp
    assert w.events[-1]["reason"] == "report-only: password step: would ask for a code"


@pytest_twisted.ensureDeferred
async def test_report_only_keeps_an_expired_account_refused() -> None:
    w = world("container", directory={"profile": "ad", "write_url": "ldap://127.0.0.1:1"})
    w.directory.add_user("old", PW, accountExpires=["1"], objectGUID=[b"\x01" * 16])
    assert not (await login(w, PW, REPORT, name="uid=old,ou=people,dc=x")).ok
    assert w.events[-1]["reason"] == "report-only: expired"


@pytest_twisted.ensureDeferred
async def test_an_expiring_pattern_exemption_in_the_pipeline() -> None:
    end = datetime.date.fromtimestamp(START).isoformat()  # through today, UTC
    w = world(policy={"exempt": [{"pattern": "uid=svc-*,ou=services,dc=x", "until": end}]})
    w.directory.add_user("svc-sync", "s3cret", base="ou=services,dc=x")
    dn = "uid=svc-sync,ou=services,dc=x"
    assert (await login(w, "s3cret", LISTENER, name=dn)).ok
    assert w.events[-1]["reason"] == (
        f"exempt: pattern uid=svc-*,ou=services,dc=x until {end}: password accepted"
    )
    w.clock.advance(DAY)  # the exemption is gone, and the audit says so
    done = await login(w, "s3cret", LISTENER, name=dn)
    assert not done.ok
    assert w.events[-1]["policy"] == (
        f"otp (exemption pattern uid=svc-*,ou=services,dc=x ended {end})"
    )


@pytest_twisted.ensureDeferred
async def test_a_group_exemption_and_a_network_exemption_per_listener() -> None:
    listen = ["tcp:10389:interface=127.0.0.1", "tcp:20389:interface=127.0.0.1"]
    w = world(
        ldap_proxy={"listen": listen},
        policy={
            "exempt": [
                {"group": "cn=printers,ou=groups,dc=x"},
                {"networks": ["10.5.0.0/16"], "listeners": [listen[0]]},
            ]
        },
    )
    hp = w.directory.add_user("hp", "toner")
    w.directory.add_group("cn=printers,ou=groups,dc=x", [hp])
    assert (await login(w, "toner", OTHER, name="hp")).ok
    assert w.events[-1]["policy"] == "exempt: group cn=printers,ou=groups,dc=x"
    first = Channel("ldap", name="apps", where=listen[0])
    second = Channel("ldap", name="vpn", where=listen[1])
    assert (await login(w, PW, first, client="10.5.1.1")).ok
    assert not (await login(w, PW, second, client="10.5.1.1")).ok
    assert not (await login(w, PW, first, client="10.6.1.1")).ok


@pytest_twisted.ensureDeferred
async def test_grace_until_a_date_then_refused_saying_so() -> None:
    end = datetime.date.fromtimestamp(START).isoformat()
    w = world(policy={"grace": [{"group": "cn=staff,dc=x", "until": end}]})
    carol = w.directory.add_user("carol", PW)
    w.directory.add_group("cn=staff,dc=x", [carol])
    assert (await login(w, PW, LISTENER, name="carol")).ok
    assert w.events[-1]["policy"].startswith("grace: not yet enrolled")
    assert not (await login(w, PW, LISTENER)).ok  # alice is not in the group
    w.clock.advance(DAY)
    assert not (await login(w, PW, LISTENER, name="carol")).ok
    assert w.events[-1]["reason"] == f"no token enrolled (grace for cn=staff,dc=x ended {end})"


@pytest_twisted.ensureDeferred
async def test_grace_is_for_users_never_enrolled_not_after_a_reset() -> None:
    """A phished password of a grace-group member whose tokens were reset (a lost phone) or
    revoked must not pass alone: the grace is for users who never had OTP."""
    from otpgate.admin.manage import reset_change

    w = world(policy={"grace": [{"group": "cn=staff,dc=x", "until": TOMORROW}]})
    carol = w.directory.add_user("carol", PW)
    w.directory.add_group("cn=staff,dc=x", [carol])
    key = await w.oath("carol")
    assert not (await login(w, PW, LISTENER, name="carol")).ok  # enrolled: the code is needed
    assert (await login(w, PW + hotp(key, 0), LISTENER, name="carol")).ok
    await w.store.update(await w.store.resolve("carol", fresh=True), reset_change)
    refused = await login(w, PW, LISTENER, name="carol")
    assert not refused.ok
    assert w.events[-1]["reason"].startswith("no token enrolled (grace does not apply")


@pytest_twisted.ensureDeferred
async def test_after_the_grace_ends_a_new_user_may_still_enroll_with_her_password() -> None:
    """The refusal after the grace names it; the portal's password-only first enrollment,
    where allowed, still takes a user who never had OTP."""
    from tests.logins import first_enrollment

    end = datetime.date.fromtimestamp(START).isoformat()
    w = world(policy={"grace": [{"group": "cn=staff,dc=x", "until": end}]},
              web={"password_only_enrollment_networks": ["192.0.2.0/24"]})
    carol = w.directory.add_user("carol", PW)
    w.directory.add_group("cn=staff,dc=x", [carol])
    w.clock.advance(DAY)
    enroll = first_enrollment("carol", PW, "192.0.2.9", "192.0.2.9")
    assert (await w.auth.login(enroll, w.directory.check_password)).ok


@pytest_twisted.ensureDeferred
async def test_report_only_never_waives_the_channels_access_rules() -> None:
    """Who may use a listener at all is not the second factor: a user outside its allowed
    groups, or in a denied one, is refused on a report-only listener as on any other."""
    listen = "tcp:10389:interface=127.0.0.1"
    rules = {"allow_groups": ("cn=vpn,dc=x",), "deny_groups": ("cn=contractors,dc=x",)}
    w = world(ldap_proxy={"listen": [listen], "listener_rules": {
        listen: {k: list(v) for k, v in rules.items()} | {"enforce": False}}})
    mallory = w.directory.add_user("mallory", PW)
    w.directory.add_group("cn=vpn,dc=x", [mallory])
    w.directory.add_group("cn=contractors,dc=x", [mallory])
    report = Channel("ldap", name="apps", where="tcp:10389", enforce=False, **rules)
    outside = await login(w, PW, report)  # alice: in no allowed group
    assert not outside.ok and outside.reason.startswith("not allowed on"), outside
    denied = await login(w, PW, report, name="mallory")
    assert not denied.ok and "member of cn=contractors" in denied.reason, denied
    open_report = Channel("ldap", name="apps", where="tcp:10389", enforce=False)
    assert (await login(w, PW, open_report, name="mallory")).ok  # no rules: report-only


@pytest_twisted.ensureDeferred
async def test_a_memberof_value_the_user_wrote_herself_grants_nothing() -> None:
    """Where users may write memberOf (a plain attribute, `by self write`), a value naming
    an exemption, grace or allow group does not make her a member: the group's own member
    values decide.  For groups that add a requirement memberOf still counts (fail closed)."""
    printers, staff = "cn=printers,ou=groups,dc=x", "cn=staff,dc=x"
    w = world(policy={"exempt": [{"group": printers}],
                      "grace": [{"group": staff, "until": TOMORROW}],
                      "require_otp_groups": ["cn=vpn,dc=x"]})
    w.directory.add_group(printers, [])
    w.directory.add_group(staff, [])
    w.directory.add_group("cn=vpn,dc=x", [])
    w.directory.add_user("eve", PW, memberOf=[printers, staff, "cn=vpn,dc=x"])
    refused = await login(w, PW, LISTENER, name="eve")
    assert not refused.ok and w.events[-1]["policy"] == "otp", w.events[-1]
    assert w.events[-1]["reason"] == "no token enrolled"


def test_nas_names_are_unique_and_never_another_nas_network() -> None:
    """Exemptions, the audit and /metrics tell NASes apart by name (or network): two NASes
    named alike, or one named like another's network, would share an exemption."""
    def nas(name: str, address: str) -> dict[str, Any]:
        return {"name": name, "address": address, "secret": "s" * 16}

    with pytest.raises(ConfigError, match=r"radius\.clients\[1\]\.name: 'vpn' already names"):
        config(radius={"clients": [nas("vpn", "10.0.0.1"), nas("vpn", "10.0.0.2")]})
    with pytest.raises(ConfigError, match=r"radius\.clients\[1\]\.name: a NAS named like"):
        config(radius={"clients": [nas("a", "10.0.0.1/32"), nas("10.0.0.1/32", "10.0.0.2")]})


def test_an_ipv4_mapped_address_is_its_ipv4_address_for_networks() -> None:
    from otpgate.configfile import in_networks

    assert in_networks("::ffff:10.0.0.1", (net("10.0.0.0/8"),))
    assert not in_networks("::ffff:10.0.0.1", (net("::ffff:0:0/96"),))


@pytest_twisted.ensureDeferred
async def test_the_bind_cache_never_carries_a_report_only_bind_to_an_enforcing_listener() -> None:
    w = world(ldap_proxy={"bind_cache_seconds": 60})
    key = await w.oath("alice")
    same_name = Channel("ldap", name="apps", where="tcp:20389")  # an admin's second "apps"
    assert (await login(w, PW + hotp(key, 0), REPORT, rebind=True)).ok
    assert not (await login(w, PW + hotp(key, 0), same_name, rebind=True)).ok


# -- saying where enforcement is off -------------------------------------------------------------


def test_enforcement_warnings_and_the_metrics_gauge() -> None:
    from otpgate.enforcement import warnings, ways_in
    from otpgate.web.metrics import Metrics

    listen = ["tcp:10389:interface=127.0.0.1", "tcp:20389:interface=127.0.0.1"]
    soon = datetime.date.fromtimestamp(START + 3 * DAY).isoformat()
    cfg = config(
        ldap_proxy={"listen": listen, "listener_rules": {listen[1]: {"enforce": False}}},
        radius={
            "listen": ["127.0.0.1:0"],
            "enforce": False,
            "clients": [
                {"address": "127.0.0.1", "secret": "x" * 16, "name": "vpn"},
                {"address": "127.0.0.2", "secret": "x" * 16, "mode": "otp-only", "name": "otp"},
                {"address": "127.0.0.3", "secret": "x" * 16, "name": "wifi", "enforce": True},
            ],
        },
        policy={
            "exempt": [
                {"dn": "uid=a,dc=x", "until": "2020-01-01"},
                {"dn": "uid=b,dc=x", "until": soon},
            ],
            "grace": [{"group": "cn=staff,dc=x", "until": "2020-01-01"}],
        },
    )
    lines = warnings(cfg, START)
    assert lines[0].startswith(f"REPORT-ONLY: LDAP listener {listen[1]}: enforce = false")
    assert lines[1].startswith("REPORT-ONLY: RADIUS client vpn")
    assert "otp-only mode carries no password" in lines[2]
    assert not any("wifi" in line or listen[0] in line for line in lines)
    assert "policy.exempt[0] (dn uid=a,dc=x) ended 2020-01-01" in lines[3]
    assert lines[4] == f"policy.exempt[1] (dn uid=b,dc=x) ends {soon}"
    assert lines[5].startswith("policy.grace[0] (cn=staff,dc=x) ended 2020-01-01")
    ways = [(w.front_end, w.where, w.enforced) for w in ways_in(cfg)]
    text = Metrics(ways=ways).text().decode()
    assert f'otpgate_enforced{{front_end="ldap",where="{listen[0]}"}} 1.0' in text
    assert f'otpgate_enforced{{front_end="ldap",where="{listen[1]}"}} 0.0' in text
    assert 'otpgate_enforced{front_end="radius",where="vpn"} 0.0' in text
    assert 'otpgate_enforced{front_end="radius",where="wifi"} 1.0' in text
    assert warnings(config(), START) == []
