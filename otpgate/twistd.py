"""What ``twistd otpgate`` runs: the configured gateway, or the embedded demo."""

from __future__ import annotations

import base64
import io
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import segno
from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from otpgate.admin.enrollment import enroll_change, new_oath_token, otpauth_uri
from otpgate.admin.sentcodes import new_sent_token, sent_enroll_change
from otpgate.auth.oob import destination_binding
from otpgate.config import Config, load_config
from otpgate.demo import (
    DEMO_DELIMITER,
    DEMO_HELPDESK_PASSWORD,
    DEMO_MAIL_USER_DN,
    DEMO_MAIL_USER_PASSWORD,
    DEMO_RADIUS_SECRET,
    DEMO_USER_DN,
    DEMO_USER_PASSWORD,
    DemoDirectoryFactory,
    DemoPorts,
    demo_config_text,
    load_demo_tree,
)
from otpgate.demomail import MailSink
from otpgate.errors import ConfigError, VaultError
from otpgate.service import Gateway, LoggingService, make_service
from otpgate.tokens import TokenType
from otpgate.vault import keygen

log = Logger()


def make_service_from_options(options: Any) -> service.IService:
    from twisted.internet import reactor

    try:
        if options["demo"]:
            ports = DemoPorts(options["port"], options["radius-port"], options["web-port"])
            ports.check_free()
            return DemoService(reactor, ports)
        path = Path(options["config"])
        return make_service(load_config(path), reactor, path)
    except (ConfigError, VaultError) as exc:
        print(f"otpgate{' demo' if options['demo'] else ''}: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc


@dataclass(frozen=True)
class DemoToken:
    """A token the demo enrolled at startup, for the banner."""

    name: str
    uri: str
    secret_b32: str


class DemoService(service.MultiService):
    """The demo directory and its mail sink on free loopback ports, and the whole gateway
    in front of them.

    The gateway is the one ``twistd otpgate --config`` runs (``make_service``), on a config
    file and keyring written to a temporary folder that is removed when the service stops
    (Ctrl-C, SIGTERM), so that the ``otpgate`` CLI can use them meanwhile."""

    def __init__(self, reactor: Any, ports: DemoPorts) -> None:
        service.MultiService.__init__(self)
        self.reactor = reactor
        self.ports = ports
        self.folder: Path | None = None
        self.directory_port: Any = None
        self.mail_port: Any = None
        self.gateway: Gateway | None = None
        self.ready: defer.Deferred[None] | None = None

    def startService(self) -> None:
        service.MultiService.startService(self)
        self.ready = defer.ensureDeferred(self._start())
        self.ready.addErrback(self._failed)

    def _failed(self, failure: Any) -> None:
        log.failure("otpgate demo could not start", failure)
        if self.reactor.running:
            self.reactor.stop()

    async def _start(self) -> None:
        tree = await load_demo_tree()
        if not self.running:
            return
        self.directory_port = self.reactor.listenTCP(
            0, DemoDirectoryFactory(tree), interface="127.0.0.1"
        )
        self.mail_port = self.reactor.listenTCP(0, MailSink(show_mail), interface="127.0.0.1")
        self.folder = folder = Path(tempfile.mkdtemp(prefix="otpgate-demo-"))  # mode 0700
        keygen(folder / "keyring.json", "demo")  # mode 0600
        config_path = folder / "otpgate.toml"
        fd = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as config_file:
            config_file.write(
                demo_config_text(
                    self.directory_port.getHost().port, self.ports, self.mail_port.getHost().port
                )
            )
        config = load_config(config_path)
        gateway_service = make_service(config, self.reactor, config_path)
        gateway = gateway_service.gateway if isinstance(gateway_service, LoggingService) else None
        if gateway is None:
            raise RuntimeError("make_service made no gateway")
        self.gateway = gateway
        gateway_service.setServiceParent(self)  # running: the listeners start now
        alice = await enroll_demo_token(gateway, config, "alice", "demo phone")
        dana = await enroll_demo_token(gateway, config, "dana", "help desk phone")
        await enroll_demo_mail_token(gateway, config, "carol")
        if self.running:
            out = sys.__stdout__ or sys.stdout
            out.write(demo_banner(self.ports, alice, dana, config_path))
            out.flush()

    def stopService(self) -> Any:
        d = defer.maybeDeferred(service.MultiService.stopService, self)
        d.addBoth(self._clean_up)
        return d

    def _clean_up(self, result: Any) -> Any:
        if self.gateway is not None:
            self.gateway.close()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
        ports = [p for p in (self.directory_port, self.mail_port) if p is not None]
        d = defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in ports])
        d.addBoth(lambda _: result)
        return d


async def enroll_demo_token(gateway: Gateway, config: Config, name: str, label: str) -> DemoToken:
    user = await gateway.store.resolve(name)
    token, secret = new_oath_token(config.otp, label=label)
    max_tokens = config.otp.max_tokens_per_user
    await gateway.store.update(user, lambda s: enroll_change(s, token, secret, max_tokens))
    secret_b32 = base64.b32encode(secret.key).decode().rstrip("=")
    return DemoToken(name, otpauth_uri(token, secret, name, config.otp.issuer), secret_b32)


async def enroll_demo_mail_token(gateway: Gateway, config: Config, name: str) -> None:
    """An e-mail token for ``name``, written directly: its mailbox is the demo's own mail
    sink, so the proof an enrollment asks for elsewhere (a code typed back) shows nothing
    here.  ``otpgate enroll carol --type email`` against the demo does it the real way."""
    delivery = config.delivery
    if delivery is None:
        raise RuntimeError("the demo config has no [delivery]")
    user = await gateway.store.resolve(name)
    token, secret = new_sent_token(
        TokenType.EMAIL, delivery.mail_attribute, delivery.codes.digits, "demo mailbox"
    )
    (address,) = await gateway.entry_values(user.dn, delivery.mail_attribute)
    bound = destination_binding(secret.key, address.decode("utf-8").strip())
    token = replace(token, bound=bound)  # the entry's own address, as a proof would bind it
    await gateway.store.update(user, lambda s: sent_enroll_change(s, token, secret))


def show_mail(recipient: str, text: str) -> None:
    """What the demo's mail sink received, on the console (a demo's mailbox only)."""
    out = sys.__stdout__ or sys.stdout
    lines = [f"otpgate demo: mail for {recipient}, received by the demo's mail sink:"]
    lines += [f"  | {line}" for line in text.splitlines()]
    out.write("\n".join(lines) + "\n")
    out.flush()


def otpgate_command() -> str:
    """How to run this install's ``otpgate`` from here: the bare name when PATH finds this
    one, else its path (relative when below the current directory: ``.venv/bin/otpgate``)."""
    beside = Path(sys.executable).with_name("otpgate")
    if not beside.exists():
        return "otpgate"
    found = shutil.which("otpgate")
    if found is not None and Path(found).resolve() == beside.resolve():
        return "otpgate"
    try:
        return str(beside.relative_to(Path.cwd()))
    except ValueError:
        return str(beside)


def qr_text(uri: str) -> str:
    text = io.StringIO()
    segno.make(uri, error="m").terminal(out=text, compact=True)
    return text.getvalue()


def demo_banner(ports: DemoPorts, alice: DemoToken, dana: DemoToken, config: Path) -> str:
    """What the person at the terminal reads: one line per front end, then the QR codes."""
    cli = otpgate_command()
    code = f"{DEMO_DELIMITER}$({cli} code --secret {alice.secret_b32})"
    web = f"http://127.0.0.1:{ports.web}"
    ask = f"{DEMO_MAIL_USER_PASSWORD}{DEMO_DELIMITER}email"
    lines = [
        "",
        "otpgate demo: every front end on 127.0.0.1, the directory in memory, nothing kept.",
        "",
        f"  LDAP     ldapwhoami -x -H ldap://127.0.0.1:{ports.ldap} -D {DEMO_USER_DN} "
        f"-w {DEMO_USER_PASSWORD}{code}",
        f"  RADIUS   radtest -x alice {DEMO_USER_PASSWORD}{code} 127.0.0.1:{ports.radius} 0 "
        f"{DEMO_RADIUS_SECRET}",
        f"  portal   {web}  alice / {DEMO_USER_PASSWORD} + code; "
        f"help desk: dana / {DEMO_HELPDESK_PASSWORD} + dana's code",
        f"  metrics  curl {web}/metrics",
        f"  CLI      {cli} show alice --config {config}",
        f"  e-mail   ldapwhoami -x -H ldap://127.0.0.1:{ports.ldap} -D {DEMO_MAIL_USER_DN} "
        f"-w {ask}",
        "",
        "Each code works once, on every front end: run a line twice and the second is refused;",
        "the next front end needs the next code (30 s). carol's code comes by e-mail: the line",
        f"above prints it here; then bind with -w {DEMO_MAIL_USER_PASSWORD}{DEMO_DELIMITER}CODE.",
        "",
        f"alice's token: scan it into an authenticator app (or: {cli} code --secret "
        f"{alice.secret_b32})",
        f"  {alice.uri}",
        qr_text(alice.uri),
        f"dana's token, the help desk's ({cli} code --secret {dana.secret_b32})",
        f"  {dana.uri}",
        qr_text(dana.uri),
        f"Stop with Ctrl-C: the demo directory and {config.parent} go with it.",
        "",
    ]
    return "\n".join(lines)
