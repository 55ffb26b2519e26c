"""The embedded demo: ldaptor's in-memory directory on loopback, and the demo's config.

It exists so that ``twistd otpgate --demo`` runs every front end with no external server.
Two additions make the directory behave like a real one where otpgate relies on it:
Modify refuses to delete a value that is not there (noSuchAttribute) or add one that is
(attributeOrValueExists), which is what makes otpgate's compare-and-swap safe; and it
answers the Who Am I? extended operation so ``ldapwhoami`` works.

The demo's config is a real config file (``demo_config_text``), written with a fresh
keyring to a temporary folder while the demo runs, so that the ``otpgate`` CLI can be
pointed at the demo directory too.  Its e-mail server is the demo's mail sink
(``demomail.py``), which prints what it receives on the console.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from importlib import resources
from io import BytesIO
from typing import Any

from ldaptor import delta, inmemory, interfaces
from ldaptor.protocols import pureldap
from ldaptor.protocols.ldap import ldaperrors, ldapserver
from twisted.internet import protocol

from otpgate.errors import ConfigError

DEMO_BASE_DN = "dc=demo,dc=otpgate"
DEMO_SERVICE_DN = "cn=otpgate,ou=services,dc=demo,dc=otpgate"
DEMO_SERVICE_PASSWORD = "otpgate-demo-service"  # noqa: S105 (the demo directory's fixed account)
DEMO_USER_DN = "uid=alice,ou=people,dc=demo,dc=otpgate"
DEMO_USER_PASSWORD = "alice-password"  # noqa: S105
DEMO_EXEMPT_DN = "uid=app,ou=services,dc=demo,dc=otpgate"
DEMO_EXEMPT_PASSWORD = "app-password"  # noqa: S105
DEMO_HELPDESK_DN = "uid=dana,ou=people,dc=demo,dc=otpgate"
DEMO_HELPDESK_PASSWORD = "dana-password"  # noqa: S105
DEMO_HELPDESK_GROUP = "cn=helpdesk,ou=groups,dc=demo,dc=otpgate"
DEMO_MAIL_USER_DN = "uid=carol,ou=people,dc=demo,dc=otpgate"
DEMO_MAIL_USER_PASSWORD = "carol-password"  # noqa: S105
DEMO_DELIMITER = ","
"""``[otp] otp_delimiter``: "password,code", and "password,email" asks for a code."""
DEMO_RADIUS_SECRET = "otpgate-demo-nas-secret"  # noqa: S105 (the demo NAS's, printed)
WHO_AM_I_OID = b"1.3.6.1.4.1.4203.1.11.3"


class DemoDirectoryServer(ldapserver.LDAPServer):  # type: ignore[misc]
    def handle_LDAPModifyRequest(self, request: Any, controls: Any, reply: Any) -> Any:
        self.checkControls(controls)
        root = interfaces.IConnectedLDAPEntry(self.factory)
        mod = delta.ModifyOp.fromLDAP(request)
        d = root.lookup(mod.dn)

        def apply(entry: Any) -> Any:
            # Check every modification against the entry first, then apply all: atomic,
            # because nothing else runs on the reactor in between.
            scratch = {key: set(values) for key, values in entry.items()}
            for m in mod.modifications:
                present = scratch.setdefault(m.key, set())
                if isinstance(m, delta.Delete):
                    missing = set(m) - present if m else (set() if present else {b""})
                    if missing:
                        raise ldaperrors.LDAPNoSuchAttribute(m.key)
                    present.difference_update(m if m else present.copy())
                elif isinstance(m, delta.Add):
                    if set(m) & present:
                        raise ldaperrors.LDAPAttributeOrValueExists(m.key)
                    present.update(m)
            for m in mod.modifications:
                if isinstance(m, delta.Delete) and m and set(m) == set(entry.get(m.key, ())):
                    del entry[m.key]
                else:
                    m.patch(entry)
            return entry.commit()

        d.addCallback(apply)
        d.addCallback(lambda _: pureldap.LDAPModifyResponse(resultCode=0))
        return d

    def extendedRequest_WhoAmI(self, data: Any, reply: Any) -> Any:
        dn = b"" if self.boundUser is None else b"dn:" + self.boundUser.dn.getText().encode()
        return pureldap.LDAPExtendedResponse(resultCode=0, response=dn)

    extendedRequest_WhoAmI.oid = WHO_AM_I_OID  # type: ignore[attr-defined]


class DemoDirectoryFactory(protocol.ServerFactory):
    protocol = DemoDirectoryServer

    def __init__(self, root: Any) -> None:
        self.root = root

    def __conform__(self, iface: Any) -> Any:
        # Lets ldaptor find the tree (IConnectedLDAPEntry) without a global adapter registry.
        return self.root if iface is interfaces.IConnectedLDAPEntry else None


async def load_demo_tree() -> Any:
    ldif = resources.files("otpgate").joinpath("data/demo.ldif").read_bytes()
    return await inmemory.fromLDIFFile(BytesIO(ldif))


@dataclass(frozen=True)
class DemoPorts:
    """The demo's loopback ports: LDAP proxy (TCP), RADIUS (UDP), web portal (TCP)."""

    ldap: int = 10389
    radius: int = 11812
    web: int = 10080

    def check_free(self) -> None:
        """Raise ConfigError (one line naming the option) unless every port can be bound.

        Checked before anything starts, so a busy port is an error message, not a
        traceback half-way through the start."""
        if self.ldap == self.web:
            raise ConfigError(f"--port and --web-port are both {self.ldap}: pick two ports")
        for option, kind, port in (
            ("--port", socket.SOCK_STREAM, self.ldap),
            ("--radius-port", socket.SOCK_DGRAM, self.radius),
            ("--web-port", socket.SOCK_STREAM, self.web),
        ):
            proto = "TCP" if kind == socket.SOCK_STREAM else "UDP"
            sock = socket.socket(socket.AF_INET, kind)
            try:
                if kind == socket.SOCK_STREAM:
                    # As Twisted's listenTCP does: a port left in TIME_WAIT counts as free.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("127.0.0.1", port))
            except OSError as exc:
                raise ConfigError(
                    f"{option} {port}: cannot listen on 127.0.0.1:{port} ({proto}): "
                    f"{exc.strerror or exc}; choose another port with {option} N"
                ) from exc
            finally:
                sock.close()


def demo_config_text(directory_port: int, ports: DemoPorts, mail_port: int) -> str:
    """The demo gateway's config file (the keyring beside it, as ``keyring.json``);
    ``mail_port``: the demo's mail sink (``demomail.py``) on 127.0.0.1."""

    def q(value: Any) -> str:
        return json.dumps(value)  # TOML basic strings and arrays of them look like JSON

    return f"""\
# The otpgate demo's config: written by `twistd otpgate --demo`, removed when it stops.
# Every front end on loopback only; the directory is the demo's in-memory one.

[directory]
profile = "openldap"
urls = [{q(f"ldap://127.0.0.1:{directory_port}")}]
base_dn = {q(DEMO_BASE_DN)}
bind_dn = {q(DEMO_SERVICE_DN)}
bind_password = {q(DEMO_SERVICE_PASSWORD)}
# The demo directory has no access rules: any client may write any entry, the users' own
# OTP state included, so a user could roll it back and replay a code. Acceptable for this
# throwaway loopback demo only; never set this where real users log in.
allow_self_writable_state = true

[vault]
keyring = "keyring.json"

[otp]
issuer = "otpgate demo"
# Password and code are typed as "password,code" on every front end; "password,email"
# asks for a code by e-mail instead (carol).
otp_delimiter = {q(DEMO_DELIMITER)}

[delivery]
# Codes sent by e-mail go to the demo's own mail sink, which prints them on its console.
# A short cooldown between two sends to one user, so that trying it out needs no waiting.
send_cooldown = 10

[[delivery.smtp]]
host = "127.0.0.1"
port = {mail_port}
security = "none"
from = "otpgate@demo.otpgate"
timeout = 5

[policy]
exempt_dns = [{q(DEMO_EXEMPT_DN)}]

[ldap_proxy]
listen = [{q(f"tcp:{ports.ldap}:interface=127.0.0.1")}]

[radius]
listen = [{q(f"127.0.0.1:{ports.radius}")}]

[[radius.clients]]
name = "demo NAS"
address = "127.0.0.1/32"
secret = {q(DEMO_RADIUS_SECRET)}
mode = "append"

[web]
listen = [{q(f"tcp:{ports.web}:interface=127.0.0.1")}]
helpdesk_groups = [{q(DEMO_HELPDESK_GROUP)}]
metrics_networks = ["127.0.0.0/8"]
"""
