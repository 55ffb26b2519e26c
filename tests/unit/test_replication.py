"""Detecting OpenLDAP multi-provider replication from what the servers show (pure)."""

from __future__ import annotations

import pytest

from otpgate.directory.discovery import pdc_emulator
from otpgate.directory.ldapdata import DirectoryError, DirectoryUnavailable, SearchEntry
from otpgate.directory.replication import (
    ReplicationFacts,
    csn_server_id,
    multi_provider_evidence,
    probe,
    readable,
    server_id_value,
)

SUFFIX = "dc=example,dc=org"


def run(step, answers):
    """Drive a step with canned answers (a list per query, or an exception to throw)."""
    query = next(step)
    asked = [query]
    for answer in answers:
        try:
            query = step.throw(answer) if isinstance(answer, Exception) else step.send(answer)
        except StopIteration as done:
            return done.value, asked
        asked.append(query)
    raise AssertionError(f"the step asked more: {asked}")


def dse(*contexts):
    return [SearchEntry("", {"namingcontexts": [c.encode() for c in contexts]})]


def head(*csns):
    return [SearchEntry(SUFFIX, {"contextcsn": [c.encode() for c in csns]})]


def test_csn_and_server_id_parsing():
    assert csn_server_id(b"20261202092807.728138Z#000000#001#000000") == 1
    assert csn_server_id("20261202092807.728138Z#000000#00a#000000") == 10
    assert csn_server_id(b"garbage") is None
    assert server_id_value(b"2 ldap://127.0.0.1:1389/") == 2
    assert server_id_value("0x10") == 16 and server_id_value(b"") is None


def test_two_server_ids_in_contextcsn_are_multi_provider():
    facts, asked = run(
        probe("ldap://a", "ou=people," + SUFFIX),
        [dse("cn=other", SUFFIX), head("2026#000000#001#000000", "2026#000000#002#000000"), []],
    )
    assert asked[1].base == SUFFIX and asked[2].base == "cn=config"
    assert facts.csn_server_ids == {1, 2} and not facts.config_read
    assert "server ids 1, 2" in multi_provider_evidence([facts])


def test_one_non_zero_server_id_is_multi_provider_and_zero_is_not():
    one = ReplicationFacts("ldap://a", SUFFIX, frozenset({1}))
    assert "serverID is set" in multi_provider_evidence([one])
    zero = ReplicationFacts("ldap://a", SUFFIX, frozenset({0}))
    assert multi_provider_evidence([zero]) is None
    # ids seen on different servers add up
    other = ReplicationFacts("ldap://b", SUFFIX, frozenset({0, 3}))
    assert "server ids 0, 3" in multi_provider_evidence([zero, other])


def test_a_server_without_contextcsn_or_config_is_single():
    facts, _ = run(probe("ldap://a", SUFFIX), [dse(SUFFIX), head(), DirectoryError("50", 50)])
    assert facts.suffix == SUFFIX and facts.csn_server_ids == frozenset()
    assert multi_provider_evidence([facts]) is None and readable([facts])
    nothing, _ = run(probe("ldap://a", SUFFIX), [dse("dc=elsewhere"), []])
    assert nothing.suffix is None and not readable([nothing])


def test_readable_cn_config_shows_the_flag_and_server_ids():
    config = [
        SearchEntry("cn=config", {"olcserverid": [b"1 ldap://a/", b"2 ldap://b/"]}),
        SearchEntry("olcDatabase={0}config,cn=config", {"olcmirrormode": [b"FALSE"]}),
        SearchEntry(
            "olcDatabase={1}mdb,cn=config",
            {
                "olcsuffix": [SUFFIX.encode()],
                "olcmultiprovider": [b"TRUE"],
            },
        ),
    ]
    facts, _ = run(probe("ldap://a", SUFFIX), [dse(SUFFIX), head(), config])
    assert facts.config_read and facts.multi_provider_flag
    assert facts.config_server_ids == {1, 2}
    evidence = multi_provider_evidence([facts])
    assert "olcMultiProvider" in evidence and "server ids 1, 2" in evidence


def test_a_lost_connection_is_not_taken_for_an_unreadable_value():
    with pytest.raises(DirectoryUnavailable):
        run(probe("ldap://a", SUFFIX), [dse(SUFFIX), DirectoryUnavailable("gone")])


def test_pdc_emulator_keeps_the_configured_url_when_asked_the_pdc_itself():
    owner = "CN=NTDS Settings,CN=DC1,CN=Servers,CN=Site,CN=Sites,CN=Configuration,DC=ad,DC=test"
    root = SearchEntry(
        "", {"defaultnamingcontext": [b"DC=ad,DC=test"], "dsservicename": [owner.encode()]}
    )
    fsmo = SearchEntry("DC=ad,DC=test", {"fsmoroleowner": [owner.encode()]})
    (url, where), asked = run(
        pdc_emulator("OU=People,DC=ad,DC=test", "ldaps://127.0.0.1:636", "ldaps://x:636"),
        [root, fsmo],
    )
    assert (url, where) == ("ldaps://127.0.0.1:636", "this server")
    assert asked[1] == ("DC=ad,DC=test", ("fSMORoleOwner",))  # the domain head, not base_dn
    other = SearchEntry(
        "",
        {
            "defaultnamingcontext": [b"DC=ad,DC=test"],
            "dsservicename": [b"CN=NTDS Settings,CN=DC2,CN=Servers"],
        },
    )
    server = SearchEntry("CN=DC1", {"dnshostname": [b"dc1.ad.test"]})
    (url, where), _ = run(
        pdc_emulator("DC=ad,DC=test", "ldaps://127.0.0.2:636", "ldaps://127.0.0.2:636"),
        [other, fsmo, server],
    )
    assert url == "ldaps://dc1.ad.test:636" and where == "dc1.ad.test"
