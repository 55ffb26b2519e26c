"""OTP state on AD goes to the DC that holds the PDC emulator role *now*.

The role can move (transfer, seizure) while the old holder stays up and keeps accepting
writes; a write connection is used only while its server shows that it holds the role:
checked when the connection opens and again once ``pdc_check_seconds`` old
(``discovery.confirm_pdc``, ``ServerPool(verify=, recheck=)``, ``SyncDirectory``).
Here over an in-memory domain of DCs, each with its own view of the role owner.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.task import Clock

from otpgate.config import parse_config
from otpgate.errors import ConfigError
from otpgate.directory import ldap3conn
from otpgate.directory import pool as pool_module
from otpgate.directory.connection import TlsSettings
from otpgate.directory.discovery import (
    NotThePdc,
    confirm_pdc,
    confirm_pdc_on,
    pdc_emulator_url,
)
from otpgate.directory.drive import run_steps
from otpgate.directory.ldapdata import LdapUrl, SearchEntry
from otpgate.errors import DirectoryUnavailable
from otpgate.directory.pool import ServerPool

HEAD = "DC=ad,DC=test"
CONFIG = "CN=Configuration,DC=ad,DC=test"


def ntds(dc: str) -> str:
    return f"CN=NTDS Settings,CN={dc.upper()},CN=Servers,CN=Site,CN=Sites,{CONFIG}"


def url(dc: str) -> str:
    return f"ldap://{dc}.ad.test:389"


class Domain:
    """DCs by name, each with the role owner it currently shows."""

    def __init__(self, *dcs: str, owner: str = "dc1") -> None:
        self.views = {dc: ntds(owner) for dc in dcs}
        self.down: set[str] = set()
        self.reads: list[tuple[str, str]] = []
        """(DC, DN) of every read, in order."""
        self.gate: defer.Deferred[None] | None = None
        """While set, root DSE reads wait for it."""

    def move(self, to: str, *dcs: str) -> None:
        """The role moves to ``to``; ``dcs`` (default: all) know it already."""
        for dc in dcs or tuple(self.views):
            self.views[dc] = ntds(to)

    def entry(self, dc: str, dn: str) -> SearchEntry | None:
        self.reads.append((dc, dn))
        if dn == "":
            return SearchEntry("", {"defaultnamingcontext": [HEAD.encode()],
                                    "dsservicename": [ntds(dc).encode()]})
        if dn == HEAD:
            return SearchEntry(HEAD, {"fsmoroleowner": [self.views[dc].encode()]})
        for name in self.views:
            if dn == ntds(name).split(",", 1)[1]:
                return SearchEntry(dn, {"dnshostname": [f"{name}.ad.test".encode()]})
        return None


class Conn:
    """The gateway's connection, as far as the pool and the steps use it."""

    def __init__(self, domain: Domain, text: str) -> None:
        self.domain = domain
        self.url = LdapUrl.parse(text)
        self.dc = self.url.host.split(".")[0]
        self.connected = True

    def close(self) -> None:
        self.connected = False

    async def simple_bind(self, _dn: str, _password: bytes) -> tuple[int, str]:
        return 0, ""

    async def search(self, base: str, _filter: Any, _attributes: Any, scope: int = 0) -> list:
        if base == "" and self.domain.gate is not None:
            await self.domain.gate
        if self.dc in self.domain.down or not self.connected:
            self.connected = False
            raise DirectoryUnavailable("connection lost")
        found = self.domain.entry(self.dc, base)
        return [found] if found else []


def write_pool(monkeypatch: pytest.MonkeyPatch, domain: Domain, clock: Clock,
               reader: str = "dc2", size: int = 1) -> tuple[ServerPool, list[Conn]]:
    """The gateway's OTP-state pool with "discover": discovery asks ``reader``."""
    opened: list[Conn] = []

    async def connect(_reactor: Any, where: LdapUrl, *_args: Any) -> Conn:
        if where.host.split(".")[0] in domain.down:
            raise DirectoryUnavailable(f"{where.url}: refused")
        conn = Conn(domain, where.url)
        opened.append(conn)
        return conn

    async def discover() -> list[str]:
        return [(await pdc_emulator_url(Conn(domain, url(reader)), HEAD, url(reader))).url]

    async def verify(conn: Any) -> None:
        await confirm_pdc_on(conn, HEAD)

    monkeypatch.setattr(pool_module, "connect", connect)
    pool = ServerPool(clock, [url(reader)], TlsSettings(), "cn=svc", "pw", 5.0, size=size,
                      discover=discover, verify=verify, recheck=60.0)
    return pool, opened


# -- the pure step ---------------------------------------------------------------------------


def run(step: Any, domain: Domain, dc: str) -> Any:
    return run_steps(step, lambda request: domain.entry(dc, request[0]))


def test_the_role_owner_is_read_from_the_server_itself_and_compared_with_its_own_name():
    domain = Domain("dc1", "dc2")
    assert run(confirm_pdc("OU=People," + HEAD, url("dc1")), domain, "dc1") == ntds("dc1")
    assert [dn for _dc, dn in domain.reads] == ["", HEAD]  # the domain head, not base_dn
    with pytest.raises(NotThePdc, match="not the PDC emulator"):
        run(confirm_pdc(HEAD, url("dc2")), domain, "dc2")  # a URL that reached another DC
    domain.move("dc2")
    with pytest.raises(NotThePdc, match=r"dc1\.ad\.test.*CN=DC2"):
        run(confirm_pdc(HEAD, url("dc1")), domain, "dc1")  # the role moved away
    assert run(confirm_pdc(HEAD, url("dc2")), domain, "dc2") == ntds("dc2")
    assert issubclass(NotThePdc, DirectoryUnavailable)  # a refused login, never a write elsewhere


def test_the_same_dn_in_another_spelling_is_the_same_server():
    domain = Domain("dc1")
    domain.views["dc1"] = ntds("dc1").lower().replace(",", ", ")
    assert run(confirm_pdc(HEAD, url("dc1")), domain, "dc1")


def test_a_domain_head_without_role_owner_is_no_pdc():
    def no_owner(request: Any) -> SearchEntry | None:
        if request[0] == "":
            return SearchEntry("", {"dsservicename": [ntds("dc1").encode()]})
        return SearchEntry(HEAD, {})

    with pytest.raises(NotThePdc, match="no fSMORoleOwner"):
        run_steps(confirm_pdc(HEAD, url("dc1")), no_owner)


# -- the gateway's pool ----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_role_moved_while_the_old_holder_is_up_is_noticed_within_the_period(monkeypatch):
    domain, clock = Domain("dc1", "dc2"), Clock()
    pool, opened = write_pool(monkeypatch, domain, clock, size=2)
    first = await pool.connection()
    assert first.url.url == url("dc1")  # found by dNSHostName through dc2
    clock.advance(10)
    second = await pool.connection()
    assert second.dc == "dc1" and second is not first
    reads = len(domain.reads)
    clock.advance(20)
    assert {await pool.connection() for _ in range(4)} == {first, second}
    assert len(domain.reads) == reads  # no check within the period
    domain.move("dc2")
    clock.advance(40)  # both connections were last checked over 60 s ago
    now = await pool.connection()
    assert now.url.url == url("dc2") and now.connected
    assert [c.dc for c in opened if c.connected] == ["dc2"]  # both dc1 connections closed
    assert ("dc1", HEAD) in domain.reads[reads:]  # asked the old holder, which knew
    clock.advance(59)
    assert (await pool.connection()).dc == "dc2"


@pytest_twisted.ensureDeferred
async def test_otp_state_fails_closed_until_the_readers_know_the_new_owner(monkeypatch):
    """dc3, which discovery asks, has not heard of the move yet: nothing goes to dc1."""
    domain, clock = Domain("dc1", "dc2", "dc3"), Clock()
    pool, opened = write_pool(monkeypatch, domain, clock, reader="dc3")
    assert (await pool.connection()).dc == "dc1"
    domain.move("dc2", "dc1", "dc2")
    clock.advance(60)
    for _ in range(2):
        with pytest.raises(NotThePdc):
            await pool.connection()
    assert not any(c.connected for c in opened)
    domain.move("dc2", "dc3")  # replicated
    assert (await pool.connection()).dc == "dc2"


@pytest_twisted.ensureDeferred
async def test_callers_during_a_check_wait_for_it_and_share_its_verdict(monkeypatch):
    domain, clock = Domain("dc1", "dc2"), Clock()
    pool, _opened = write_pool(monkeypatch, domain, clock)  # one connection, being checked
    await pool.connection()
    domain.move("dc2")
    clock.advance(60)
    domain.gate = defer.Deferred()
    waiting = [defer.ensureDeferred(pool.connection()) for _ in range(3)]
    assert not any(d.called for d in waiting)
    gate, domain.gate = domain.gate, None
    gate.callback(None)
    got = [await d for d in waiting]
    assert {c.dc for c in got} == {"dc2"}
    assert sum(1 for dc, dn in domain.reads if (dc, dn) == ("dc1", HEAD)) == 2  # open + recheck


@pytest_twisted.ensureDeferred
async def test_a_check_that_loses_its_server_fails_closed_and_finds_it_again(monkeypatch):
    domain, clock = Domain("dc1", "dc2"), Clock()
    pool, opened = write_pool(monkeypatch, domain, clock)
    await pool.connection()
    clock.advance(60)
    domain.down.add("dc1")
    with pytest.raises(DirectoryUnavailable):
        await pool.connection()
    with pytest.raises(DirectoryUnavailable):
        await pool.connection()  # rediscovered: still dc1, still down
    domain.down.clear()
    assert (await pool.connection()).dc == "dc1"
    assert [c.connected for c in opened] == [False, True]


@pytest_twisted.ensureDeferred
async def test_a_pool_without_recheck_never_reads_again(monkeypatch):
    domain, clock = Domain("dc1", "dc2"), Clock()
    pool, _opened = write_pool(monkeypatch, domain, clock)
    pool.recheck = 0
    first = await pool.connection()
    reads = len(domain.reads)
    clock.advance(3600)
    assert await pool.connection() is first and len(domain.reads) == reads


# -- the CLI ------------------------------------------------------------------------------------


def ad_config(**directory: Any) -> Any:
    doc = {
        "directory": {"profile": "ad", "urls": [url("dc2")], "base_dn": HEAD,
                      "bind_dn": "CN=svc," + HEAD, "bind_password": "pw", "start_tls": True,
                      "state_dn": "OU=s," + HEAD, **directory},
        "vault": {"keyring": "keyring.json"},
    }
    return parse_config(doc, Path("/etc/otpgate"))


class SyncConn:
    def __init__(self, domain: Domain, text: str) -> None:
        self.domain = domain
        self.url = LdapUrl.parse(text)
        self.dc = self.url.host.split(".")[0]
        self.closed = False

    def search(self, base: str, _filter: str, _attributes: Any, scope: int = 0) -> list:
        found = self.domain.entry(self.dc, base)
        return [found] if found else []

    def close(self) -> None:
        self.closed = True


def test_the_cli_checks_its_write_server_the_same_way(monkeypatch):
    domain = Domain("dc1", "dc2")
    now = [1000.0]
    opened: list[SyncConn] = []

    def connect(where: LdapUrl, *_args: Any) -> SyncConn:
        opened.append(SyncConn(domain, where.url))
        return opened[-1]

    monkeypatch.setattr(ldap3conn, "connect", connect)
    monkeypatch.setattr(ldap3conn.time, "monotonic", lambda: now[0])
    directory = ldap3conn.SyncDirectory(ad_config().directory)
    first = directory.write()
    assert first.dc == "dc1"
    domain.move("dc2")
    now[0] += 59
    assert directory.write() is first
    now[0] += 1
    second = directory.write()
    assert second.dc == "dc2" and first.closed
    assert directory.write_urls == [url("dc2")]


def test_pdc_check_seconds_is_a_bounded_period():
    assert ad_config().directory.pdc_check_seconds == 60
    assert ad_config(pdc_check_seconds=5).directory.pdc_check_seconds == 5
    for wrong in (0, -1, 3601):
        with pytest.raises(ConfigError, match="pdc_check_seconds"):
            ad_config(pdc_check_seconds=wrong)
