"""slapd stops and restarts in the middle of a run: fail closed, then carry on with no state lost."""

from __future__ import annotations

import os
from pathlib import Path

import pytest_twisted
from twisted.internet import reactor

from otpgate.admin.enrollment import enroll_change, new_oath_token
from tests.logins import code_only
from otpgate.config import parse_config
from otpgate.otp.oath import hotp
from otpgate.service import Gateway
from otpgate.tokens import TokenType
from otpgate.vault import Keyring, keygen
from tests.servers import Slapd


@pytest_twisted.ensureDeferred
async def test_slapd_restart_mid_run(tmp_path):
    server = Slapd(tmp_path / "slapd", schema="otpgate")
    server.start()
    keygen(tmp_path / "keyring.json", "k1")
    config = parse_config({
        "directory": {"profile": "openldap-schema", "urls": [server.url], "start_tls": True,
                      "ca_file": str(server.ca_file), "base_dn": server.suffix,
                      "bind_dn": server.service_dn, "bind_password": server.service_password,
                      "timeout": 3},
        "vault": {"keyring": str(tmp_path / "keyring.json")},
    }, Path("/"))
    gw = Gateway(config, Keyring.load(config.keyring), reactor)
    try:
        server.add_user("restart", "pw", otpgate_user=True)
        key = os.urandom(20)
        user = await gw.store.resolve("restart")
        token, secret = new_oath_token(config.otp, TokenType.HOTP, key=key)
        await gw.store.update(user, lambda s: enroll_change(s, token, secret, 5))

        def ask(counter):
            return gw.authenticator.login(
                code_only("restart", hotp(key, counter), None, "test"))

        accepted = []
        for counter in range(10):
            assert (await ask(counter)).ok
            accepted.append(counter)
        server.stop()
        down = await ask(10)
        assert not down.ok and down.unavailable  # fail closed, no success without the directory
        server.restart()
        for counter in range(10, 20):
            result = await ask(counter)
            assert result.ok, result.reason
            accepted.append(counter)
        for counter in accepted:  # nothing accepted before the restart came back
            assert not (await ask(counter)).ok
        state = gw.store.decode(await gw.store.resolve("restart"))
        assert state.used.use_of(token.id).last == 19
        assert state.used.locked_until > 0  # the replays above counted as failures: locked out
    finally:
        gw.close()
        server.stop()
