"""What ``twistd otpgate`` runs: the configured gateway, or the embedded demo."""

from __future__ import annotations

import base64
import os
import sys
from pathlib import Path
from typing import Any

import segno
from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from otpgate.admin.enrollment import enroll_change, new_oath_token, otpauth_uri
from otpgate.config import Config, load_config, parse_config
from otpgate.demo import (
    DEMO_BASE_DN,
    DEMO_EXEMPT_DN,
    DEMO_SERVICE_DN,
    DEMO_SERVICE_PASSWORD,
    DEMO_USER_DN,
    DEMO_USER_PASSWORD,
    DemoDirectoryFactory,
    load_demo_tree,
)
from otpgate.errors import ConfigError
from otpgate.service import Gateway, make_service
from otpgate.vault import Keyring, VaultError

log = Logger()


def make_service_from_options(options: Any) -> service.IService:
    from twisted.internet import reactor

    if options["demo"]:
        return DemoService(reactor, int(options["port"]))
    try:
        path = Path(options["config"])
        return make_service(load_config(path), reactor, path)
    except (ConfigError, VaultError) as exc:
        print(f"otpgate: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc


def demo_config(directory_port: int, proxy_port: int) -> Config:
    return parse_config(
        {
            "directory": {
                "profile": "openldap",
                "urls": [f"ldap://127.0.0.1:{directory_port}"],
                "base_dn": DEMO_BASE_DN,
                "bind_dn": DEMO_SERVICE_DN,
                "bind_password": DEMO_SERVICE_PASSWORD,
            },
            "vault": {"keyring": "unused-in-demo"},
            "otp": {"issuer": "otpgate demo"},
            "policy": {"exempt_dns": [DEMO_EXEMPT_DN]},
            "ldap_proxy": {"listen": [f"tcp:{proxy_port}:interface=127.0.0.1"]},
        },
        Path("."),
    )


class DemoService(service.Service):
    """Demo directory on a free loopback port, the LDAP proxy in front, one enrolled user."""

    def __init__(self, reactor: Any, proxy_port: int) -> None:
        self.reactor = reactor
        self.proxy_port = proxy_port
        self.ports: list[Any] = []
        self.gateway: Gateway | None = None

    def startService(self) -> None:
        service.Service.startService(self)
        d = defer.ensureDeferred(self._start())
        d.addErrback(self._failed)

    def _failed(self, failure: Any) -> None:
        log.failure("otpgate demo could not start", failure)
        self.reactor.stop()

    async def _start(self) -> None:
        tree = await load_demo_tree()
        directory = self.reactor.listenTCP(0, DemoDirectoryFactory(tree), interface="127.0.0.1")
        self.ports.append(directory)
        config = demo_config(directory.getHost().port, self.proxy_port)
        keyring = Keyring({"demo": os.urandom(32)}, "demo")
        self.gateway = gateway = Gateway(config, keyring, self.reactor)

        user = await gateway.store.resolve("alice")
        token, secret = new_oath_token(config.otp, label="demo phone")
        await gateway.store.update(
            user, lambda state: enroll_change(state, token, secret, config.otp.max_tokens_per_user)
        )
        uri = otpauth_uri(token, secret, "alice", config.otp.issuer)
        self.ports.append(
            self.reactor.listenTCP(
                self.proxy_port, gateway.ldap_proxy_factory(), interface="127.0.0.1"
            )
        )
        secret_b32 = base64.b32encode(secret.key).decode().rstrip("=")
        print_demo_banner(uri, secret_b32, self.proxy_port)

    def stopService(self) -> Any:
        service.Service.stopService(self)
        if self.gateway is not None:
            self.gateway.close()
        return defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in self.ports])


def print_demo_banner(uri: str, secret_b32: str, port: int) -> None:
    # twistd routes sys.stdout into the log; the banner is for the person at the terminal.
    out = sys.__stdout__ or sys.stdout
    url = f"ldap://127.0.0.1:{port}"
    out.write(f"\notpgate demo: LDAP proxy on {url} (demo directory in-process)\n\n")
    out.write("Add alice's token to an authenticator app (scan the QR code or open the URI):\n\n")
    segno.make(uri, error="m").terminal(out=out, compact=True)
    out.write(f"\n  {uri}\n\n")
    out.write("Bind as alice with her password followed by the current code:\n\n")
    out.write(
        f"  ldapwhoami -x -H {url} -D {DEMO_USER_DN} "
        f"-w {DEMO_USER_PASSWORD}$(.venv/bin/otpgate code --secret {secret_b32})\n\n"
    )
    out.write("Run it twice: the second bind is refused (the code is spent).\n")
    out.write("An exempt service account binds with its password alone:\n\n")
    out.write(f"  ldapwhoami -x -H {url} -D {DEMO_EXEMPT_DN} -w app-password\n\n")
    out.flush()
