"""Attacks on the LDAP bind proxy and on the gateway's own LDAP connections, performed
against real servers (slapd; a fake directory where the attacker *is* the directory side).

- SASL bind named as an exempt service account, carrying alice's credentials (slapd, SASL
  PLAIN): the directory binds alice, whatever the name says.
- StartTLS response injection: whoever sits between gateway and directory answers StartTLS
  and appends a forged BindResponse/SearchResultEntry in the same segment.
- Reused message ids and pipelining: a forwarded bind's answer completing the proxy's own
  password check; a search's answer taking the bind's place (the bind then hung forever);
  thousands of Abandons queued behind a bind.
- Binds in clear text when TLS is required; a malformed StartTLS request.
Unit-level versions of most of these: tests/unit/test_proxy_protocol.py.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet import protocol, reactor, ssl, threads
from twisted.internet.utils import getProcessOutputAndValue

from otpgate import ber
from otpgate.config import parse_config
from otpgate.errors import DirectoryUnavailable
from otpgate.otp.oath import hotp
from otpgate.service import Gateway
from otpgate.vault import Keyring, keygen
from tests.integration.backends import USER_PASSWORD, Backend, make_backend
from tests.integration.proxyhelp import CLIENT_ENV, enroll, start_proxy
from tests.servers import Slapd, make_server_tls

PW = USER_PASSWORD

# -- raw LDAP over a real socket ------------------------------------------------------------


def search(mid: int, base: bytes) -> bytes:
    return ber.search_request(mid, base, 2, ber.filter_present(b"objectClass"), (b"cn",))


def abandon(mid: int, target: int) -> bytes:
    return ber.message(mid, ber.tlv(ber.ABANDON_REQUEST, target.to_bytes(2, "big")))


def exchange(port: int, payload: bytes, answers: int, timeout: float = 10.0) -> dict[str, Any]:
    """Send ``payload`` in one write; read until ``answers`` PDUs, EOF or ``timeout``.

    Blocking: run it in a thread (``threads.deferToThread``) so the proxy keeps running."""
    frames: list[tuple[ber.Header, bytes]] = []
    buf = ber.PduBuffer()
    closed = timed_out = False
    deadline = time.monotonic() + timeout
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        while len(frames) < answers:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                timed_out = True
                break
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            buf.feed(chunk)
            while (item := buf.next(1 << 24)) is not None:
                pdu, header = item
                frames.append((header, pdu))
        if not closed and not timed_out:  # is the connection still open afterwards?
            sock.settimeout(0.3)
            try:
                closed = sock.recv(65536) == b""
            except TimeoutError:
                closed = False
            except ConnectionResetError:
                closed = True
    return {"frames": frames, "closed": closed, "timed_out": timed_out}


def binds(frames: list[tuple[ber.Header, bytes]]) -> list[tuple[int, int]]:
    return [
        (h.message_id, ber.result_code(p, h)) for h, p in frames if h.op_tag == ber.BIND_RESPONSE
    ]


def notices(frames: list[tuple[ber.Header, bytes]]) -> list[int]:
    return [
        ber.decode_extended_response(p, h).code
        for h, p in frames
        if h.message_id == 0 and h.op_tag == ber.EXTENDED_RESPONSE
    ]


async def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    full_env = {**os.environ, **CLIENT_ENV, **(env or {})}
    out, err, code = await getProcessOutputAndValue(args[0], args[1:], env=full_env)
    return code, out.decode(), err.decode()


def audit_events(proxy: Any) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    proxy.gateway.audit.observers.append(events.append)
    return events


# -- 1. SASL binds named as an exempt account -------------------------------------------------

SASL_GLOBAL = """sasl-secprops none
authz-regexp "^uid=([^,]+)(,cn=[^,]+)?,cn=plain,cn=auth$" "uid=$1,ou=people,dc=example,dc=org"
"""
# slapd's SASL password lookup runs as anonymous and needs auth access to the entry.
SASL_ACL = """access to dn.subtree="ou=people,dc=example,dc=org" attrs=entry,objectClass
\tby anonymous auth
\tby * break

"""


@pytest.fixture(scope="module")
def sasl_slapd(tmp_path_factory: pytest.TempPathFactory):
    """slapd doing SASL PLAIN against userPassword (which must then be clear text)."""
    server = Slapd(
        tmp_path_factory.mktemp("slapd-sasl"), global_config=SASL_GLOBAL, acl_prefix=SASL_ACL
    )
    server.start()
    try:
        server.add_user("alice", None, attributes={"userPassword": "alice-sasl-pw"})
        server.add_user("svc-app", None, attributes={"userPassword": "svc-sasl-pw"})
        yield server
    finally:
        server.stop()


@pytest.fixture
def sasl_backend(sasl_slapd, tmp_path) -> Backend:
    keyring = tmp_path / "keyring.json"
    keygen(keyring, "k1")
    return Backend("slapd-sasl", "openldap", sasl_slapd, keyring)


def _whoami_sasl(url: str, user: str, password: str, bind_name: str) -> tuple[str, ...]:
    return ("/usr/bin/ldapwhoami", "-H", url, "-Y", "PLAIN", "-O", "none",
            "-U", user, "-w", password, "-D", bind_name)


@pytest_twisted.ensureDeferred
async def test_sasl_bind_named_as_exempt_account_with_alices_credentials(sasl_backend, tmp_path):
    s = sasl_backend.server
    svc = f"uid=svc-app,{s.people_dn}"
    alice = f"uid=alice,{s.people_dn}"
    # What the directory does: SASL ignores the bind name, alice's credentials bind alice.
    code, out, err = await run(*_whoami_sasl(s.url, "alice", "alice-sasl-pw", svc))
    assert code == 0 and out.strip().lower() == f"dn:{alice}".lower(), err

    proxy = await start_proxy(
        sasl_backend, tmp_path, policy={"exempt_dns": [svc], "allow_sasl_for_exempt": True}
    )
    events = audit_events(proxy)
    try:
        # The attack: named as the exempt account (no OTP), alice's SASL credentials.
        code, out, err = await run(*_whoami_sasl(proxy.url, "alice", "alice-sasl-pw", svc))
        assert code == 49 and "alice" not in out, (code, out, err)
        assert proxy.factory.counters["sasl_identity_mismatch"] == 1
        # The exempt account's own SASL credentials: bound as itself, confirmed.
        code, out, err = await run(*_whoami_sasl(proxy.url, "svc-app", "svc-sasl-pw", svc))
        assert code == 0 and out.strip().lower() == f"dn:{svc}".lower(), err
        sasl = [(e["outcome"], e["user"]) for e in events if "SASL" in e["reason"]]
        assert sasl == [("reject", svc), ("accept", svc)]
        assert "not as the named account" in events[0]["reason"]
    finally:
        await proxy.stop()


@pytest_twisted.ensureDeferred
async def test_sasl_is_refused_by_default(sasl_backend, tmp_path):
    s = sasl_backend.server
    svc = f"uid=svc-app,{s.people_dn}"
    proxy = await start_proxy(sasl_backend, tmp_path, policy={"exempt_dns": [svc]})
    events = audit_events(proxy)
    try:
        code, out, err = await run(*_whoami_sasl(proxy.url, "svc-app", "svc-sasl-pw", svc))
        assert code == 49, (out, err)
        assert [(e["outcome"], "SASL PLAIN" in e["reason"]) for e in events] == [("reject", True)]
    finally:
        await proxy.stop()


# -- 2. StartTLS response injection ----------------------------------------------------------

SERVICE_DN = b"cn=otpgate,dc=example,dc=org"
SERVICE_PASSWORD = b"svc-password-123"
ALICE_DN = b"uid=alice,ou=people,dc=example,dc=org"


def _entry(mid: int, dn: bytes, attributes: dict[bytes, bytes]) -> bytes:
    attrs = b"".join(
        ber.tlv(0x30, ber.tlv(ber.OCTET_STRING, k) + ber.tlv(0x31, ber.tlv(ber.OCTET_STRING, v)))
        for k, v in attributes.items()
    )
    return ber.message(
        mid, ber.tlv(ber.SEARCH_RESULT_ENTRY, ber.tlv(ber.OCTET_STRING, dn) + ber.tlv(0x30, attrs))
    )


def _result(mid: int, op_tag: int, code: int = 0) -> bytes:
    return ber.message(mid, ber.ldap_result(op_tag, code))


def forged_after_starttls() -> bytes:
    """What a man in the middle appends to the StartTLS answer: the next ids' answers
    (bind 2 = success, search 3 = a forged alice, modify 4 = success)."""
    return (
        _result(2, ber.BIND_RESPONSE)
        + _entry(3, ALICE_DN, {b"entryUUID": b"forged-uuid", b"uid": b"alice"})
        + _result(3, ber.SEARCH_RESULT_DONE)
        + _result(4, 0x67)
    )


class FakeDirectory(protocol.Protocol):
    """Just enough of an LDAP server: StartTLS (answered after ``delay``, then TLS with a
    certificate the gateway trusts), binds (only the right password), searches (one entry),
    modifies.  With ``inject`` the StartTLS answer carries forged PDUs in the same write."""

    factory: FakeDirectoryFactory

    def connectionMade(self) -> None:
        self.buf = ber.PduBuffer()
        self.tls = False

    def dataReceived(self, data: bytes) -> None:
        self.buf.feed(data)
        while (item := self.buf.next(1 << 20)) is not None:
            self.handle(*item)

    def handle(self, pdu: bytes, header: ber.Header) -> None:
        f, mid = self.factory, header.message_id
        if header.op_tag == ber.EXTENDED_REQUEST:
            answer = ber.extended_response(mid, 0, ber.START_TLS_OID)
            extra = f.forged if f.inject else b""
            reactor.callLater(f.delay, self._start_tls, answer + extra)
        elif header.op_tag == ber.BIND_REQUEST:
            request = ber.parse_bind(pdu, header)
            f.binds.append((request.name, self.tls))
            ok = request.simple in f.passwords.get(request.name, ())
            self.transport.write(_result(mid, ber.BIND_RESPONSE, 0 if ok else 49))
        elif header.op_tag == ber.SEARCH_REQUEST:
            entry = _entry(mid, ALICE_DN, {b"entryUUID": b"real-uuid", b"uid": b"alice"})
            self.transport.write(entry + _result(mid, ber.SEARCH_RESULT_DONE))
        elif header.op_tag == ber.MODIFY_REQUEST:
            self.transport.write(_result(mid, 0x67))
        elif header.op_tag == ber.UNBIND_REQUEST:
            self.transport.loseConnection()

    def _start_tls(self, data: bytes) -> None:
        self.transport.write(data)  # one write: the answer and whatever was appended
        self.transport.startTLS(self.factory.tls_options)
        self.tls = True


class FakeDirectoryFactory(protocol.Factory):
    protocol = FakeDirectory

    def __init__(self, tls_dir: Path, inject: bool, forged: bytes, delay: float = 0.0) -> None:
        paths = make_server_tls(tls_dir)
        self.ca_file = paths.ca_file
        key: Any = serialization.load_pem_private_key(paths.key_file.read_bytes(), None)
        cert: Any = x509.load_pem_x509_certificate(paths.cert_file.read_bytes())
        self.tls_options = ssl.CertificateOptions(privateKey=key, certificate=cert)
        self.inject = inject
        self.forged = forged
        self.delay = delay
        self.binds: list[tuple[bytes, bool]] = []
        self.passwords: dict[bytes, tuple[bytes, ...]] = {SERVICE_DN: (SERVICE_PASSWORD,)}


def _gateway_config(port: int, ca_file: Path, keyring: Path, **sections: Any) -> Any:
    return parse_config(
        {
            "directory": {
                "profile": "openldap",
                "urls": [f"ldap://127.0.0.1:{port}"],
                "start_tls": True,
                "ca_file": str(ca_file),
                "base_dn": "dc=example,dc=org",
                "bind_dn": SERVICE_DN.decode(),
                "bind_password": SERVICE_PASSWORD.decode(),
                "timeout": 5,
            },
            "vault": {"keyring": str(keyring)},
            **sections,
        },
        Path("/"),
    )


async def _fake_directory(tmp_path: Path, inject: bool, forged: bytes, delay: float = 0.0):
    factory = FakeDirectoryFactory(tmp_path / f"fake-{inject}", inject, forged, delay)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    keyring = tmp_path / "keyring.json"
    if not keyring.exists():
        keygen(keyring, "k1")
    return factory, port, keyring


@pytest_twisted.ensureDeferred
async def test_gateway_refuses_answers_injected_with_the_starttls_response(tmp_path):
    # Control: the same fake directory without injection works, over verified TLS.
    factory, port, keyring = await _fake_directory(tmp_path, False, forged_after_starttls())
    gw = Gateway(_gateway_config(port.getHost().port, factory.ca_file, keyring),
                 Keyring.load(keyring), reactor)
    try:
        user = await gw.store.resolve("alice")
        assert (user.dn.encode(), user.entry_id) == (ALICE_DN, b"real-uuid")
        assert factory.binds == [(SERVICE_DN, True)]  # the service bind went over TLS
    finally:
        gw.close()
        await port.stopListening()

    # The attack: forged bind success and a forged alice in the StartTLS answer's segment.
    factory, port, keyring = await _fake_directory(tmp_path, True, forged_after_starttls())
    gw = Gateway(_gateway_config(port.getHost().port, factory.ca_file, keyring),
                 Keyring.load(keyring), reactor)
    try:
        with pytest.raises(DirectoryUnavailable):
            await gw.store.resolve("alice")
        with pytest.raises(DirectoryUnavailable):  # the service account's bind fails too
            await gw.write_pool.connection()
        assert factory.binds == []  # nothing was sent: not even the real bind
    finally:
        gw.close()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_proxy_refuses_a_bind_answer_injected_with_the_starttls_response(tmp_path):
    app_dn = "cn=app,ou=services,dc=example,dc=org"
    forged = _result(2, ber.BIND_RESPONSE)  # "success" for the client's bind (message id 2)
    bind = ber.bind_request(2, app_dn.encode(), b"not-the-password")
    for inject in (False, True):
        # The answer to StartTLS is held back a little, so the client's bind is waiting
        # in the proxy when it comes (as it would be behind any slower directory).
        factory, port, keyring = await _fake_directory(tmp_path, inject, forged, delay=0.3)
        factory.passwords[app_dn.encode()] = (b"the-app-password",)
        config = _gateway_config(
            port.getHost().port, factory.ca_file, keyring,
            policy={"exempt_dns": [app_dn]},
        )
        gw = Gateway(config, Keyring.load(keyring), reactor)
        listening = reactor.listenTCP(0, gw.ldap_proxy_factory(), interface="127.0.0.1")
        try:
            got = await threads.deferToThread(exchange, listening.getHost().port, bind, 1)
            if not inject:  # control: the real answer comes through TLS and says no
                assert binds(got["frames"]) == [(2, 49)]
                assert factory.binds == [(app_dn.encode(), True)]
            else:
                assert binds(got["frames"]) == [(2, 52)]  # unavailable, never success
                assert factory.binds == []
        finally:
            await listening.stopListening()
            gw.close()
            await port.stopListening()


# -- 3. message ids and pipelining against slapd ---------------------------------------------


@pytest.fixture
def slapd_backend(request, tmp_path_factory) -> Backend:
    return make_backend("slapd-stock", request, tmp_path_factory.getbasetemp())


@pytest_twisted.ensureDeferred
async def test_a_forwarded_bind_answer_does_not_complete_the_proxys_own_bind(
    slapd_backend, tmp_path
):
    """Anonymous bind and an exempt account's bind with a WRONG password, same message id,
    pipelined: the anonymous success must not be taken as the answer to the password check."""
    s = slapd_backend.server
    proxy = await start_proxy(slapd_backend, tmp_path, policy={"exempt_dns": [s.admin_dn]})
    events = audit_events(proxy)
    try:
        payload = ber.bind_request(5, b"", b"") + ber.bind_request(5, s.admin_dn.encode(), b"wrong")
        got = await threads.deferToThread(exchange, proxy.port, payload, 2)
        assert binds(got["frames"]) == [(5, 0), (5, 49)]  # anonymous ok, then the real answer
        assert [e["outcome"] for e in events] == ["reject"]  # never an "accept" for admin
        assert events[0]["reason"].startswith("exempt: dn ")
    finally:
        await proxy.stop()


@pytest_twisted.ensureDeferred
async def test_a_bind_reusing_a_searchs_id_is_refused_and_nothing_hangs(slapd_backend, tmp_path):
    """Search id 5 then Bind id 5 in one write: the search's answer must not take the bind's
    place (the bind would never finish and the connection would hang for ever)."""
    s = slapd_backend.server
    proxy = await start_proxy(slapd_backend, tmp_path, policy={"exempt_dns": [s.admin_dn]})
    events = audit_events(proxy)
    try:
        payload = (
            search(5, s.suffix.encode())
            + ber.bind_request(5, s.admin_dn.encode(), s.admin_password.encode())
            + ber.who_am_i_request(7)
        )
        got = await threads.deferToThread(exchange, proxy.port, payload, 10, 5.0)
        assert not got["timed_out"] and got["closed"]
        assert notices(got["frames"]) == [2]  # Notice of Disconnection: protocolError
        assert binds(got["frames"]) == [] and events == []
        assert proxy.factory.counters["protocol_error"] == 1
    finally:
        await proxy.stop()


@pytest_twisted.ensureDeferred
async def test_thousands_of_abandons_behind_a_bind_close_only_that_connection(
    slapd_backend, tmp_path
):
    proxy = await start_proxy(slapd_backend, tmp_path)
    try:
        name, dn = slapd_backend.new_user("abandon")
        key = await enroll(proxy, name)
        payload = ber.bind_request(1, dn.encode(), (PW + hotp(key, 0)).encode()) + b"".join(
            abandon(i, 1) for i in range(2, 5002)
        )
        started = time.monotonic()
        got = await threads.deferToThread(exchange, proxy.port, payload, 2, 10.0)
        assert got["closed"] and not got["timed_out"] and time.monotonic() - started < 10
        assert proxy.factory.counters["queue_full"] == 1
        # the server is fine: the next client binds (with the next code)
        assert await proxy.ldap3_bind(dn, PW + hotp(key, 1)) == (True, 0)
    finally:
        await proxy.stop()


# -- 4. TLS required for binds ---------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_binds_need_starttls_when_the_proxy_has_a_certificate(slapd_backend, tmp_path):
    s = slapd_backend.server
    proxy = await start_proxy(
        slapd_backend, tmp_path, plaintext_binds=False, policy={"exempt_dns": [s.admin_dn]}
    )
    try:
        assert proxy.factory.config.require_tls_for_binds  # the default with a certificate
        code, out, err = await proxy.whoami(s.admin_dn, s.admin_password)
        assert code == 13 and "Confidentiality required" in err, (code, out, err)
        env = {"LDAPTLS_CACERT": str(proxy.ca_file), "LDAPTLS_REQCERT": "demand"}
        code, out, err = await proxy.run("/usr/bin/ldapwhoami", "-x", "-ZZ", "-H", proxy.url,
                                         "-D", s.admin_dn, "-w", s.admin_password, env=env)
        assert code == 0 and out.strip().lower() == f"dn:{s.admin_dn}".lower(), err
        assert proxy.factory.counters["bind_without_tls"] == 1
    finally:
        await proxy.stop()


# -- 5. a malformed StartTLS request -----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_malformed_starttls_request_closes_only_that_connection(slapd_backend, tmp_path):
    s = slapd_backend.server
    proxy = await start_proxy(slapd_backend, tmp_path, policy={"exempt_dns": [s.admin_dn]})
    try:
        # an ExtendedRequest whose requestName claims 127 bytes inside a 24-byte body
        broken = ber.message(1, ber.tlv(ber.EXTENDED_REQUEST, b"\x80\x7f" + ber.START_TLS_OID))
        got = await threads.deferToThread(exchange, proxy.port, broken, 1, 5.0)
        assert got["closed"] and got["frames"] == []
        assert proxy.factory.counters["malformed"] == 1
        code, out, err = await proxy.whoami(s.admin_dn, s.admin_password)
        assert code == 0, err  # everyone else is served
    finally:
        await proxy.stop()



@pytest.mark.samba
@pytest_twisted.ensureDeferred
async def test_samba_has_no_who_am_i_so_sasl_through_the_proxy_fails_closed(
    request, tmp_path, tmp_path_factory
):
    """The proxy confirms a SASL bind with Who Am I?; Samba does not implement it (checked
    here through the proxy, on the client's own upstream connection), so every SASL bind
    that Samba accepts is refused by the proxy (tests/unit/test_proxy_protocol.py,
    test_sasl_without_a_confirmed_identity_fails_closed[no-who-am-i])."""
    backend = make_backend("samba", request, tmp_path_factory.getbasetemp())
    s = backend.server
    proxy = await start_proxy(
        backend, tmp_path, policy={"exempt_dns": [s.admin_dn], "allow_sasl_for_exempt": True}
    )
    try:
        payload = ber.bind_request(1, s.admin_dn.encode(), s.admin_password.encode())
        payload += ber.who_am_i_request(2)
        got = await threads.deferToThread(exchange, proxy.port, payload, 2)
        assert binds(got["frames"]) == [(1, 0)]
        (answer,) = [(h, p) for h, p in got["frames"] if h.message_id == 2]
        assert ber.decode_extended_response(answer[1], answer[0]).code == 2  # protocolError
    finally:
        await proxy.stop()
