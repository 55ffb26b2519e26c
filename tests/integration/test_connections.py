"""Connections: failover across URLs, certificate verification, AD PDC emulator discovery."""

from __future__ import annotations

import socket

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from otpgate import ber
from otpgate.directory.discovery import url_for_host
from otpgate.directory.ldapdata import SCOPE_BASE, parent_dn
from otpgate.errors import DirectoryUnavailable
from otpgate.service import Gateway
from otpgate.vault import Keyring
from tests.netutil import free_port
from tests.servers import make_server_tls


@pytest_twisted.ensureDeferred
async def test_failover_to_the_next_url(backend):
    section = backend.directory_section()
    dead = f"ldap://127.0.0.1:{free_port()}" if section.get("start_tls") else f"ldaps://127.0.0.1:{free_port()}"
    several = {"urls": [dead, *section["urls"]]}
    if backend.is_ad:  # several DCs: OTP state is pinned (write_url is required), reads fail over
        several["write_url"] = section["urls"][0]
    config = backend.config(several)
    gw = Gateway(config, Keyring.load(backend.keyring), reactor)
    try:
        name, dn = backend.new_user("failover")
        assert (await gw.store.resolve(name)).dn.lower() == dn.lower()
    finally:
        gw.close()


@pytest_twisted.ensureDeferred
async def test_a_burst_on_a_cold_pool_opens_only_the_pool_size(backend):
    gw = Gateway(backend.config(), Keyring.load(backend.keyring), reactor)
    try:
        conns = await defer.gatherResults(
            [defer.ensureDeferred(gw.write_pool.connection()) for _ in range(20)]
        )
        assert len({id(c) for c in conns}) == gw.write_pool.size == 2
        assert all(c.connected for c in conns)
        for c in conns:  # small PDUs are not held back for delayed ACKs (Nagle off)
            handle = c.client.transport.socket
            assert handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        gw.close()


@pytest_twisted.ensureDeferred
async def test_a_burst_on_a_dead_pool_fails_every_caller_closed():
    from otpgate.directory.connection import TlsSettings
    from otpgate.directory.pool import ServerPool

    pool = ServerPool(reactor, [f"ldap://127.0.0.1:{free_port()}"], TlsSettings(), "cn=x", "pw", 5)
    results = await defer.DeferredList(
        [defer.ensureDeferred(pool.connection()) for _ in range(10)], consumeErrors=True
    )
    assert [ok for ok, _ in results] == [False] * 10
    assert all(f.check(DirectoryUnavailable) for _, f in results)


@pytest_twisted.ensureDeferred
async def test_untrusted_certificate_fails_closed(backend, tmp_path):
    other_ca = make_server_tls(tmp_path / "other-ca").ca_file
    config = backend.config({"ca_file": str(other_ca)})
    gw = Gateway(config, Keyring.load(backend.keyring), reactor)
    try:
        name, _dn = backend.new_user("tls")
        try:
            await gw.store.resolve(name)
        except DirectoryUnavailable:
            pass
        else:
            raise AssertionError("a server with an untrusted certificate was used")
    finally:
        gw.close()


async def pdc_emulator_host(conn, base_dn: str) -> str:
    """The dNSHostName of the server object above the domain head's fSMORoleOwner (what
    discovery reaches when the DC asked is not the PDC emulator itself)."""
    any_entry = ber.filter_present(b"objectClass")
    found = await conn.search(base_dn, any_entry, ["fSMORoleOwner"], scope=SCOPE_BASE)
    server_dn = parent_dn(found[0].first("fSMORoleOwner").decode("utf-8"))
    found = await conn.search(server_dn, any_entry, ["dNSHostName"], scope=SCOPE_BASE)
    return found[0].first("dNSHostName").decode("ascii")


@pytest.mark.samba
@pytest_twisted.ensureDeferred
async def test_pdc_emulator_discovery_on_samba(request, tmp_path_factory):
    from tests.integration.backends import make_backend

    backend = make_backend("samba", request, tmp_path_factory.getbasetemp())
    gw = Gateway(backend.config(), Keyring.load(backend.keyring), reactor)
    try:
        conn = await gw.read_pool.connection()
        host = await pdc_emulator_host(conn, backend.server.base_dn)
        assert host.lower() == backend.server.fqdn.lower()
        assert url_for_host(backend.server.ldaps_url, host) == f"ldaps://{host}:636"
    finally:
        gw.close()
