"""Detecting OpenLDAP multi-provider replication from what the servers show (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task
from twisted.internet.task import Clock

from otpgate.config import parse_config
from otpgate.directory.discovery import pdc_emulator
from otpgate.directory.ldapdata import LdapUrl, SearchEntry
from otpgate.directory.replication import (
    ProbeRefused,
    ReplicationFacts,
    csn_server_id,
    multi_provider_evidence,
    probe,
    readable,
    server_id_value,
)
from otpgate.directory.replication_guard import (
    RECHECK_SECONDS,
    RETRY_DELAYS,
    ReplicationGuard,
    UnpinnedMultiProvider,
)
from otpgate.errors import DirectoryError, DirectoryUnavailable

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



@pytest.mark.parametrize("code", [3, 11, 50, 51, 52, 80])
def test_a_refused_root_dse_or_suffix_read_cannot_be_judged(code):
    """A server that answers the probe with an error (busy, time limit, access...) has not
    shown that it does not replicate: the probe ends with ProbeRefused, never with "nothing
    to judge by" (which would let unpinned OTP writes through until the next recheck)."""
    with pytest.raises(ProbeRefused):
        run(probe("ldap://a", SUFFIX), [DirectoryError(str(code), code), []])
    with pytest.raises(ProbeRefused):
        run(probe("ldap://a", SUFFIX), [dse(SUFFIX), DirectoryError(str(code), code), []])


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
    (url, where, _owner), asked = run(
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
    (url, where, _owner), _ = run(
        pdc_emulator("DC=ad,DC=test", "ldaps://127.0.0.2:636", "ldaps://127.0.0.2:636"),
        [other, fsmo, server],
    )
    assert url == "ldaps://dc1.ad.test:636" and where == "dc1.ad.test"


# -- the gateway's guard, over fake connections -------------------------------------------


class FakeConn:
    def __init__(self, server: FakeServer) -> None:
        self.server = server

    async def search(self, base, _filter, attributes, scope=0):
        self.server.searches += 1
        if self.server.down:
            raise DirectoryUnavailable("gone")
        if base == "":
            return dse(SUFFIX)
        if base == SUFFIX:
            if self.server.busy:
                if self.server.busy is not True:
                    self.server.busy -= 1
                raise DirectoryError("busy", 51)
            return head(*self.server.csns)
        return []

    def close(self) -> None:
        pass


class FakeServer:
    def __init__(self, *csns: str) -> None:
        self.csns = list(csns)
        self.down = False
        self.busy: bool | int = False
        """True: busy; a number: busy for that many more suffix reads."""
        self.searches = 0


class FakePool:
    def __init__(self, servers: dict[str, FakeServer]) -> None:
        self.servers = servers
        self.urls = [LdapUrl.parse(u) for u in servers]
        self.opened = 0

    async def open_to(self, url):
        self.opened += 1
        server = self.servers[url.url]
        await task.deferLater(reactor, 0, lambda: None)  # a real wait: logins pile up
        if server.down:
            raise DirectoryUnavailable(f"{url.url}: cannot connect")
        return FakeConn(server)


def guard_for(servers: dict[str, FakeServer], **directory):
    doc = {
        "directory": {
            "profile": "openldap",
            "urls": list(servers),
            "base_dn": SUFFIX,
            "bind_dn": "cn=svc," + SUFFIX,
            "bind_password": "pw",
            **directory,
        },
        "vault": {"keyring": "k.json"},
    }
    config = parse_config(doc, Path("/"))
    clock = Clock()
    clock.advance(1000)
    pool = FakePool(servers)
    return ReplicationGuard(config.directory, pool, clock), pool, clock


async def settled(guard: ReplicationGuard, clock: Clock, d=None) -> float:
    """Run ``guard.check()`` (or the deferred ``d``) to its end, the Clock moving on to each
    retry the guard waits for; returns the seconds it took on that Clock (an error
    propagates)."""
    start = clock.seconds()
    d = defer.ensureDeferred(guard.check()) if d is None else d
    for _ in range(100):
        if d.called:
            break
        await task.deferLater(reactor, 0, lambda: None)  # the fake pool's own wait
        calls = clock.getDelayedCalls()
        if not d.called and calls:
            clock.advance(min(c.getTime() for c in calls) - clock.seconds())
    await d
    return clock.seconds() - start


@pytest_twisted.ensureDeferred
async def test_guard_refuses_multi_provider_checks_once_and_rechecks_later():
    a = FakeServer("2026#000000#001#000000", "2026#000000#002#000000")
    b = FakeServer("2026#000000#001#000000", "2026#000000#002#000000")
    guard, pool, clock = guard_for({"ldap://127.0.0.1:1": a, "ldap://127.0.0.1:2": b})
    assert guard.active
    # ten logins at once share one probe (one connection per server)
    results = await defer.DeferredList(
        [defer.ensureDeferred(guard.check()) for _ in range(10)], consumeErrors=True
    )
    assert all(not ok and r.check(UnpinnedMultiProvider) for ok, r in results)
    assert pool.opened == 2 and guard.refusing
    with pytest.raises(UnpinnedMultiProvider, match=r"server ids 1, 2.*write_url"):
        await guard.check()
    assert pool.opened == 2  # the verdict is kept...
    a.csns = b.csns = ["2026#000000#000#000000"]  # (made single-provider again)
    clock.advance(RECHECK_SECONDS)
    await guard.check()  # ...until the recheck
    assert pool.opened == 4 and not guard.refusing


@pytest_twisted.ensureDeferred
async def test_guard_fails_closed_when_no_server_answers_and_is_off_when_pinned():
    a = FakeServer()
    a.down = True
    guard, pool, clock = guard_for({"ldap://127.0.0.1:1": a})
    with pytest.raises(DirectoryUnavailable, match="replication check"):
        await settled(guard, clock)
    assert pool.opened == 1 + len(RETRY_DELAYS)  # asked again before giving up
    a.down = False
    await guard.check()  # no contextCSN: no syncprov, single server
    assert pool.opened == 2 + len(RETRY_DELAYS) and not guard.refusing
    pinned, pool, _ = guard_for({"ldap://127.0.0.1:1": a}, write_url="ldap://127.0.0.1:1")
    allowed, _, _ = guard_for({"ldap://127.0.0.1:1": a}, allow_unpinned_multi_provider=True)
    assert not pinned.active and not allowed.active


@pytest_twisted.ensureDeferred
async def test_guard_refuses_while_a_server_answers_the_probe_with_an_error():
    """Busy (51), unavailable (52), time or admin limits and refused access do not show
    that a server does not replicate: once retries did not help, OTP writes are refused."""
    a, b = FakeServer(), FakeServer()
    b.busy = True
    guard, _pool, clock = guard_for({"ldap://127.0.0.1:1": a, "ldap://127.0.0.1:2": b})
    with pytest.raises(UnpinnedMultiProvider, match="could not be checked"):
        await settled(guard, clock)
    b.busy = False
    clock.advance(RECHECK_SECONDS)
    await guard.check()
    assert not guard.refusing


def test_slapd_config_files_give_server_ids_and_the_flag(tmp_path):
    from otpgate.admin.doctor_repl import slapd_config_facts

    conf = tmp_path / "slapd.conf"
    conf.write_text(
        "# serverID 9\nserverID 1 ldap://a/\nserverID 2 ldap://b/\nrootpw secret\n"
        "database mdb\nsyncrepl rid=001 provider=ldap://b/\n  credentials=secret\n"
        "MultiProvider on\n"
    )
    facts = slapd_config_facts(conf)
    assert facts.config_server_ids == {1, 2} and facts.multi_provider_flag
    assert "secret" not in repr(facts)
    assert "olcMultiProvider" in multi_provider_evidence([facts])
    single = tmp_path / "single.conf"
    single.write_text("database mdb\nsuffix dc=example,dc=org\nmirrormode off\n")
    assert multi_provider_evidence([slapd_config_facts(single)]) is None
    slapd_d = tmp_path / "slapd.d" / "cn=config"
    slapd_d.mkdir(parents=True)
    (slapd_d.parent / "cn=config.ldif").write_text("dn: cn=config\nolcServerID: 3\n")
    (slapd_d / "olcDatabase={1}mdb.ldif").write_text(
        "dn: olcDatabase={1}mdb\nolcMirrorMode: TRUE\n"
    )
    facts = slapd_config_facts(slapd_d.parent)
    assert facts.config_server_ids == {3} and facts.multi_provider_flag


@pytest_twisted.ensureDeferred
async def test_startup_check_logs_and_keeps_the_verdict_without_raising():
    multi = FakeServer("2026#000000#001#000000")
    guard, pool, _clock = guard_for({"ldap://127.0.0.1:1": multi})
    assert await guard.check_at_startup() is None
    assert guard.refusing and pool.opened == 1
    with pytest.raises(UnpinnedMultiProvider):
        await guard.check()
    assert pool.opened == 1  # the startup verdict is the one logins get
    down = FakeServer()
    down.down = True
    guard, pool, clock = guard_for({"ldap://127.0.0.1:1": down})
    await settled(guard, clock, guard.check_at_startup())  # warned, not raised
    down.down = False
    await guard.check()  # tried again at the first login
    assert pool.opened == 2 + len(RETRY_DELAYS) and not guard.refusing


@pytest_twisted.ensureDeferred
async def test_one_busy_answer_is_asked_again_and_does_not_refuse_for_five_minutes():
    """A server busy for one read (or two) answers within the retries: no refusal, and the
    logins waiting meanwhile share the one probe."""
    a, b = FakeServer(), FakeServer()
    b.busy = 1
    guard, pool, clock = guard_for({"ldap://127.0.0.1:1": a, "ldap://127.0.0.1:2": b})
    waiting = defer.ensureDeferred(guard.check())
    took = await settled(guard, clock)
    assert waiting.called and (await waiting) is None
    assert took == RETRY_DELAYS[0] and not guard.refusing
    assert pool.opened == 3  # a once, b twice: only the server that failed is asked again
    b.busy = len(RETRY_DELAYS)
    clock.advance(RECHECK_SECONDS)
    took = await settled(guard, clock)
    assert took == sum(RETRY_DELAYS) <= 2 and not guard.refusing


@pytest_twisted.ensureDeferred
async def test_a_server_still_busy_after_the_retries_refuses_and_a_server_down_is_not_waited_for():
    a, b = FakeServer(), FakeServer()
    b.busy = len(RETRY_DELAYS) + 1
    guard, _pool, clock = guard_for({"ldap://127.0.0.1:1": a, "ldap://127.0.0.1:2": b})
    with pytest.raises(UnpinnedMultiProvider, match=r"could not be checked.*busy"):
        await settled(guard, clock)
    assert guard.refusing  # fail closed, kept until the recheck
    with pytest.raises(UnpinnedMultiProvider):
        await guard.check()
    # one server down, another answered: nothing a retry could change, no wait
    b.busy, b.down = False, True
    clock.advance(RECHECK_SECONDS)
    assert await settled(guard, clock) == 0 and not guard.refusing


@pytest_twisted.ensureDeferred
async def test_inventory_writes_pass_the_replication_guard_too():
    """Claims of a hardware token pass the guard too: on unpinned multi-provider, two
    help-desk claims on two providers could hand one seed to two users."""
    from otpgate.directory.store import InventoryStore

    class Refusing:
        ran: list = []

        async def check_replication(self):
            raise UnpinnedMultiProvider("unpinned")

        async def run(self, step, conn=None):
            self.ran.append(step)

    inventory = InventoryStore.__new__(InventoryStore)
    inventory.store = Refusing()  # type: ignore[assignment]
    inventory.mapper = None  # type: ignore[assignment]
    for call in (inventory.claim("S1"), inventory.delete("S1")):
        with pytest.raises(UnpinnedMultiProvider):
            await call
    assert Refusing.ran == []
