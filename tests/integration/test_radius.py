"""The RADIUS front end with real clients (radclient, radtest, pyrad), against slapd and Samba AD.

The server runs in the test's reactor on 127.0.0.1 (ephemeral UDP port); clients run as
subprocesses or in threads so they never block it.  Helpers here are also used by
test_radius_bulk.py and test_radius_mschap_xcheck.py.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from pyrad import packet as pp
from pyrad.client import Client, Timeout
from pyrad.dictionary import Dictionary
from twisted.internet import reactor, threads
from twisted.internet.utils import getProcessOutputAndValue

from otpgate.admin.enrollment import enroll_change, new_oath_token
from otpgate.admin.manage import scratch_change
from otpgate.otp.oath import hotp, totp
from otpgate.otp.scratch import generate_scratch_list
from otpgate.radius.chap import generate_nt_response
from otpgate.radius.binds import BindPool
from otpgate.radius.server import RadiusServer
from otpgate.radius.service import build_server
from otpgate.service import Gateway
from otpgate.tokens import TokenType
from otpgate.vault import Keyring
from tests.integration.backends import USER_PASSWORD

PW = USER_PASSWORD
SECRET = "radius-test-secret-0123456789"
WRONG_SECRET = "not-the-right-secret-98765"
RADCLIENT = "/usr/bin/radclient"
RADTEST = "/usr/bin/radtest"


@dataclass
class Radius:
    gateway: Gateway
    server: RadiusServer
    port: int
    listening: Any
    tmp: Path
    pool: BindPool | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def stop(self) -> None:
        await self.listening.stopListening()
        if self.pool is not None:
            self.pool.close()
        self.gateway.close()

    async def radclient(
        self, requests: str, *options: str, secret: str = SECRET, command: str = "auth",
        port: int | None = None,
    ) -> tuple[int, str, str]:
        """radclient with ``requests`` (blank-line separated attribute lists) from a file.

        ``port``: send to another server on 127.0.0.1 instead (a reference FreeRADIUS).
        """
        path = self.tmp / f"radclient-{os.urandom(4).hex()}.txt"
        path.write_text(requests)
        target = self.address if port is None else f"127.0.0.1:{port}"
        args = [*options, "-f", str(path), target, command, secret]
        out, err, code = await getProcessOutputAndValue(RADCLIENT, args, env=dict(os.environ))
        return code, out.decode(), err.decode()

    async def pyrad(self, build: Any, *, secret: str = SECRET, timeout: float = 3.0) -> Any:
        """Send one request with pyrad's blocking client in a thread; the reply or None."""

        def send() -> Any:
            client = Client("127.0.0.1", authport=self.port, secret=secret.encode(),
                            dict=Dictionary(), retries=1, timeout=timeout, enforce_ma=True)
            pkt = client.CreateAuthPacket()
            pkt.authenticator = pp.Packet.CreateAuthenticator()
            build(pkt)
            try:
                return client.SendPacket(pkt)
            except Timeout:
                return None

        return await threads.deferToThread(send)

    async def raw_exchange(self, datagrams: list[bytes], timeout: float = 3.0) -> list[bytes | None]:
        """Send datagrams one after the other from ONE socket, each waiting for its reply."""

        def run() -> list[bytes | None]:
            replies: list[bytes | None] = []
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(timeout)
                for data in datagrams:
                    sock.sendto(data, ("127.0.0.1", self.port))
                    try:
                        replies.append(sock.recv(4096))
                    except TimeoutError:
                        replies.append(None)
            return replies

        return await threads.deferToThread(run)


def client_table(mode: str = "append", **options: Any) -> dict[str, Any]:
    return {"address": "127.0.0.1/32", "secret": SECRET, "mode": mode, "name": "test-nas",
            **options}


async def start_radius(backend: Any, tmp_path: Path, clients: list[dict[str, Any]] | None = None,
                       directory: dict[str, Any] | None = None, **radius: Any) -> Radius:
    sections: dict[str, Any] = {}
    for name in ("otp", "lockout", "policy", "delivery"):
        if name in radius:
            sections[name] = radius.pop(name)
    config = backend.config(
        directory,
        radius={"listen": ["127.0.0.1:0"], "clients": clients or [client_table()], **radius},
        **sections,
    )
    gateway = Gateway(config, Keyring.load(backend.keyring), reactor)
    server, pool = build_server(gateway, reactor)  # as radius_services does (bind pool)
    listening = reactor.listenUDP(0, server.protocol(), interface="127.0.0.1")
    return Radius(gateway, server, listening.getHost().port, listening, tmp_path, pool)


async def enroll(radius: Radius, name: str, kind: TokenType = TokenType.HOTP,
                 key: bytes | None = None) -> bytes:
    gw = radius.gateway
    user = await gw.store.resolve(name)
    token, secret = new_oath_token(gw.config.otp, kind, key=key)
    await gw.store.update(user, lambda s: enroll_change(s, token, secret, 5))
    return secret.key


def pap(name: str, password: str, *extra: str, ma: bool = True) -> str:
    lines = [f'User-Name = "{name}"', f'User-Password = "{password}"', *extra]
    if ma:
        lines.append("Message-Authenticator = 0x00")
    return "\n".join(lines) + "\n"


def replies(out: str) -> list[str]:
    """Reply codes in radclient's output, in order."""
    return re.findall(r"Received (Access-\w+) Id", out)


SUMMARY = re.compile(r"Accepted\s*:\s*(\d+).*?Rejected\s*:\s*(\d+).*?Lost\s*:\s*(\d+)", re.S)


def summary(out: str) -> tuple[int, int, int]:
    found = SUMMARY.search(out)
    assert found, out
    accepted, rejected, lost = (int(x) for x in found.groups())
    return accepted, rejected, lost


# -- append mode ------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_append_accept_replay_reject_with_radclient_and_radtest(backend, tmp_path):
    radius = await start_radius(backend, tmp_path)
    try:
        name, _dn = backend.new_user("rad")
        key = await enroll(radius, name)
        code, out, err = await radius.radclient(pap(name, PW + hotp(key, 0)), "-x")
        assert replies(out) == ["Access-Accept"], out + err
        code, out, err = await radius.radclient(pap(name, PW + hotp(key, 0)))
        assert replies(out) == ["Access-Reject"], out + err  # replay: a new request, code spent
        code, out, err = await radius.radclient(pap(name, "wrong" + hotp(key, 1)))
        assert replies(out) == ["Access-Reject"], out + err  # right code, wrong password
        code, out, err = await radius.radclient(pap(name, PW + hotp(key, 1)))
        assert replies(out) == ["Access-Reject"], out + err  # ... and that code is spent
        code, out, err = await radius.radclient(pap(name, PW))
        assert replies(out) == ["Access-Reject"], out + err  # OTP required
        # radtest (which adds a Message-Authenticator)
        args = [name, PW + hotp(key, 2), radius.address, "0", SECRET]
        out_b, err_b, _code = await getProcessOutputAndValue(RADTEST, args, env=dict(os.environ))
        assert "Received Access-Accept" in out_b.decode(), out_b.decode() + err_b.decode()
        out_b, _err, _code = await getProcessOutputAndValue(RADTEST, args, env=dict(os.environ))
        assert "Received Access-Reject" in out_b.decode()
        assert radius.server.counters.accepted == 2 and radius.server.counters.rejected == 5
    finally:
        await radius.stop()


@pytest_twisted.ensureDeferred
async def test_pyrad_client_verifies_signed_replies_and_name_forms(backend, tmp_path):
    radius = await start_radius(backend, tmp_path)
    try:
        name, dn = backend.new_user("pyr")
        key = await enroll(radius, name)

        def build(user: str, password: str) -> Any:
            def fill(pkt: Any) -> None:
                pkt[1] = [user.encode()]
                pkt[2] = [pkt.PwCrypt(password)]
                pkt[33] = [b"proxy-state-1"]
            return fill

        for counter, user in enumerate([name, backend.upn(name), dn]):
            reply = await radius.pyrad(build(user, PW + hotp(key, counter)))
            assert reply is not None and reply.code == pp.AccessAccept, user
            assert reply.get(33) == [b"proxy-state-1"]  # Proxy-State copied back
        reply = await radius.pyrad(build(name, PW + hotp(key, 0)))
        assert reply is not None and reply.code == pp.AccessReject
    finally:
        await radius.stop()


@pytest_twisted.ensureDeferred
async def test_retransmission_gets_the_same_accept(backend, tmp_path):
    """RFC 5080: a NAS that resends a good login must get the Accept, not a replay Reject."""
    radius = await start_radius(backend, tmp_path)
    try:
        name, _dn = backend.new_user("retx")
        key = await enroll(radius, name)
        pkt = pp.AuthPacket(id=42, secret=SECRET.encode(), dict=Dictionary())
        pkt.authenticator = os.urandom(16)
        pkt[1] = [name.encode()]
        pkt[2] = [pkt.PwCrypt(PW + hotp(key, 0))]
        pkt.add_message_authenticator()
        raw = pkt.RequestPacket()
        first, again = await radius.raw_exchange([raw, raw])
        assert first is not None and first == again  # byte for byte: the cached reply
        reply = pp.AuthPacket(packet=first, secret=SECRET.encode(), dict=Dictionary())
        assert pkt.VerifyReply(reply, first, enforce_ma=True) and reply.code == pp.AccessAccept
        assert radius.server.counters.duplicates_answered == 1
        assert radius.server.counters.accepted == 1

        # radclient retransmitting while the password check takes longer than its timeout
        from twisted.internet.task import deferLater

        check = radius.server.handler.check_password

        async def slow_check(dn: str, password: bytes) -> tuple[int, str]:
            await deferLater(reactor, 2.5, lambda: None)
            return await check(dn, password)

        radius.server.handler.check_password = slow_check
        c = radius.server.counters
        code, out, err = await radius.radclient(pap(name, PW + hotp(key, 1)), "-t", "1",
                                                "-r", "10", "-x")
        assert replies(out) == ["Access-Accept"], out + err
        assert out.count("Sent Access-Request") >= 2, out  # it did retransmit
        assert c.accepted == 2  # verified once
        assert c.duplicates_in_flight >= 1
    finally:
        await radius.stop()


@pytest_twisted.ensureDeferred
async def test_missing_message_authenticator_and_wrong_secret_are_dropped(backend, tmp_path):
    radius = await start_radius(backend, tmp_path)
    try:
        name, _dn = backend.new_user("drop")
        key = await enroll(radius, name)
        c = radius.server.counters
        code, out, err = await radius.radclient(pap(name, PW + hotp(key, 0), ma=False),
                                                "-t", "0.5", "-r", "1")
        assert replies(out) == [] and code != 0, out + err
        assert c.dropped_missing_authenticator == 1
        _code, out, err = await radius.radclient(pap(name, PW + hotp(key, 0)), "-t", "0.5",
                                                 "-r", "1", secret=WRONG_SECRET)
        assert replies(out) == [], out + err
        assert c.dropped_bad_authenticator == 1
        reply = await radius.pyrad(lambda pkt: pkt.__setitem__(1, [name.encode()]),
                                   secret=WRONG_SECRET, timeout=0.5)
        assert reply is None and c.dropped_bad_authenticator == 2
        # none of it touched the OTP: the code still works
        _code, out, err = await radius.radclient(pap(name, PW + hotp(key, 0)))
        assert replies(out) == ["Access-Accept"], out + err
        assert c.accepted == 1 and c.rejected == 0
    finally:
        await radius.stop()


@pytest_twisted.ensureDeferred
async def test_status_server_and_unknown_client(backend, tmp_path):
    other = {"address": "192.0.2.0/24", "secret": SECRET}
    radius = await start_radius(backend, tmp_path, [other])
    try:
        _code, out, err = await radius.radclient("Message-Authenticator = 0x00\n", "-t", "0.5",
                                                 "-r", "1", command="status")
        assert replies(out) == [], out + err  # 127.0.0.1 is not a client here
        assert radius.server.counters.dropped_unknown_client == 1
    finally:
        await radius.stop()
    radius = await start_radius(backend, tmp_path)
    try:
        _code, out, err = await radius.radclient("Message-Authenticator = 0x00\n", "-x",
                                                 command="status")
        assert replies(out) == ["Access-Accept"], out + err
        assert radius.server.counters.status_server == 1
    finally:
        await radius.stop()


# -- challenge and otp-only modes ------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_challenge_flow_end_to_end(backend, tmp_path):
    radius = await start_radius(backend, tmp_path, [client_table("challenge")],
                                challenge_message="Code from your phone:")
    try:
        name, _dn = backend.new_user("chal")
        key = await enroll(radius, name)

        def first(password: str) -> Any:
            def fill(pkt: Any) -> None:
                pkt[1] = [name.encode()]
                pkt[2] = [pkt.PwCrypt(password)]
            return fill

        def second(state: bytes, code: str) -> Any:
            def fill(pkt: Any) -> None:
                pkt[1] = [name.encode()]
                pkt[2] = [pkt.PwCrypt(code)]
                pkt[24] = [state]
            return fill

        reply = await radius.pyrad(first("wrong-password"))
        assert reply.code == pp.AccessReject
        reply = await radius.pyrad(first(PW))
        assert reply.code == pp.AccessChallenge
        assert reply.get(18) == [b"Code from your phone:"]
        (state,) = reply.get(24)
        reply = await radius.pyrad(second(state, hotp(key, 0)))
        assert reply.code == pp.AccessAccept
        reply = await radius.pyrad(second(state, hotp(key, 1)))
        assert reply.code == pp.AccessReject  # the State is spent

        # a wrong code ends the challenge; the same State cannot try again
        reply = await radius.pyrad(first(PW))
        (state,) = reply.get(24)
        assert (await radius.pyrad(second(state, "000000"))).code == pp.AccessReject
        assert (await radius.pyrad(second(state, hotp(key, 1)))).code == pp.AccessReject

        # radclient answers a challenge with the State it got (hex), as a NAS would
        reply = await radius.pyrad(first(PW))
        (state,) = reply.get(24)
        request = pap(name, hotp(key, 1), f"State = 0x{state.hex()}")
        _code, out, err = await radius.radclient(request)
        assert replies(out) == ["Access-Accept"], out + err
        # the password alone never logs in
        _code, out, err = await radius.radclient(pap(name, PW + hotp(key, 2)))
        assert replies(out) == ["Access-Reject"], out + err  # password+code is not a password
    finally:
        await radius.stop()


@pytest_twisted.ensureDeferred
async def test_otp_only_mode_and_low_scratch_warning(backend, tmp_path):
    radius = await start_radius(backend, tmp_path, [client_table("otp-only")],
                                otp={"scratch_low_threshold": 5})
    try:
        name, _dn = backend.new_user("otponly")
        key = await enroll(radius, name)
        _code, out, err = await radius.radclient(pap(name, hotp(key, 0)))
        assert replies(out) == ["Access-Accept"], out + err
        _code, out, err = await radius.radclient(pap(name, hotp(key, 0)))
        assert replies(out) == ["Access-Reject"], out + err

        codes, scratch = generate_scratch_list(3, 8)
        user = await radius.gateway.store.resolve(name)
        await radius.gateway.store.update(user, lambda s: scratch_change(s, scratch, 0))
        _code, out, err = await radius.radclient(pap(name, codes[0]), "-x")
        assert replies(out) == ["Access-Accept"], out + err
        assert 'Reply-Message = "Only 2 scratch codes left: print a new list"' in out
    finally:
        await radius.stop()


# -- CHAP and MS-CHAPv2: OTP only, opt-in per client ------------------------------------------


@pytest_twisted.ensureDeferred
async def test_chap_otp_only(backend, tmp_path):
    radius = await start_radius(
        backend, tmp_path,
        [client_table(allow_chap=True),
         {"address": "127.0.0.2/32", "secret": SECRET, "name": "no-chap"}],
    )
    try:
        name, _dn = backend.new_user("chap")
        key = await enroll(radius, name, TokenType.TOTP)
        now = reactor.seconds()

        def chap(code: str) -> str:  # radclient computes CHAP from a cleartext CHAP-Password
            return f'User-Name = "{name}"\nCHAP-Password = "{code}"\nMessage-Authenticator = 0x00\n'

        _code, out, err = await radius.radclient(chap("000000" if totp(key, now) != "000000" else "111111"))
        assert replies(out) == ["Access-Reject"], out + err
        _code, out, err = await radius.radclient(chap(totp(key, now)))
        assert replies(out) == ["Access-Accept"], out + err
        _code, out, err = await radius.radclient(chap(totp(key, now)))
        assert replies(out) == ["Access-Reject"], out + err  # spent
        # radtest -t chap: the next period's code (inside the TOTP window) is accepted once
        args = ["-t", "chap", name, totp(key, now + 30), radius.address, "0", SECRET]
        out_b, _err, _code = await getProcessOutputAndValue(RADTEST, args, env=dict(os.environ))
        assert "Received Access-Accept" in out_b.decode(), out_b.decode()
        out_b, _err, _code = await getProcessOutputAndValue(RADTEST, args, env=dict(os.environ))
        assert "Received Access-Reject" in out_b.decode(), out_b.decode()
    finally:
        await radius.stop()


def mschapv2_attributes(name: str, code: str) -> tuple[str, bytes, bytes]:
    challenge, peer = os.urandom(16), os.urandom(16)
    nt = generate_nt_response(challenge, peer, name.encode(), code)
    response = bytes((1, 0)) + peer + b"\x00" * 8 + nt
    lines = (f'User-Name = "{name}"\nMS-CHAP-Challenge = 0x{challenge.hex()}\n'
             f"MS-CHAP2-Response = 0x{response.hex()}\nMessage-Authenticator = 0x00\n")
    return lines, challenge, response


@pytest_twisted.ensureDeferred
async def test_mschapv2_otp_only(backend, tmp_path):
    radius = await start_radius(backend, tmp_path, [client_table(allow_mschapv2=True)])
    try:
        name, _dn = backend.new_user("msc")
        key = await enroll(radius, name)
        request, _, _ = mschapv2_attributes(name, hotp(key, 3))
        _code, out, err = await radius.radclient(request, "-x")
        assert replies(out) == ["Access-Accept"], out + err
        assert re.search(r"MS-CHAP2-Success = 0x01533d[0-9a-f]{80}", out), out
        assert re.search(r"MS-MPPE-Send-Key = 0x[0-9a-f]{32}\b", out), out
        assert re.search(r"MS-MPPE-Recv-Key = 0x[0-9a-f]{32}\b", out), out
        _code, out, err = await radius.radclient(request, "-x")  # same proof again: spent
        assert replies(out) == ["Access-Reject"], out + err
        assert "MS-CHAP-Error" in out
        request, _, _ = mschapv2_attributes(name, hotp(key, 2))  # before the last used one
        _code, out, err = await radius.radclient(request)
        assert replies(out) == ["Access-Reject"], out + err
        request, _, _ = mschapv2_attributes(name, PW + hotp(key, 4))  # password+code: no
        _code, out, err = await radius.radclient(request)
        assert replies(out) == ["Access-Reject"], out + err
        request, _, _ = mschapv2_attributes(name, hotp(key, 4))
        _code, out, err = await radius.radclient(request)
        assert replies(out) == ["Access-Accept"], out + err
    finally:
        await radius.stop()


@pytest_twisted.ensureDeferred
async def test_chap_and_mschapv2_refused_unless_enabled(backend, tmp_path):
    radius = await start_radius(backend, tmp_path)
    try:
        name, _dn = backend.new_user("nochap")
        key = await enroll(radius, name)
        request, _, _ = mschapv2_attributes(name, hotp(key, 0))
        _code, out, err = await radius.radclient(request)
        assert replies(out) == ["Access-Reject"], out + err
        chap = f'User-Name = "{name}"\nCHAP-Password = "{hotp(key, 0)}"\nMessage-Authenticator = 0x00\n'
        _code, out, err = await radius.radclient(chap)
        assert replies(out) == ["Access-Reject"], out + err
        # the code was never looked at: PAP append still takes it
        _code, out, err = await radius.radclient(pap(name, PW + hotp(key, 0)))
        assert replies(out) == ["Access-Accept"], out + err
    finally:
        await radius.stop()


# -- failure modes ----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_directory_down_no_reply_then_reject(backend, tmp_path):
    from tests.netutil import free_port

    url = f"ldap://127.0.0.1:{free_port()}"
    dead = {"urls": [url], "start_tls": False, "write_url": url}  # AD: no implicit discover
    radius = await start_radius(backend, tmp_path, directory=dead)
    try:
        _code, out, err = await radius.radclient(pap("someone", "pw123456"), "-t", "1", "-r", "1")
        assert replies(out) == [], out + err
        assert radius.server.counters.no_reply_unavailable >= 1
    finally:
        await radius.stop()
    radius = await start_radius(backend, tmp_path, directory=dead, unavailable_reply="reject")
    try:
        _code, out, err = await radius.radclient(pap("someone", "pw123456"))
        assert replies(out) == ["Access-Reject"], out + err
    finally:
        await radius.stop()


@pytest_twisted.ensureDeferred
async def test_garbage_and_floods_do_not_disturb_logins(backend, tmp_path):
    radius = await start_radius(backend, tmp_path, rate_limit_per_client=200, rate_limit_burst=50)
    try:
        name, _dn = backend.new_user("flood")
        key = await enroll(radius, name)
        junk = [os.urandom(n) for n in (0, 1, 19, 20, 64, 4096)] + [b"\x01\x01\x00\x14" + b"\x00" * 16]
        await radius.raw_exchange(junk, timeout=0.05)
        c = radius.server.counters
        assert c.dropped_malformed >= 5 and c.errors == 0
        _code, out, err = await radius.radclient(pap(name, PW + hotp(key, 0)))
        assert replies(out) == ["Access-Accept"], out + err
        # a burst beyond the rate limit: some are dropped (radclient retries them)
        requests = "\n".join(pap(name, "x" * 8 + str(i)) for i in range(120))
        _code, out, err = await radius.radclient(requests, "-p", "120", "-t", "3", "-r", "3", "-s")
        accepted, rejected, lost = summary(out)
        assert c.dropped_rate_limited > 0 and accepted == 0, out
    finally:
        await radius.stop()
