"""Per-NAS and per-listener access rules, and the PIN before the code, with real clients
(radclient, radtest, pyrad, ldapwhoami, a throwaway FreeRADIUS) against slapd and Samba AD.

* a user outside a NAS's allowed group is refused before her code is looked at: the same
  code then works on another NAS; deny wins over allow; a group inside the allowed group
  counts on AD (tokenGroups); every refusal audited with its reason;
* an LDAP listener restricted to a group: others get invalidCredentials (ldapwhoami) and
  the audit says why; the old listener form next to it is open;
* the PIN: set with ``otpgate pin`` (standard input); otp-only, CHAP (radclient, radtest) and
  MS-CHAPv2 (radclient; the same request to FreeRADIUS, whose users file holds PIN + code,
  is accepted too) take PIN + code; the code alone is refused where ``require_pin``, and
  counted like a wrong code.

``radtest -t mschap`` sends MS-CHAP v1 (MS-CHAP-Response), which otpgate does not serve:
the MS-CHAPv2 requests are radclient attribute files, as in test_radius.py.
"""

from __future__ import annotations

import io
import itertools
import os
import time
from typing import Any

import pytest
import pytest_twisted
from pyrad import packet as pp
from pyrad.client import Client, Timeout
from pyrad.dictionary import Dictionary
from twisted.internet import reactor, threads
from twisted.internet.utils import getProcessOutputAndValue

from bench.radius_freeradius import FreeRadius
from otpgate.admin.enrollment import enroll_change, new_oath_token
from otpgate.admin.pin import set_pin_change
from otpgate.ldapproxy.listeners import proxy_listeners
from otpgate.otp.oath import hotp, totp
from otpgate.service import Gateway
from otpgate.tokens import TokenType
from otpgate.vault import Keyring
from tests.integration.backends import USER_PASSWORD
from tests.integration.proxyhelp import CLIENT_ENV
from tests.integration.test_radius import (
    RADTEST,
    SECRET,
    Radius,
    client_table,
    enroll,
    mschapv2_attributes,
    pap,
    replies,
    start_radius,
)
from tests.netutil import free_port
from tests.servers import make_server_tls

PW = USER_PASSWORD
PIN = "4711"
_tags = itertools.count(1)

pytestmark = pytest.mark.parametrize("backend", ["slapd-stock", "samba"], indirect=True)


def new_group(backend: Any, prefix: str, members: list[str]) -> str:
    tag = f"{prefix}{os.getpid()}x{int(time.time()) % 10**6}x{next(_tags)}"
    if backend.is_ad:
        return str(backend.server.create_group(tag, members))
    return str(backend.server.add_group(tag, members))


def rejects(events: list[dict[str, Any]]) -> list[str]:
    return [str(e["reason"]) for e in events if e["outcome"] == "reject"]


async def pyrad_from(radius: Radius, source: str, name: str, password: str) -> Any:
    """One PAP request sent from ``source`` (another NAS address on loopback)."""

    def send() -> Any:
        client = Client("127.0.0.1", authport=radius.port, secret=SECRET.encode(),
                        dict=Dictionary(), retries=1, timeout=3, enforce_ma=True)
        client.bind((source, 0))
        pkt = client.CreateAuthPacket()
        pkt.authenticator = pp.Packet.CreateAuthenticator()
        pkt[1] = [name.encode()]
        pkt[2] = [pkt.PwCrypt(password)]
        try:
            return client.SendPacket(pkt)
        except Timeout:
            return None

    return await threads.deferToThread(send)


async def set_pin(radius: Radius, name: str, pin: str = PIN) -> None:
    gw = radius.gateway
    user = await gw.store.resolve(name, fresh=True)
    await gw.store.update(user, lambda s: set_pin_change(s, pin, time.time()))


def chap(name: str, typed: str) -> str:  # radclient computes CHAP from the cleartext
    return f'User-Name = "{name}"\nCHAP-Password = "{typed}"\nMessage-Authenticator = 0x00\n'


# -- per-NAS rules -----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_nas_rules_refuse_before_the_code_is_spent(backend, tmp_path):
    alice, alice_dn = backend.new_user("nasok")
    bob, bob_dn = backend.new_user("nasdeny")
    carol, _carol_dn = backend.new_user("nasout")
    if backend.is_ad:  # nested: alice is in a group that is in the allowed group
        inner = new_group(backend, "inner", [alice_dn])
        vpn = new_group(backend, "vpn", [inner, bob_dn])
    else:
        vpn = new_group(backend, "vpn", [alice_dn, bob_dn])
    contractors = new_group(backend, "contr", [bob_dn])
    restricted = client_table("otp-only", name="vpn", allow_groups=[vpn],
                              deny_groups=[contractors])
    other = {"address": "127.0.0.2/32", "secret": SECRET, "mode": "otp-only", "name": "open"}
    radius = await start_radius(backend, tmp_path, [restricted, other])
    events: list[dict[str, Any]] = []
    radius.gateway.audit.observers.append(events.append)
    try:
        keys = {n: await enroll(radius, n) for n in (alice, bob, carol)}
        # carol is in no group: refused before her code is looked at ...
        _c, out, err = await radius.radclient(pap(carol, hotp(keys[carol], 0)))
        assert replies(out) == ["Access-Reject"], out + err
        assert rejects(events)[-1] == f"not allowed on NAS vpn: not a member of {vpn}"
        # ... so the very same code works through another NAS.
        reply = await pyrad_from(radius, "127.0.0.2", carol, hotp(keys[carol], 0))
        assert reply is not None and reply.code == pp.AccessAccept
        # bob is allowed and denied: deny wins.
        _c, out, err = await radius.radclient(pap(bob, hotp(keys[bob], 0)))
        assert replies(out) == ["Access-Reject"], out + err
        assert rejects(events)[-1] == f"not allowed on NAS vpn: member of {contractors}"
        # alice (on AD through the nested group) passes; her code is spent as usual.
        _c, out, err = await radius.radclient(pap(alice, hotp(keys[alice], 0)))
        assert replies(out) == ["Access-Accept"], out + err
        _c, out, err = await radius.radclient(pap(alice, hotp(keys[alice], 0)))
        assert replies(out) == ["Access-Reject"], out + err  # spent
        # Nothing was counted against the refused users.
        store = radius.gateway.store
        for name in (bob, carol):
            assert store.decode(await store.resolve(name, fresh=True)).used.failures == 0
    finally:
        await radius.stop()


# -- per-listener rules (LDAP) -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_restricted_ldap_listener_refuses_others(backend, tmp_path):
    member, member_dn = backend.new_user("lstok")
    outsider, outsider_dn = backend.new_user("lstout")
    app = new_group(backend, "appusers", [member_dn])
    restricted = f"tcp:{free_port()}:interface=127.0.0.1"
    plain = f"tcp:{free_port()}:interface=127.0.0.1"
    tls = make_server_tls(tmp_path / "proxy-tls")
    config = backend.config(ldap_proxy={
        "listen": [restricted, plain],
        "cert_file": str(tls.cert_file), "key_file": str(tls.key_file),
        "require_tls_for_binds": False,
        "listener_rules": {restricted: {"name": "app", "allow_groups": [app]}},
    })
    gateway = Gateway(config, Keyring.load(backend.keyring), reactor)
    services = proxy_listeners(gateway, reactor, shared=False)
    for service in services:
        service.startService()
    events: list[dict[str, Any]] = []
    gateway.audit.observers.append(events.append)

    async def whoami(listen: str, dn: str, secret: str) -> tuple[int, str]:
        """ldapwhoami through the listener (Samba has no Who Am I?: there a base search of
        the root DSE after the bind, with ldapsearch)."""
        url = f"ldap://127.0.0.1:{listen.split(':')[1]}"
        args = ["-x", "-H", url, "-D", dn, "-w", secret]
        command = "/usr/bin/ldapwhoami"
        if backend.is_ad:
            command, args = "/usr/bin/ldapsearch", [*args, "-s", "base", "-b", "", "objectClass"]
        out, err, code = await getProcessOutputAndValue(
            command, args, env={**os.environ, **CLIENT_ENV})
        return code, (out + err).decode()

    try:
        keys = {}
        for name in (member, outsider):
            user = await gateway.store.resolve(name)
            token, secret = new_oath_token(config.otp, TokenType.HOTP)
            await gateway.store.update(user, lambda s, t=token, k=secret: enroll_change(s, t, k, 5))
            keys[name] = secret.key
        code, text = await whoami(restricted, outsider_dn, PW + hotp(keys[outsider], 0))
        assert code == 49 and "Invalid credentials" in text, text
        assert rejects(events)[-1] == f"not allowed on listener app: not a member of {app}"
        # The same code on the listener without rules (the old form): accepted, unspent.
        code, text = await whoami(plain, outsider_dn, PW + hotp(keys[outsider], 0))
        assert code == 0, text
        code, text = await whoami(restricted, member_dn, PW + hotp(keys[member], 0))
        assert code == 0, text
    finally:
        for service in services:
            await service.stopService()
        gateway.close()


# -- the PIN ---------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_pin_before_the_code_in_otp_only_chap_and_mschapv2(backend, tmp_path, monkeypatch,
                                                                 capsys):
    from otpgate.cli import main
    from tests.integration.test_cli import write_config

    strict = client_table("otp-only", name="vpn", allow_chap=True, allow_mschapv2=True,
                          require_pin=True)
    lax = {"address": "127.0.0.2/32", "secret": SECRET, "mode": "otp-only", "name": "lax"}
    radius = await start_radius(backend, tmp_path, [strict, lax])
    events: list[dict[str, Any]] = []
    radius.gateway.audit.observers.append(events.append)
    fr = None
    try:
        name, _dn = backend.new_user("pin")
        key = await enroll(radius, name)
        totp_user, _ = backend.new_user("pintotp")
        totp_key = await enroll(radius, totp_user, TokenType.TOTP)
        # No PIN yet: require_pin refuses the code alone, before it is tried.
        _c, out, err = await radius.radclient(pap(name, hotp(key, 0)))
        assert replies(out) == ["Access-Reject"], out + err
        assert rejects(events)[-1] == "no PIN set (NAS vpn requires one)"
        # The PIN, set with the CLI from standard input.
        cli_config = write_config(tmp_path / "pin.toml", {
            "directory": backend.directory_section(),
            "vault": {"keyring": str(backend.keyring)},
        })
        monkeypatch.setattr("sys.stdin", io.StringIO(PIN + "\n"))
        assert main(["pin", name, "--set", "--config", str(cli_config)]) == 0
        assert "PIN set" in capsys.readouterr().out
        await set_pin(radius, totp_user)
        # otp-only: PIN + code; the code alone and a wrong PIN are refused and counted.
        _c, out, err = await radius.radclient(pap(name, hotp(key, 0)))
        assert replies(out) == ["Access-Reject"], out + err
        _c, out, err = await radius.radclient(pap(name, "9999" + hotp(key, 0)))
        assert replies(out) == ["Access-Reject"], out + err
        assert rejects(events)[-2:] == ["wrong PIN or OTP", "wrong PIN or OTP"]
        store = radius.gateway.store
        assert store.decode(await store.resolve(name, fresh=True)).used.failures == 2
        _c, out, err = await radius.radclient(pap(name, PIN + hotp(key, 0)))
        assert replies(out) == ["Access-Accept"], out + err  # that code was never spent
        # On the NAS without require_pin the PIN is still needed: the user has one.
        reply = await pyrad_from(radius, "127.0.0.2", name, hotp(key, 1))
        assert reply is not None and reply.code == pp.AccessReject
        # CHAP (radclient and radtest): PIN + code.
        _c, out, err = await radius.radclient(chap(name, hotp(key, 1)))
        assert replies(out) == ["Access-Reject"], out + err
        assert rejects(events)[-1] == "no valid PIN+OTP matches the proof"
        _c, out, err = await radius.radclient(chap(name, PIN + hotp(key, 1)))
        assert replies(out) == ["Access-Accept"], out + err
        now = reactor.seconds()
        args = ["-t", "chap", totp_user, PIN + totp(totp_key, now), radius.address, "0", SECRET]
        out_b, err_b, _code = await getProcessOutputAndValue(RADTEST, args, env=dict(os.environ))
        assert "Received Access-Accept" in out_b.decode(), out_b.decode() + err_b.decode()
        # MS-CHAPv2: PIN + code; FreeRADIUS with PIN + code as the password agrees.
        code = hotp(key, 2)
        request, _, _ = mschapv2_attributes(name, code)
        _c, out, err = await radius.radclient(request)
        assert replies(out) == ["Access-Reject"], out + err
        fr = FreeRadius(tmp_path / "freeradius", {name: PIN + code}, SECRET)
        await threads.deferToThread(fr.start)
        request, _, _ = mschapv2_attributes(name, PIN + code)
        _c, ref_out, ref_err = await radius.radclient(request, port=fr.port)
        assert replies(ref_out) == ["Access-Accept"], ref_out + ref_err
        _c, out, err = await radius.radclient(request, "-x")
        assert replies(out) == ["Access-Accept"], out + err
        assert "MS-CHAP2-Success" in out
        assert not [e for e in events if PIN in repr(e.get("reason"))]  # never audited
        # otpgate show says it is set (never what it is); --clear removes it.
        assert main(["show", name, "--config", str(cli_config)]) == 0
        shown = capsys.readouterr().out
        assert "PIN: set " in shown and PIN not in shown.replace(name, "")
        assert main(["pin", name, "--clear", "--config", str(cli_config)]) == 0
        assert "PIN cleared" in capsys.readouterr().out
        _c, out, err = await radius.radclient(pap(name, PIN + hotp(key, 3)))
        assert replies(out) == ["Access-Reject"], out + err
        assert rejects(events)[-1] == "no PIN set (NAS vpn requires one)"
    finally:
        if fr is not None:
            fr.stop()
        await radius.stop()
