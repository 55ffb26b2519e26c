"""A real SMTP server on loopback for tests: aiosmtpd with STARTTLS or implicit TLS (SMTPS)
and AUTH, whose received messages the test reads.

Usage::

    with MailServer(tls_paths, mode="starttls", users={"otpgate": "pw"}) as server:
        ... send to 127.0.0.1:server.port ...
        server.messages[0].rcpt_tos, server.messages[0].message (email.message.EmailMessage)

Starting fails loudly (never skips) if the server cannot listen.
"""

from __future__ import annotations

import email
import email.policy
import ssl
import threading
import time
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from .tlsca import TLSPaths


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    raw: bytes
    auth_login: str | None

    @property
    def message(self) -> EmailMessage:
        parsed = email.message_from_bytes(self.raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


class _Handler:
    def __init__(self, server: MailServer) -> None:
        self.server = server

    async def handle_DATA(self, smtp: Any, session: Any, envelope: Any) -> str:
        data = session.auth_data if session.authenticated else None
        login = data.decode() if isinstance(data, bytes) else None
        with self.server.lock:
            self.server.messages.append(
                Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.content, login)
            )
        return "250 OK"


class MailServer:
    """``mode``: "starttls" (STARTTLS required before MAIL and AUTH), "tls" (SMTPS) or
    "plain" (no TLS; loopback tests of the "none" setting)."""

    def __init__(
        self,
        tls: TLSPaths | None,
        mode: str = "starttls",
        users: dict[str, str] | None = None,
        port: int = 0,
    ) -> None:
        self.tls = tls
        self.mode = mode
        self.users = users or {}
        self.messages: list[Received] = []
        self.auth_failures = 0
        self.lock = threading.Lock()
        self._port = port
        self.controller: Controller | None = None

    def _auth(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
        if isinstance(data, LoginPassword):
            user, password = data.login.decode(), data.password.decode()
            if self.users.get(user) == password:
                return AuthResult(success=True, auth_data=data.login)
        with self.lock:
            self.auth_failures += 1
        return AuthResult(success=False, handled=False)

    def start(self) -> MailServer:
        from tests.netutil import free_port

        context = None
        if self.tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(str(self.tls.cert_file), str(self.tls.key_file))
        port = self._port or free_port()
        kwargs: dict[str, Any] = {
            "hostname": "127.0.0.1",
            "port": port,
            "server_hostname": "localhost",
            "ready_timeout": 10.0,
        }
        if self.users:
            # aiosmtpd knows TLS only from STARTTLS: with SMTPS the whole connection is TLS.
            kwargs.update(
                authenticator=self._auth,
                auth_required=True,
                auth_require_tls=self.mode == "starttls",
            )
        if self.mode == "starttls":
            kwargs.update(tls_context=context, require_starttls=True)
        elif self.mode == "tls":
            kwargs.update(ssl_context=context)
        self.controller = Controller(_Handler(self), **kwargs)
        self.controller.start()
        self.port = port
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def __enter__(self) -> MailServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            time.sleep(0.05)
        raise AssertionError(f"expected {count} message(s), got {len(self.messages)}")


def smtp_tables(workdir: Path, tls: TLSPaths, *ports: int) -> list[dict[str, Any]]:
    """``[[delivery.smtp]]`` tables for MailServers on ``ports`` (in this order): STARTTLS,
    AUTH as otpgate/mail-pw (its password in a file under ``workdir``), the test CA."""
    password = workdir / "smtp-password"
    password.write_text("mail-pw\n")
    return [
        {
            "host": "localhost",
            "port": port,
            "ca_file": str(tls.ca_file),
            "username": "otpgate",
            "password_file": str(password),
            "from": "otpgate@example.org",
            "timeout": 5,
        }
        for port in ports
    ]
