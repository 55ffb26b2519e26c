"""The gateway's state ACL guard over fake connections: when it refuses OTP state."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task
from twisted.internet.task import Clock

from otpgate.config import parse_config
from otpgate.directory.guard import RECHECK_SECONDS
from otpgate.directory.ldapdata import SearchEntry
from otpgate.errors import DirectoryError
from otpgate.errors import DirectoryUnavailable
from otpgate.directory.state_acl_guard import SelfWritableState, StateAclGuard
from tests.unit.test_olcaccess import SELF_WRITE, SERVICE, SHIPPED, SUFFIX, TYPES


class FakeServer:
    def __init__(self, rules: list[str]) -> None:
        self.rules = rules
        self.down = False
        self.config_readable = True

    def answer(self, base: str) -> list[SearchEntry]:
        if base == "":
            return [SearchEntry("", {"subschemasubentry": [b"cn=Subschema"]})]
        if base == "cn=Subschema":
            return [SearchEntry(base, {"attributetypes": [t.encode() for t in TYPES]})]
        if not self.config_readable:
            raise DirectoryError("insufficient access", 50)
        access = [f"{{{i}}}{r}".encode() for i, r in enumerate(self.rules)]
        return [
            SearchEntry("olcDatabase={-1}frontend,cn=config",
                        {"objectclass": [b"olcDatabaseConfig", b"olcFrontendConfig"]}),
            SearchEntry("olcDatabase={1}mdb,cn=config",
                        {"olcsuffix": [SUFFIX.encode()], "olcaccess": access}),
        ]


class FakeConn:
    def __init__(self, server: FakeServer) -> None:
        self.server = server

    async def search(self, base, _filter, _attributes, scope=0):
        if self.server.down:
            raise DirectoryUnavailable("gone")
        return self.server.answer(base)

    def close(self) -> None:
        pass


class FakePool:
    def __init__(self, servers: dict[str, FakeServer]) -> None:
        self.servers = servers
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
            "bind_dn": SERVICE,
            "bind_password": "pw",
            **directory,
        },
        "vault": {"keyring": "k.json"},
    }
    config = parse_config(doc, Path("/"))
    clock = Clock()
    clock.advance(1000)
    pool = FakePool(servers)
    return StateAclGuard(config.directory, pool, clock), pool, clock


@pytest_twisted.ensureDeferred
async def test_self_write_refuses_checks_once_and_rechecks_later():
    a = FakeServer([SELF_WRITE])
    guard, pool, clock = guard_for({"ldap://127.0.0.1:1": a})
    assert guard.active
    results = await defer.DeferredList(
        [defer.ensureDeferred(guard.check()) for _ in range(10)], consumeErrors=True
    )
    assert all(not ok and r.check(SelfWritableState) for ok, r in results)
    assert pool.opened == 1 and guard.refusing  # ten logins, one probe
    with pytest.raises(SelfWritableState, match=r"by self write.*homePostalAddress.*state_dn"):
        await guard.check()
    assert issubclass(SelfWritableState, DirectoryUnavailable)  # LDAP 52, no RADIUS accept
    a.rules = SHIPPED  # the site fixes its rules
    with pytest.raises(SelfWritableState):
        await guard.check()
    assert pool.opened == 1  # the verdict is kept...
    clock.advance(RECHECK_SECONDS)
    await guard.check()  # ...until the recheck
    assert not guard.refusing and pool.opened == 2
    a.rules = [SELF_WRITE]  # and the other way round: found at the next recheck
    clock.advance(RECHECK_SECONDS)
    with pytest.raises(SelfWritableState):
        await guard.check()


@pytest_twisted.ensureDeferred
async def test_every_server_must_prove_it_and_unreadable_config_refuses():
    a, b = FakeServer(SHIPPED), FakeServer(SHIPPED)
    b.config_readable = False
    guard, _pool, clock = guard_for({"ldap://127.0.0.1:1": a, "ldap://127.0.0.1:2": b})
    with pytest.raises(SelfWritableState, match=r"127.0.0.1:2: cannot be proven.*cn=config"):
        await guard.check()
    b.config_readable = True
    clock.advance(RECHECK_SECONDS)
    await guard.check()
    # a server that does not answer keeps its verdict...
    b.down = True
    clock.advance(RECHECK_SECONDS)
    await guard.check()
    b.rules, b.down = [SELF_WRITE], False
    clock.advance(RECHECK_SECONDS)
    with pytest.raises(SelfWritableState):
        await guard.check()
    b.down = True
    clock.advance(RECHECK_SECONDS)
    with pytest.raises(SelfWritableState):
        await guard.check()
    # ...one never judged (down at startup) refuses until it has shown safe rules: users may
    # reach it when the gateway cannot, and a value rolled back there replicates
    c = FakeServer(SHIPPED)
    c.down = True
    guard, _pool, clock = guard_for({"ldap://127.0.0.1:1": a, "ldap://127.0.0.1:3": c})
    with pytest.raises(SelfWritableState, match="127.0.0.1:3: cannot be proven: never answered"):
        await guard.check()
    c.down = False
    clock.advance(RECHECK_SECONDS)
    await guard.check()
    c.rules = [SELF_WRITE]
    clock.advance(RECHECK_SECONDS)
    with pytest.raises(SelfWritableState, match="127.0.0.1:3"):
        await guard.check()


@pytest_twisted.ensureDeferred
async def test_nothing_answers_fails_closed_and_the_layouts_that_need_no_guard():
    a = FakeServer(SHIPPED)
    a.down = True
    guard, pool, _clock = guard_for({"ldap://127.0.0.1:1": a})
    with pytest.raises(DirectoryUnavailable, match="state ACL check"):
        await guard.check()
    a.down = False
    await guard.check()  # tried again at the next login
    assert pool.opened == 2 and not guard.refusing
    container, _, _ = guard_for({"ldap://127.0.0.1:1": a}, state_dn=f"ou=state,{SUFFIX}")
    accepted, _, _ = guard_for({"ldap://127.0.0.1:1": a}, allow_self_writable_state=True)
    assert not container.active and not accepted.active
    # write_url is judged too
    both, _, _ = guard_for({"ldap://127.0.0.1:1": a}, write_url="ldap://127.0.0.1:9")
    assert [u.url for u in both.urls] == ["ldap://127.0.0.1:1", "ldap://127.0.0.1:9"]


@pytest_twisted.ensureDeferred
async def test_startup_check_logs_once_and_keeps_the_verdict():
    from twisted.logger import globalLogPublisher

    said: list[str] = []

    def observer(event):
        if "users may write their own OTP state" in (event.get("log_format") or ""):
            said.append(event["log_format"])

    globalLogPublisher.addObserver(observer)
    try:
        guard, pool, _clock = guard_for({"ldap://127.0.0.1:1": FakeServer([SELF_WRITE])})
        assert await guard.check_at_startup() is None
        for _ in range(3):
            with pytest.raises(SelfWritableState):
                await guard.check()
        assert pool.opened == 1 and len(said) == 1
    finally:
        globalLogPublisher.removeObserver(observer)
