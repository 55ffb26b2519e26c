"""Rolling out with real clients (ldapwhoami/ldapsearch, radclient) against slapd and Samba AD:

* a report-only listener next to an enforcing one: a user without a token binds with her
  password alone there (and only there), and the audit says what enforcement would have
  done; a user with a token may try it (the code is spent), a wrong code is refused and
  counted, a replayed one refused;
* a report-only NAS (``enforce = false``) next to an enforcing one, same rules;
* a pattern exemption (``uid=svc-*``/``CN=svc-*``) and an exemption that ends: the gateway's
  clock is moved past its date (no sleep), after which the account needs a code and the
  audit names the exemption that ended.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue

from otpgate.ldapproxy.listeners import proxy_listeners
from otpgate.otp.oath import hotp
from otpgate.service import Gateway
from otpgate.vault import Keyring
from tests.integration.backends import USER_PASSWORD
from tests.integration.proxyhelp import CLIENT_ENV
from tests.integration.test_radius import client_table, enroll, pap, replies, start_radius
from tests.integration.test_radius_access_pin import pyrad_from
from tests.netutil import free_port
from tests.servers import make_server_tls

PW = USER_PASSWORD
DAY = 86400.0

pytestmark = pytest.mark.parametrize("backend", ["slapd-stock", "samba"], indirect=True)


class ShiftedClock:
    """The reactor's time moved by ``offset`` seconds: the pipeline's clock in a test that
    must see tomorrow without waiting for it."""

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset

    def seconds(self) -> float:
        return reactor.seconds() + self.offset


def proxy_section(tmp_path: Any, listen: list[str], **more: Any) -> dict[str, Any]:
    """``[ldap_proxy]`` with plain loopback listeners ``listen`` (and a certificate)."""
    tls = make_server_tls(tmp_path / "proxy-tls")
    return {
        "listen": listen,
        "cert_file": str(tls.cert_file),
        "key_file": str(tls.key_file),
        "require_tls_for_binds": False,
        **more,
    }


class Listeners:
    def __init__(self, backend: Any, tmp_path: Any, **sections: Any) -> None:
        self.report = f"tcp:{free_port()}:interface=127.0.0.1"
        self.enforced = f"tcp:{free_port()}:interface=127.0.0.1"
        rules = {self.report: {"name": "rollout", "enforce": False}}
        proxy = proxy_section(tmp_path, [self.report, self.enforced], listener_rules=rules)
        self.start(backend, backend.config(ldap_proxy=proxy, **sections))

    def start(self, backend: Any, config: Any) -> None:
        """A gateway of ``config`` with its LDAP listeners running; its audit events kept."""
        self.backend = backend
        self.config = config
        self.gateway = Gateway(self.config, Keyring.load(backend.keyring), reactor)
        self.services = proxy_listeners(self.gateway, reactor, shared=False)
        for service in self.services:
            service.startService()
        self.events: list[dict[str, Any]] = []
        self.gateway.audit.observers.append(self.events.append)

    async def bind(self, listen: str, dn: str, secret: str) -> int:
        """ldapwhoami through the listener (Samba has no Who Am I?: a base search of the root
        DSE after the bind, with ldapsearch)."""
        url = f"ldap://127.0.0.1:{listen.split(':')[1]}"
        args = ["-x", "-H", url, "-D", dn, "-w", secret]
        command = "/usr/bin/ldapwhoami"
        if self.backend.is_ad:
            command, args = "/usr/bin/ldapsearch", [*args, "-s", "base", "-b", "", "objectClass"]
        _out, _err, code = await getProcessOutputAndValue(
            command, args, env={**os.environ, **CLIENT_ENV}
        )
        return int(code)

    async def enroll(self, name: str) -> bytes:
        from otpgate.admin.enrollment import enroll_change, new_oath_token
        from otpgate.tokens import TokenType

        user = await self.gateway.store.resolve(name)
        token, secret = new_oath_token(self.config.otp, TokenType.HOTP)
        await self.gateway.store.update(user, lambda s: enroll_change(s, token, secret, 5))
        return secret.key

    async def failures(self, name: str) -> int:
        user = await self.gateway.store.resolve(name, fresh=True)
        return self.gateway.store.decode(user).used.failures

    async def stop(self) -> None:
        for service in self.services:
            await service.stopService()
        self.gateway.close()


@pytest_twisted.ensureDeferred
async def test_a_report_only_listener_beside_an_enforcing_one(backend, tmp_path):
    ways = Listeners(backend, tmp_path)
    try:
        _name, dn = backend.new_user("ro")
        # No token: the password alone passes the report-only listener, and only it.
        assert await ways.bind(ways.report, dn, PW) == 0
        event = ways.events[-1]
        assert event["outcome"] == "accept" and event["report_only"] is True
        assert event["reason"] == "report-only: would refuse: no token enrolled"
        assert event["policy"] == "otp" and event["enrolled"] is False
        assert event["channel"] == "rollout"
        assert await ways.bind(ways.enforced, dn, PW) == 49
        assert ways.events[-1]["reason"] == "no token enrolled"
        assert await ways.bind(ways.report, dn, "wrong" + PW) == 49  # the password is checked

        name, dn = backend.new_user("ro")
        key = await ways.enroll(name)
        assert await ways.bind(ways.report, dn, PW) == 0
        assert ways.events[-1]["reason"] == "report-only: would refuse: no valid code"
        assert ways.events[-1]["enrolled"] is True
        assert await ways.bind(ways.report, dn, PW + hotp(key, 0)) == 0  # tried: spent
        assert ways.events[-1]["token"] and "password+OTP accepted" in ways.events[-1]["reason"]
        assert await ways.bind(ways.enforced, dn, PW + hotp(key, 0)) == 49  # replay
        assert ways.events[-1]["reason"] == "OTP already used"
        assert await ways.bind(ways.report, dn, PW + hotp(key, 0)) == 49  # replay, report-only
        assert await ways.failures(name) == 0  # a spent code is no guess
        assert await ways.bind(ways.report, dn, PW + "000000") == 49  # a wrong code: refused
        assert ways.events[-1]["reason"].startswith("report-only: wrong OTP")
        assert await ways.failures(name) == 1  # ... and counted
        assert await ways.bind(ways.report, dn, PW) == 0  # the password alone counts nothing
        assert await ways.failures(name) == 1
        assert await ways.bind(ways.enforced, dn, PW + hotp(key, 1)) == 0
    finally:
        await ways.stop()


@pytest_twisted.ensureDeferred
async def test_a_report_only_nas_beside_an_enforcing_one(backend, tmp_path):
    clients = [
        client_table(name="rollout-nas", enforce=False),
        {**client_table(name="strict-nas"), "address": "127.0.0.2/32"},
    ]
    radius = await start_radius(backend, tmp_path, clients)
    events: list[dict[str, Any]] = []
    radius.gateway.audit.observers.append(events.append)
    try:
        name, _dn = backend.new_user("rr")
        _code, out, err = await radius.radclient(pap(name, PW))
        assert replies(out) == ["Access-Accept"], out + err
        assert events[-1]["reason"] == "report-only: would refuse: no token enrolled"
        assert events[-1]["channel"] == "rollout-nas" and events[-1]["report_only"] is True
        key = await enroll(radius, name)
        _code, out, err = await radius.radclient(pap(name, PW + "123456"))
        assert replies(out) == ["Access-Reject"], out + err  # a wrong code given: refused
        _code, out, err = await radius.radclient(pap(name, PW + hotp(key, 0)))
        assert replies(out) == ["Access-Accept"], out + err
        assert events[-1]["token"]
        _code, out, err = await radius.radclient(pap(name, PW + hotp(key, 0)))
        assert replies(out) == ["Access-Reject"], out + err  # no code is accepted twice
        # The enforcing NAS (127.0.0.2): the password alone is refused.
        reply = await pyrad_from(radius, "127.0.0.2", name, PW)
        assert reply is not None and reply.code == 3  # Access-Reject
        assert "report_only" not in events[-1] and events[-1]["channel"] == "strict-nas"
    finally:
        await radius.stop()


def _pattern_of(dn: str, prefix: str) -> str:
    """``uid=svc-ro12,ou=people,...`` -> ``uid=svc-ro*,ou=people,...`` (as written)."""
    first, rest = dn.split(",", 1)
    attribute = first.split("=", 1)[0]
    return f"{attribute}={prefix}*,{rest}"


@pytest_twisted.ensureDeferred
async def test_a_pattern_exemption_and_one_that_ends(backend, tmp_path):
    prefix = f"svc{os.getpid() % 1000}x"
    _n1, svc1 = backend.new_user(prefix)
    _n2, svc2 = backend.new_user(prefix)
    _n3, temp = backend.new_user("tmp")
    _n4, person = backend.new_user("per")
    today = datetime.datetime.now(datetime.UTC).date().isoformat()
    policy = {
        "exempt": [
            {"pattern": _pattern_of(svc1, prefix), "note": "sync jobs"},
            {"dn": temp, "until": today},  # through today, UTC
        ]
    }
    ways = Listeners(backend, tmp_path, policy=policy)
    clock = ShiftedClock()
    ways.gateway.authenticator.clock = clock
    try:
        for svc in (svc1, svc2):
            assert await ways.bind(ways.enforced, svc, PW) == 0, svc
            assert ways.events[-1]["reason"].startswith("exempt: pattern ")
        assert await ways.bind(ways.enforced, person, PW) == 49  # not covered by the pattern
        assert await ways.bind(ways.enforced, temp, PW) == 0
        assert ways.events[-1]["reason"] == f"exempt: dn {temp} until {today}: password accepted"
        clock.offset = DAY  # tomorrow: that exemption is gone, the pattern stays
        assert await ways.bind(ways.enforced, temp, PW) == 49
        event = ways.events[-1]
        assert event["policy"] == f"otp (exemption dn {temp} ended {today})", event
        assert event["reason"] == "no token enrolled"
        assert await ways.bind(ways.enforced, svc2, PW) == 0
    finally:
        await ways.stop()


@pytest_twisted.ensureDeferred
async def test_grace_for_a_group_until_a_date_and_never_after_a_reset(backend, tmp_path):
    """Members of a grace group who never enrolled bind with the password alone through the
    enforcing listener until the date; a member whose tokens were reset (a lost phone) needs
    her code again: with a phished password, the reset does not put her back in the grace."""
    from otpgate.admin.manage import reset_change
    from tests.integration.test_radius_access_pin import new_group

    newbie_name, newbie = backend.new_user("grn")
    lost_name, lost = backend.new_user("grl")
    group = new_group(backend, "grace", [newbie, lost])
    today = datetime.datetime.now(datetime.UTC).date().isoformat()
    ways = Listeners(backend, tmp_path, policy={"grace": [{"group": group, "until": today}]})
    clock = ShiftedClock()
    ways.gateway.authenticator.clock = clock
    try:
        assert await ways.bind(ways.enforced, newbie, PW) == 0
        assert ways.events[-1]["policy"].startswith("grace: not yet enrolled")
        key = await ways.enroll(lost_name)
        assert await ways.bind(ways.enforced, lost, PW) == 49  # enrolled: the code is needed
        assert await ways.bind(ways.enforced, lost, PW + hotp(key, 0)) == 0
        user = await ways.gateway.store.resolve(lost_name, fresh=True)
        await ways.gateway.store.update(user, reset_change)
        assert await ways.bind(ways.enforced, lost, PW) == 49
        assert ways.events[-1]["reason"].startswith("no token enrolled (grace does not apply")
        clock.offset = DAY  # tomorrow: the grace is over for the newcomer too
        assert await ways.bind(ways.enforced, newbie, PW) == 49
        assert ways.events[-1]["reason"] == f"no token enrolled (grace for {group} ended {today})"
        assert newbie_name  # never enrolled
    finally:
        await ways.stop()
