"""The attacker on the path to the directory who cuts exactly the writes of failed logins,
so that no failure is ever recorded, still meets the lockout: on a real slapd, through the
LDAP proxy, for codes and for app passwords (each on its own counter).  A failure whose
write has an unknown outcome counts on the gateway that decided it.

slapd only: the relay reads the operation in plain LDAP (Samba is spoken to over LDAPS,
where the attacker would tell the writes apart by their length instead)."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
import pytest_twisted
from twisted.internet import reactor, task

from otpgate.otp.oath import hotp
from tests.integration.backends import USER_PASSWORD
from tests.integration.test_app_password_logins import WRONG, AppListeners
from tests.servers.cutrelay import CutRelay

PW = USER_PASSWORD
SLAPD = pytest.mark.parametrize("backend", ["slapd-stock"], indirect=True)
UNAVAILABLE = 52


def relayed(backend) -> tuple[CutRelay, dict[str, object]]:
    """A relay to the backend's slapd, and the directory settings that go through it."""
    target = urlsplit(backend.server.url)
    relay = CutRelay(target.hostname or "127.0.0.1", target.port or 389)
    return relay, {"urls": [relay.url], "start_tls": False}


async def cut_failures(ways: AppListeners, relay: CutRelay, dn: str, secret: str,
                       wanted: int) -> None:
    """Wrong logins, their writes cut, until ``wanted`` were decided and cut (a login whose
    lookup found the connection gone decided nothing and is not counted)."""
    relay.cutting = True
    counted = 0
    for _ in range(wanted * 20):
        before = relay.cut
        code = await ways.bind(ways.mail, dn, secret)
        if relay.cut > before:
            assert code == UNAVAILABLE, code  # the outcome is unknown: no answer either way
            counted += 1
            if counted == wanted:
                break
        else:
            await task.deferLater(reactor, 0.2, lambda: None)  # the pool reconnects
    relay.cutting = False
    assert counted == wanted, (counted, relay.cut)


def wrong_code(key: bytes) -> str:
    return next(c for c in ("123456", "654321") if all(hotp(key, i) != c for i in range(100)))


@SLAPD
@pytest_twisted.ensureDeferred
async def test_cut_writes_of_wrong_app_passwords_still_lock_them(backend, tmp_path):
    relay, directory = relayed(backend)
    ways = AppListeners(backend, tmp_path, directory=directory)
    try:
        name, dn = backend.new_user("cutapp")
        secret, _ = await ways.create(name, "mail")
        key = await ways.enroll(name)
        await cut_failures(ways, relay, dn, WRONG, ways.config.lockout.max_failures)
        assert await ways.bind(ways.mail, dn, secret) == 49  # the right one: locked out
        assert ways.events[-1]["reason"] == "app passwords locked out", ways.events[-1]
        assert await ways.bind(ways.mail, dn, PW + hotp(key, 0)) == 0  # codes: their own count
    finally:
        await ways.stop()
        await relay.stop()


@SLAPD
@pytest_twisted.ensureDeferred
async def test_cut_writes_of_wrong_codes_still_lock_the_user(backend, tmp_path):
    relay, directory = relayed(backend)
    ways = AppListeners(backend, tmp_path, directory=directory)
    try:
        name, dn = backend.new_user("cutcode")
        key = await ways.enroll(name)
        wanted = ways.config.lockout.max_failures
        await cut_failures(ways, relay, dn, PW + wrong_code(key), wanted)
        assert await ways.bind(ways.mail, dn, PW + hotp(key, 0)) == 49  # the right code
        assert "locked out" in ways.events[-1]["reason"], ways.events[-1]
    finally:
        await ways.stop()
        await relay.stop()
