"""The census's pure logic: accumulators, verdicts, filters and the suggested exemptions,
fed with in-memory audit events."""

from __future__ import annotations

import datetime
import random
import tomllib
from typing import Any

from otpgate.auth.exemptconfig import parse_exemptions
from otpgate.auth.policy import Policy
from otpgate.auth.requests import Channel
from otpgate.census import FILTERS, NO_TOKEN, READY, SERVICE, Census
from otpgate.census.model import CLIENT_SLOTS, NAME_SLOTS, SHOWN_CLIENTS, Account
from otpgate.config import PolicyConfig
from otpgate.configfile import Section

T0 = 1796601600.0  # 2026-12-07T00:00:00Z
DAY = 86400.0
TODAY = datetime.date(2026, 12, 7)
SERVICES = "ou=services,dc=example,dc=org"
PEOPLE = "ou=people,dc=example,dc=org"


def event(t: float, user: str, dn: str | None = None, **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "time": t, "event": "auth", "outcome": "accept", "front_end": "ldap", "user": user,
        "dn": dn, "client": "192.0.2.10", "token": None, "reason": "password only",
        "policy": "otp",
    }  # fmt: skip
    base.update(kw)
    return base


def service(census: Census, name: str, client: str = "192.0.2.10", every: float = 60.0,
            n: int = 200, parent: str = SERVICES) -> None:  # fmt: skip
    for i in range(n):
        census.feed(event(T0 + i * every, name, f"uid={name},{parent}", client=client))


def person_with_codes(census: Census, name: str = "alice", parent: str = PEOPLE) -> None:
    rnd = random.Random(1)
    for day in range(10):
        for _ in range(4):
            t = T0 + day * DAY + 8 * 3600 + rnd.random() * 9 * 3600
            client = f"10.1.{rnd.randint(0, 3)}.{rnd.randint(1, 200)}"
            census.feed(event(t, name, f"uid={name},{parent}", client=client, token="t-1",
                              enrolled=True))  # fmt: skip


def person_without_token(census: Census, name: str = "bob") -> None:
    rnd = random.Random(2)
    for day in range(5):
        for _ in range(3):
            t = T0 + day * DAY + 9 * 3600 + rnd.random() * 6 * 3600
            census.feed(event(
                t, name, f"uid={name},{PEOPLE}", client="10.2.0.7", enrolled=False,
                report_only=True, reason="report-only: would refuse: no token enrolled",
            ))  # fmt: skip


def by_account(census: Census) -> dict[str, Any]:
    return {r.user: r for r in census.rows()}


def test_verdicts_and_order() -> None:
    c = Census()
    person_with_codes(c)
    person_without_token(c)
    service(c, "svc-backup", n=300)
    service(c, "svc-print", client="2001:db8::5", every=300.0, n=100)
    rows = c.rows()
    assert [r.user for r in rows] == ["svc-backup", "svc-print", "bob", "alice"]
    rows_by = by_account(c)
    assert rows_by["svc-backup"].verdict == SERVICE and "steady" in rows_by["svc-backup"].why
    assert rows_by["bob"].verdict == NO_TOKEN and rows_by["alice"].verdict == READY
    assert rows_by["bob"].would_refuse == 15 and rows_by["alice"].codes == 40
    assert c.events == 40 + 15 + 300 + 100 and c.malformed == 0
    alice = rows_by["alice"]
    assert alice.account == f"uid=alice,{PEOPLE}" and alice.clients_more
    assert len(alice.clients) == SHOWN_CLIENTS and alice.clients_text == f"{CLIENT_SLOTS}+"
    doc = rows_by["svc-backup"].as_dict()
    assert doc["first_seen"] == "2026-12-07T00:00:00Z" and doc["clients"] == ["192.0.2.10"]


def test_service_rhythms_around_the_clock_and_nightly() -> None:
    c = Census()
    rnd = random.Random(3)
    t = T0
    for _ in range(200):  # at random (exponential gaps), in every hour of the day
        t += rnd.expovariate(1 / 1800)
        c.feed(event(t, "sync", "uid=sync,dc=x"))
    for day in range(6):  # a few times a night, between 01:00 and 04:00
        for hour in (1, 2, 3):
            t = T0 + day * DAY + hour * 3600 + rnd.random() * 3000
            c.feed(event(t, "nightly", "uid=n,dc=x"))
    for i in range(40):  # a person who never typed a code, office hours, one laptop
        c.feed(event(T0 + (i // 4) * DAY + 9 * 3600 + rnd.random() * 8 * 3600, "carol",
                     "uid=carol,dc=x"))  # fmt: skip
    rows = by_account(c)
    assert rows["sync"].verdict == SERVICE and "around the clock" in rows["sync"].why
    assert rows["nightly"].verdict == SERVICE and "00:00 and 05:00" in rows["nightly"].why
    assert rows["carol"].verdict == NO_TOKEN


def test_not_a_service_when_it_typed_a_code_had_many_sources_or_few_binds() -> None:
    c = Census()
    service(c, "few", n=5)
    for i in range(100):
        c.feed(event(T0 + i * 60, "roam", "uid=roam,dc=x", client=f"192.0.2.{i % 5}"))
        c.feed(event(T0 + i * 60, "coder", "uid=coder,dc=x", token="t" if i == 50 else None))
    rows = by_account(c)
    assert rows["few"].verdict == NO_TOKEN
    assert rows["roam"].verdict == NO_TOKEN and rows["roam"].client_count == 5
    assert rows["coder"].verdict == READY


def test_filters() -> None:
    c = Census()
    person_with_codes(c)
    person_without_token(c)
    service(c, "svc-backup")
    for i in range(3):  # enrolled, code required, never asked for one yet
        c.feed(event(T0 + i * DAY, "dave", "uid=dave,dc=x", enrolled=True))
    rows = by_account(c)
    pick = {name: {r.user for r in rows.values() if f(r)} for name, f in FILTERS.items()}
    assert pick["service"] == {"svc-backup"}
    assert pick["no-token"] == {"bob", "svc-backup"}
    assert pick["would-refuse"] == {"bob", "svc-backup"}
    assert rows["dave"].verdict == READY


def test_malformed_events_are_counted_not_fatal() -> None:
    c = Census()
    c.feed({"event": "auth", "outcome": "accept"})  # no time
    c.feed({"time": "x", "outcome": "accept", "user": "a"})
    c.feed({"time": 1.0, "outcome": "accept", "user": None, "dn": None})
    c.feed({"time": 1.0, "outcome": None, "user": "a"})
    c.feed(event(T0, "ok"))
    assert (c.events, c.malformed) == (1, 4)


def test_an_account_by_dn_across_names_and_case() -> None:
    c = Census()
    c.feed(event(T0, "Bob", "uid=bob,dc=x"))
    c.feed(event(T0 + 5, "bob", "UID=bob,dc=x"))
    c.feed(event(T0 + 9, "nobody", None, outcome="reject"))
    rows = c.rows()
    assert len(rows) == 2
    (bob,) = [r for r in rows if r.dn]
    assert bob.binds == 2 and bob.user == "Bob"
    (nobody,) = [r for r in rows if not r.dn]
    assert nobody.account == "nobody" and nobody.refused == 1


def test_a_million_events_keep_constant_state() -> None:
    c = Census()
    feed = c.feed
    for i in range(1_000_000):
        feed({
            "time": T0 + i * 7.0, "outcome": "accept" if i % 3 else "reject",
            "front_end": f"fe{i % 50}", "channel": f"ch{i % 70}", "user": "svc", "dn": None,
            "client": f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}", "token": None,
            "policy": f"otp {i % 1000}",
        })  # fmt: skip
    (account,) = c.accounts.values()
    assert isinstance(account, Account)
    assert len(account.clients) <= CLIENT_SLOTS and account.row().clients_more
    assert len(account.front_ends) == NAME_SLOTS and len(account.channels) == NAME_SLOTS
    assert isinstance(account.hours, int) and account.hours < 1 << 24
    # the rhythm is read from the accepted logins alone: gaps of 7 and 14 s in turn
    assert account.n == 666_665 and abs(account.mean - 10.5) < 1e-3
    assert c.events == 1_000_000 and account.binds == 1_000_000
    assert not hasattr(account, "__dict__")  # slots: no attribute can grow unnoticed


# -- the suggestion ----------------------------------------------------------------------------


def parsed(text: str) -> Policy:
    """The suggestion read by otpgate's own config parser, as a policy."""
    doc = tomllib.loads(text)
    exemptions = parse_exemptions(Section(doc["policy"], "policy"))
    return Policy(PolicyConfig(exemptions=exemptions))


def needs_code(policy: Policy, dn: str, client: str) -> bool:
    return policy.decide(dn, (), client, Channel("ldap"), T0 + DAY).needs_otp


def test_suggestion_groups_services_by_pattern_scoped_to_their_sources() -> None:
    c = Census()
    person_with_codes(c)
    person_without_token(c)
    service(c, "svc-backup", n=300)
    service(c, "svc-print", client="2001:db8::5", every=300.0, n=100)
    service(c, "ldapsync", client="192.0.2.20", parent="ou=apps,dc=example,dc=org")
    text = c.suggestion(TODAY)
    assert f'pattern = "uid=svc-*,{SERVICES}"' in text
    assert '"192.0.2.10/32", "2001:db8::5/128"' in text
    assert 'dn = "uid=ldapsync,ou=apps,dc=example,dc=org"' in text
    assert "# until = 2027-03-07" in text
    assert "census 2026-12-07: 2 accounts, 400 binds, never typed a code" in text
    assert "uid=alice" not in text and "uid=bob" not in text
    policy = parsed(text)
    assert len(policy.exemptions.all) == 2
    assert not needs_code(policy, f"uid=svc-backup,{SERVICES}", "192.0.2.10")
    assert needs_code(policy, f"uid=svc-backup,{SERVICES}", "192.0.2.99")
    assert not needs_code(policy, f"uid=svc-print,{SERVICES}", "2001:db8::5")
    assert not needs_code(policy, "uid=ldapsync,ou=apps,dc=example,dc=org", "192.0.2.20")
    assert needs_code(policy, f"uid=alice,{PEOPLE}", "192.0.2.10")


def test_a_service_seen_through_a_dual_stack_listener_gets_its_ipv4_network() -> None:
    """A dual-stack socket logs an IPv4 client as ``::ffff:a.b.c.d``; exemptions match such
    a client as its IPv4 address, so that is the network suggested."""
    c = Census()
    service(c, "ldapsync", client="::ffff:192.0.2.20", parent="ou=apps,dc=example,dc=org")
    text = c.suggestion(TODAY)
    assert 'networks = ["192.0.2.20/32"]' in text, text
    dn = "uid=ldapsync,ou=apps,dc=example,dc=org"
    assert not needs_code(parsed(text), dn, "::ffff:192.0.2.20")


def test_no_pattern_that_would_cover_a_person() -> None:
    c = Census()
    service(c, "svc-backup")
    service(c, "svc-print")
    person_with_codes(c, "svc-jane", SERVICES)  # a person named like the services'
    text = c.suggestion(TODAY)
    assert "pattern" not in text
    assert text.count("[[policy.exempt]]") == 2
    policy = parsed(text)
    assert needs_code(policy, f"uid=svc-jane,{SERVICES}", "192.0.2.10")


def test_no_suggestion_for_exempt_services_or_when_none() -> None:
    c = Census()
    for i in range(100):
        c.feed(event(T0 + i * 60, "svc-a", f"uid=svc-a,{SERVICES}",
                     policy="exempt: pattern uid=svc-*,ou=services,dc=example,dc=org"))  # fmt: skip
    person_with_codes(c)
    assert c.suggestion(TODAY) == ""
    assert Census().suggestion(TODAY) == ""


def test_a_service_without_address_is_suggested_commented_out() -> None:
    c = Census()
    service(c, "svc-a", client=None)  # type: ignore[arg-type]
    text = c.suggestion(TODAY)
    assert "# [[policy.exempt]]" in text and "give networks" in text
    assert tomllib.loads(text) == {}


def test_suggestion_escapes_what_a_dn_may_hold() -> None:
    c = Census()
    odd = 'uid=svc-a\\,b \\"x\\",' + SERVICES
    for i in range(50):
        c.feed(event(T0 + i * 60, "odd", odd + "\u202e"))
    text = c.suggestion(TODAY)
    assert "\u202e" not in text
    (exempt,) = tomllib.loads(text)["policy"]["exempt"]
    assert exempt["dn"] == odd + "\u202e"


def test_the_frequent_address_keeps_its_slot_among_many() -> None:
    c = Census()
    rnd = random.Random(5)
    for i in range(20_000):
        client = "10.0.0.1" if i % 3 == 0 else f"10.{rnd.randint(0, 255)}.{rnd.randint(0, 255)}.1"
        c.feed(event(T0 + i, "roamer", "uid=roamer,dc=x", client=client))
    (row,) = c.rows()
    assert row.clients[0] == "10.0.0.1" and row.clients_more


# -- what anyone can send: logins refused in another account's name ---------------------------


def test_refused_logins_in_someone_elses_name_make_no_service_and_no_suggestion() -> None:
    """An attacker sends wrong-password binds named as the CEO, every five minutes from her
    own host: the census must not call the CEO a service, nor suggest exempting him from
    the attacker's address."""
    c = Census()
    ceo = f"uid=ceo,{PEOPLE}"
    for i in range(300):
        c.feed(event(T0 + i * 300, "ceo", ceo, client="192.0.2.66", outcome="reject",
                     reason="wrong password"))  # fmt: skip
    row = by_account(c)["ceo"]
    assert row.verdict != SERVICE and row.refused == 300 and row.clients == ()
    assert c.suggestion(TODAY) == ""
    # A real service with refused logins besides: named in a comment, never a table.
    service(c, "svc-backup")
    c.feed(event(T0 + 5, "svc-backup", f"uid=svc-backup,{SERVICES}", client="192.0.2.66",
                 outcome="reject", reason="wrong password"))  # fmt: skip
    text = c.suggestion(TODAY)
    assert "[[policy.exempt]]" not in text and "# not suggested:" in text
    assert "192.0.2.66" not in text


def test_an_enrolled_account_is_never_a_service() -> None:
    c = Census()
    for i in range(200):
        c.feed(event(T0 + i * 60, "carol", f"uid=carol,{PEOPLE}", enrolled=True))
    assert by_account(c)["carol"].verdict == READY
    assert c.suggestion(TODAY) == ""


def test_suggestions_name_the_listeners_and_nases_used() -> None:
    c = Census()
    listen = "tcp:389:interface=0.0.0.0"
    for i in range(100):
        c.feed(event(T0 + i * 60, "svc-a", f"uid=svc-a,{SERVICES}", where=listen))
        c.feed(event(T0 + i * 60 + 1, "svc-a", f"uid=svc-a,{SERVICES}", where="wifi",
                     front_end="radius"))  # fmt: skip
    text = c.suggestion(TODAY)
    assert f'listeners = ["{listen}"]' in text and 'nas = ["wifi"]' in text
    doc = tomllib.loads(text)
    (exempt,) = parse_exemptions(Section(doc["policy"], "policy"))
    assert exempt.listeners == (listen,) and exempt.nas == ("wifi",)


def test_portal_actions_are_no_logins() -> None:
    c = Census()
    c.feed(event(T0, "helpdesk", f"uid=helpdesk,{PEOPLE}", outcome="view"))
    c.feed(event(T0, "alice", f"uid=alice,{PEOPLE}", outcome="enroll"))
    assert c.events == 0 and c.other == 2 and not c.rows()


def test_token_shown_the_same_in_the_table_and_the_page() -> None:
    c = Census()
    c.feed(event(T0, "carol", "uid=carol,dc=x", token="t-1"))  # typed a code, never looked at
    c.feed(event(T0, "dave", "uid=dave,dc=x"))
    c.feed(event(T0, "erin", "uid=erin,dc=x", enrolled=False))
    rows = by_account(c)
    assert [rows[u].token_text for u in ("carol", "dave", "erin")] == ["yes", "?", "no"]
