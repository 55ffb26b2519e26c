"""The LDAP bind proxy with real clients, against slapd and Samba AD."""

from __future__ import annotations

import errno
import socket

import pytest_twisted

from otpgate.otp.oath import Algorithm, hotp
from otpgate.tokens import TokenType
from tests.integration.backends import USER_PASSWORD
from tests.integration.proxyhelp import enroll, start_proxy
from tests.servers import SambaDC

PW = USER_PASSWORD


@pytest_twisted.ensureDeferred
async def test_test080_hotp_checklist(backend, tmp_path):
    """OpenLDAP's test080-hotp cases, through the proxy (ldap3 client, HOTP, look-ahead 10)."""
    proxy = await start_proxy(backend, tmp_path)
    try:
        name, dn = backend.new_user("hotp")
        key = await enroll(proxy, name)
        bind = proxy.ldap3_bind
        assert await bind(dn, PW + hotp(key, 12)) == (False, 49)  # beyond look-ahead
        assert await bind(dn, PW + hotp(key, 3)) == (True, 0)  # valid (skips 0..2)
        assert await bind(dn, PW + hotp(key, 3)) == (False, 49)  # replay
        assert await bind(dn, PW + hotp(key, 1)) == (False, 49)  # old (skipped) code: retired
        assert await bind(dn, "not-" + PW + hotp(key, 4)) == (False, 49)  # right code, wrong pw
        assert await bind(dn, PW + hotp(key, 4)) == (False, 49)  # ... and that code is spent
        assert await bind(dn, PW + hotp(key, 5)) == (True, 0)
        assert await bind(dn, PW) == (False, 49)  # OTP required
        code, _out, err = await proxy.whoami(dn, "")  # ldap3 refuses to send this; ldapwhoami does
        assert code == 49, err  # an unauthenticated bind is never forwarded
    finally:
        await proxy.stop()


@pytest_twisted.ensureDeferred
async def test_sha512_eight_digits_and_name_forms(backend, tmp_path):
    proxy = await start_proxy(backend, tmp_path)
    try:
        name, dn = backend.new_user("sha512")
        key = await enroll(proxy, name, digits=8, algorithm=Algorithm.SHA512)
        code = hotp(key, 0, digits=8, algorithm=Algorithm.SHA512)
        assert len(code) == 8
        assert await proxy.ldap3_bind(dn, PW + code) == (True, 0)
        names = [backend.upn(name)]
        if isinstance(backend.server, SambaDC):
            names.append(f"{backend.server.domain}\\{name}")
        for counter, bind_name in enumerate(names, start=1):
            code = hotp(key, counter, digits=8, algorithm=Algorithm.SHA512)
            assert await proxy.ldap3_bind(bind_name, PW + code) == (True, 0), bind_name
    finally:
        await proxy.stop()


@pytest_twisted.ensureDeferred
async def test_ldap_utils_pass_through_after_bind(backend, tmp_path):
    proxy = await start_proxy(backend, tmp_path)
    try:
        name, dn = backend.new_user("utils")
        for i in range(5):
            backend.new_user("paged")
        key = await enroll(proxy, name, TokenType.HOTP)
        base = backend.server.base_dn if isinstance(backend.server, SambaDC) else backend.server.suffix
        if not isinstance(backend.server, SambaDC):
            code, out, err = await proxy.whoami(dn, PW + hotp(key, 0))
            assert code == 0 and out.strip().lower() == f"dn:{dn}".lower(), err
        # paged results (a control in the request and in every response) through the proxy
        code, out, err = await proxy.run(
            "/usr/bin/ldapsearch", "-x", "-LLL", "-H", proxy.url, "-D", dn, "-w", PW + hotp(key, 1),
            "-b", base, "-E", "pr=2/noprompt", "(|(cn=paged*)(sAMAccountName=paged*))", "cn")
        assert code == 0, err
        assert out.count("dn: ") >= 5
        # a wrong OTP gets 49 with the same message as every other failure
        code, out, err = await proxy.run(
            "/usr/bin/ldapsearch", "-x", "-H", proxy.url, "-D", dn, "-w", PW + hotp(key, 1),
            "-b", base, "-s", "base")
        assert code == 49 and "invalid credentials" in err
    finally:
        await proxy.stop()


@pytest_twisted.ensureDeferred
async def test_exempt_account_and_write_operations(backend, tmp_path):
    """An exempt account binds with its password alone; writes and extended ops pass through."""
    admin_dn = backend.server.admin_dn
    admin_pw = backend.server.admin_password
    proxy = await start_proxy(backend, tmp_path, policy={"exempt_dns": [admin_dn]})
    try:
        import ldap3
        from twisted.internet import threads

        name, dn = backend.new_user("target")
        is_ad = isinstance(backend.server, SambaDC)

        def operations() -> list:
            server = ldap3.Server("127.0.0.1", port=proxy.port, get_info=ldap3.NONE)
            conn = ldap3.Connection(server, user=admin_dn, password=admin_pw)
            assert conn.bind(), conn.result
            results = []
            conn.modify(dn, {"description": [(ldap3.MODIFY_REPLACE, ["through the proxy"])]})
            results.append(conn.result["result"])
            results.append(conn.compare(dn, "description", "through the proxy"))
            conn.search(dn, "(objectClass=*)", ldap3.BASE, attributes=["description"])
            results.append(conn.entries[0].description.value)
            parent = dn.split(",", 1)[1]
            new_dn = f"{dn.split('=', 1)[0]}=moved-{name},{parent}"
            conn.modify_dn(dn, new_dn.split(",", 1)[0])
            results.append(conn.result["result"])
            conn.delete(new_dn)
            results.append(conn.result["result"])
            conn.abandon(12345)  # abandon of an unknown id: no answer, no harm
            results.append(None if is_ad else conn.extend.standard.who_am_i())
            conn.modify("cn=does-not-exist," + parent, {"description": [(ldap3.MODIFY_REPLACE, ["x"])]})
            results.append(conn.result["result"])
            conn.unbind()
            return results

        modified, compared, read, renamed, deleted, whoami, missing = await threads.deferToThread(operations)
        assert (modified, compared, read, renamed, deleted) == (0, True, "through the proxy", 0, 0)
        assert missing == 32  # noSuchObject comes back unchanged
        if whoami is not None:
            assert whoami.lower() == f"dn:{admin_dn}".lower()
        assert await proxy.ldap3_bind(admin_dn, "wrong") == (False, 49)
    finally:
        await proxy.stop()


@pytest_twisted.ensureDeferred
async def test_directory_down_fails_closed_with_unavailable(backend, tmp_path):
    from tests.netutil import free_port

    dead = [f"ldap://127.0.0.1:{free_port()}"]
    # write_url named: on AD the implicit "discover" needs TLS (it may find a remote DC)
    proxy = await start_proxy(
        backend, tmp_path, {"urls": dead, "start_tls": False, "write_url": dead[0]}
    )
    try:
        assert await proxy.ldap3_bind("uid=x,dc=example,dc=org", "pw123456") == (False, 52)
    finally:
        await proxy.stop()


@pytest_twisted.ensureDeferred
async def test_malformed_ber_and_oversized_pdu_close_only_that_connection(slapd, tmp_path, request,
                                                                         tmp_path_factory):
    from tests.integration.backends import make_backend

    backend = make_backend("slapd-stock", request, tmp_path_factory.getbasetemp())
    proxy = await start_proxy(backend, tmp_path, ldap_proxy={"max_pdu_before_bind": 4096})
    try:
        from twisted.internet import threads

        def raw(payload: bytes) -> bytes:
            chunks = []
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
                try:
                    s.sendall(payload)
                    s.shutdown(socket.SHUT_WR)
                    while chunk := s.recv(65536):
                        chunks.append(chunk)
                # The proxy aborts, possibly before the whole payload was sent: that reset (or
                # ENOTCONN on the half-close after it) is the expected answer.
                except (ConnectionResetError, BrokenPipeError):
                    pass
                except OSError as e:
                    if e.errno != errno.ENOTCONN:
                        raise
            return b"".join(chunks)

        assert await threads.deferToThread(raw, b"\x31\x03\x02\x01\x01") == b""  # not a SEQUENCE
        big = b"\x30\x84" + (10_000).to_bytes(4, "big") + b"\x00" * 10_000
        assert await threads.deferToThread(raw, big) == b""  # over the pre-bind cap
        assert proxy.factory.counters["malformed"] == 2
        name, dn = backend.new_user("still")
        key = await enroll(proxy, name)
        assert await proxy.ldap3_bind(dn, PW + hotp(key, 0)) == (True, 0)  # others unaffected
    finally:
        await proxy.stop()


@pytest_twisted.ensureDeferred
async def test_starttls_and_ldaps_listeners(request, tmp_path, tmp_path_factory):
    from twisted.internet import reactor

    from tests.integration.backends import make_backend

    backend = make_backend("slapd-stock", request, tmp_path_factory.getbasetemp())
    proxy = await start_proxy(backend, tmp_path)
    ldaps = reactor.listenSSL(0, backend_factory := proxy.gateway.ldap_proxy_factory(True),
                              backend_factory.tls_options, interface="127.0.0.1")
    try:
        name, dn = backend.new_user("tls")
        key = await enroll(proxy, name)
        env = {"LDAPTLS_CACERT": str(proxy.ca_file), "LDAPTLS_REQCERT": "demand"}
        code, out, err = await proxy.run("/usr/bin/ldapwhoami", "-x", "-ZZ", "-H", proxy.url,
                                         "-D", dn, "-w", PW + hotp(key, 0), env=env)
        assert code == 0 and "dn:" in out, err
        url = f"ldaps://127.0.0.1:{ldaps.getHost().port}"
        code, out, err = await proxy.run("/usr/bin/ldapwhoami", "-x", "-H", url,
                                         "-D", dn, "-w", PW + hotp(key, 1), env=env)
        assert code == 0 and "dn:" in out, err
    finally:
        await ldaps.stopListening()
        await proxy.stop()


@pytest_twisted.ensureDeferred
async def test_bind_cache_and_rebinds_on_one_connection(request, tmp_path, tmp_path_factory):
    import ldap3
    from twisted.internet import threads

    from tests.integration.backends import make_backend

    backend = make_backend("slapd-stock", request, tmp_path_factory.getbasetemp())
    proxy = await start_proxy(backend, tmp_path, ldap_proxy={"bind_cache_seconds": 30})
    try:
        name_a, dn_a = backend.new_user("cachea")
        name_b, dn_b = backend.new_user("cacheb")
        key_a = await enroll(proxy, name_a)
        key_b = await enroll(proxy, name_b)

        def rebinds() -> list:
            server = ldap3.Server("127.0.0.1", port=proxy.port, get_info=ldap3.NONE)
            conn = ldap3.Connection(server)
            conn.open()
            results = [conn.rebind(dn_a, PW + hotp(key_a, 0)),
                       conn.rebind(dn_a, PW + hotp(key_a, 0)),  # same secret again: cache
                       conn.extend.standard.who_am_i(),
                       conn.rebind(dn_b, PW + hotp(key_b, 0)),  # another user, same connection
                       conn.extend.standard.who_am_i()]
            results.append(conn.rebind(dn_a, "wrong" + hotp(key_a, 0)))  # not a cache hit
            conn.unbind()
            return results

        first, cached, who_a, second, who_b, wrong = await threads.deferToThread(rebinds)
        assert (first, cached, second, wrong) == (True, True, True, False)
        assert who_a.lower() == f"dn:{dn_a}".lower() and who_b.lower() == f"dn:{dn_b}".lower()
    finally:
        await proxy.stop()
