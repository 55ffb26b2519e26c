"""A directory outage costs the user nothing: no lockout count, no spent challenge State.

Against real slapd instances: one of this module's own that the test stops and starts
again (the State case), and a gateway whose password binds go to a server that is down
while its OTP state server is up (the code is spent, then the bind cannot happen).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from pyrad import packet as pp

from otpgate.otp.oath import hotp
from otpgate.vault import keygen
from tests.integration.backends import USER_PASSWORD, Backend
from tests.integration.test_radius import client_table, enroll, pap, replies, start_radius
from tests.netutil import free_port
from tests.servers import Slapd

PW = USER_PASSWORD


@pytest.fixture(scope="module")
def own_slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    server = Slapd(tmp_path_factory.mktemp("slapd-outage"))
    server.start()
    keyring = tmp_path_factory.mktemp("outage-keys") / "keyring.json"
    keygen(keyring, "k1")
    try:
        yield Backend("slapd-outage", "openldap", server, keyring)
    finally:
        server.stop()


async def failures(radius: Any, name: str) -> int:
    gw = radius.gateway
    return gw.store.decode(await gw.store.resolve(name, fresh=True)).used.failures


@pytest_twisted.ensureDeferred
async def test_challenge_state_survives_an_outage(own_slapd, tmp_path):
    backend = own_slapd
    radius = await start_radius(
        backend,
        tmp_path,
        [client_table("challenge")],
        directory={"state_cache_seconds": 0, "timeout": 1},
        unavailable_reply="none",
    )
    try:
        name, _dn = backend.new_user("chalout")
        key = await enroll(radius, name)

        def ask(secret: str, state: bytes | None = None) -> Any:
            def fill(pkt: Any) -> None:
                pkt[1] = [name.encode()]
                pkt[2] = [pkt.PwCrypt(secret)]
                if state is not None:
                    pkt[24] = [state]

            return fill

        reply = await radius.pyrad(ask(PW))
        assert reply.code == pp.AccessChallenge
        (state,) = reply.get(24)
        backend.server.stop()
        try:
            assert await radius.pyrad(ask(hotp(key, 0), state), timeout=4.0) is None  # no reply
        finally:
            backend.server.start()
        reply = await radius.pyrad(ask(hotp(key, 0), state))
        assert reply.code == pp.AccessAccept  # the same State, after the outage
        assert (await radius.pyrad(ask(hotp(key, 1), state))).code == pp.AccessReject  # spent now
        assert await failures(radius, name) == 0
    finally:
        await radius.stop()


@pytest_twisted.ensureDeferred
async def test_code_spent_before_an_outage_is_no_failure(own_slapd, tmp_path):
    """Append mode: the code is checked and spent on the OTP-state server, then the password
    bind cannot reach a directory server; the NAS's retries (and the user's) with that code
    are refused but never counted towards lockout."""
    backend = own_slapd
    live = backend.server.url
    radius = await start_radius(
        backend,
        tmp_path,
        # The read server is down from the start: the access-rule proof, which needs every
        # listed server to answer once, would refuse OTP state; this test is about the
        # outage after the code is spent, so the site's choice is stated.
        directory={"urls": [f"ldap://127.0.0.1:{free_port()}"], "write_url": live, "timeout": 1,
                   "allow_self_writable_state": True},
        unavailable_reply="none",
        lockout={"max_failures": 3},
    )
    try:
        name, _dn = backend.new_user("appout")
        key = await enroll(radius, name)
        for _ in range(5):  # more than max_failures
            _code, out, _err = await radius.radclient(pap(name, PW + hotp(key, 0)), "-r", "1")
            assert not replies(out) or replies(out) == ["Access-Reject"], out
        assert await failures(radius, name) == 0
        state = radius.gateway.store.decode(await radius.gateway.store.resolve(name, fresh=True))
        assert state.used.locked_until == 0
    finally:
        await radius.stop()
