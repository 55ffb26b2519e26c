"""Run the LDAP proxy in-process in front of a test backend, and drive real clients at it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet import reactor, threads
from twisted.internet.utils import getProcessOutputAndValue

from otpgate.admin.enrollment import enroll_change, new_oath_token
from otpgate.service import Gateway
from otpgate.tokens import TokenType
from otpgate.vault import Keyring
from tests.servers import make_server_tls

CLIENT_ENV = {"LDAPCONF": "/dev/null", "LDAPRC": "/nonexistent-otpgate-ldaprc"}


@dataclass
class Proxy:
    gateway: Gateway
    factory: Any
    port: int
    listening: Any
    ca_file: Path | None = None

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    async def run(self, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        """An ldap-utils command, run without blocking the reactor that serves the proxy."""
        full_env = {**os.environ, **CLIENT_ENV, **(env or {})}
        out, err, code = await getProcessOutputAndValue(args[0], args[1:], env=full_env)
        return code, out.decode(), err.decode()

    async def whoami(self, dn: str, password: str, *extra: str) -> tuple[int, str, str]:
        return await self.run("/usr/bin/ldapwhoami", "-x", "-H", self.url, "-D", dn, "-w", password, *extra)

    async def ldap3_bind(self, user: str, password: str) -> tuple[bool, int]:
        import ldap3

        def bind() -> tuple[bool, int]:
            server = ldap3.Server("127.0.0.1", port=self.port, get_info=ldap3.NONE)
            conn = ldap3.Connection(server, user=user, password=password, raise_exceptions=False)
            ok = conn.bind()
            code = conn.result["result"]
            conn.unbind()
            return ok, code

        return await threads.deferToThread(bind)

    async def stop(self) -> None:
        await self.listening.stopListening()
        self.gateway.close()


async def start_proxy(backend: Any, tmp_path: Path, directory: dict | None = None,
                      plaintext_binds: bool = True, **sections: Any) -> Proxy:
    """The proxy on 127.0.0.1 with a certificate (StartTLS offered).  ``plaintext_binds``:
    most tests bind over plain TCP on loopback, so they set require_tls_for_binds = false;
    False keeps the default (TLS required for binds, because a certificate is set)."""
    tls = make_server_tls(tmp_path / "proxy-tls")
    proxy_section = {"cert_file": str(tls.cert_file), "key_file": str(tls.key_file)}
    if plaintext_binds:
        proxy_section["require_tls_for_binds"] = False
    proxy_section.update(sections.pop("ldap_proxy", {}))
    config = backend.config(directory, ldap_proxy=proxy_section, **sections)
    gateway = Gateway(config, Keyring.load(backend.keyring), reactor)
    factory = gateway.ldap_proxy_factory()
    listening = reactor.listenTCP(0, factory, interface="127.0.0.1")
    return Proxy(gateway, factory, listening.getHost().port, listening, tls.ca_file)


async def enroll(proxy: Proxy, name: str, kind: TokenType = TokenType.HOTP, key: bytes | None = None,
                 **otp: Any) -> bytes:
    from dataclasses import replace

    gw = proxy.gateway
    user = await gw.store.resolve(name)
    otp_config = replace(gw.config.otp, **otp)
    token, secret = new_oath_token(otp_config, kind, key=key)
    await gw.store.update(user, lambda s: enroll_change(s, token, secret, 5))
    return secret.key
