"""What every ``otpgate`` command shares: the parser, printing (text, or JSON with
``--json``; every text line escaped), the one-line errors, prompts and secret files, the
0600 files for secrets, and :class:`Admin` (config, keyring and directory of one command).

The parser names each command's function by module and name (:class:`Command`), so a
command imports only its own module: ``otpgate code`` never loads Twisted or ldap3.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import getpass
import importlib
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from otpgate.config import Config, load_config
from otpgate.errors import OtpgateError
from otpgate.otp.oath import DEFAULT_PERIOD, Algorithm
from otpgate.tokens import escape_unsafe as printable

if TYPE_CHECKING:
    from otpgate.admin.render import PrivateFile
    from otpgate.directory.sync import SyncInventory, SyncStore

T = TypeVar("T")

DEFAULT_CONFIG = "/etc/otpgate/otpgate.toml"
CONFIG_ENV = "OTPGATE_CONFIG"


class UsageError(OtpgateError):
    """A mistake in what the user asked for: printed as one line."""


class CommandFailed(OtpgateError):
    """The command ran and the answer is no (import problems, doctor failures...)."""


def decode_base32(text: str) -> bytes:
    """Base32 as authenticator apps show it: any case, spaces, no padding."""
    cleaned = "".join(text.split()).upper().rstrip("=")
    try:
        return base64.b32decode(cleaned + "=" * (-len(cleaned) % 8))
    except (binascii.Error, ValueError) as exc:
        raise UsageError("--secret is not valid Base32 (letters A-Z and digits 2-7)") from exc


def emit(args: argparse.Namespace, doc: Any, text: str) -> None:
    """Print ``doc`` as JSON with --json, else ``text``."""
    args.emitted = True
    if getattr(args, "json", False):
        print(json.dumps(doc, indent=2, sort_keys=True))  # escapes control characters
    elif text:
        print("\n".join(printable(line) for line in text.split("\n")))


def prompt_secret(prompt: str) -> str:
    """Read a secret without echo.  Commands call it as ``otpgate.cli.prompt_secret``
    (looked up when they run), so a test replaces it there."""
    return getpass.getpass(prompt)


def read_secret_file(path: str) -> str:
    try:
        return Path(path).read_text("utf-8").rstrip("\r\n")
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from exc


def fail(args: argparse.Namespace, exc: BaseException, code: int) -> int:
    """Report ``exc`` as one line on standard error (and, with --json, as a JSON error if
    nothing was printed yet); returns the exit code ``code``."""
    message = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        message = f"{exc.filename or ''}: {exc.strerror}".lstrip(": ")
    line = printable(" ".join(message.split()))
    if getattr(args, "json", False) and not getattr(args, "emitted", False):
        print(json.dumps({"error": line, "command": args.command}))
    print(f"otpgate {args.command}: {line}", file=sys.stderr)
    return code


def run_reactor(work: Callable[[Any], Awaitable[T]], failure: str) -> T:
    """Run the Twisted reactor for one piece of asynchronous work (a send) and return its
    result.  The CLI has no reactor of its own, and a reactor runs once per process: a
    command calls this at most once.  ``failure``: the one line when the work raised."""
    from twisted.internet import defer, task

    outcome: dict[str, T] = {}

    async def run(reactor: Any) -> None:
        outcome["result"] = await work(reactor)

    # The reactor installs its own SIGINT/SIGTERM handlers and leaves them when it stops:
    # put the previous ones back, so that Ctrl-C still interrupts a prompt that follows.
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        task.react(lambda reactor: defer.ensureDeferred(run(reactor)))
    except SystemExit as exc:
        if exc.code not in (0, None) or "result" not in outcome:
            raise CommandFailed(failure) from None
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return outcome["result"]


# -- directory commands -------------------------------------------------------------------


class Admin:
    """Config, keyring and (lazily) the synchronous directory store of one command."""

    def __init__(self, args: argparse.Namespace) -> None:
        from otpgate.vault import Keyring

        self.args = args
        self.config: Config = load_config(Path(args.config))
        self.keyring = Keyring.load(self.config.keyring)
        self._store: SyncStore | None = None
        self._inventory: SyncInventory | None = None

    @property
    def store(self) -> SyncStore:
        from otpgate.directory.sync import open_store

        if self._store is None:
            self._store = open_store(self.config.directory, self.keyring)
        return self._store

    @property
    def inventory(self) -> SyncInventory:
        from otpgate.directory.sync import SyncInventory

        if self._inventory is None:
            self._inventory = SyncInventory.open(self.store)
        return self._inventory

    def entry_values(self, dn: str, attributes: Sequence[str]) -> dict[str, list[bytes]]:
        """The values of ``attributes`` in the entry ``dn`` itself (the user's own), by the
        names as given; [] for an attribute the entry does not have."""
        from otpgate.directory.ldapdata import SCOPE_BASE

        conn = self.store.directory.write()
        entries = conn.search(dn, "(objectClass=*)", list(attributes), scope=SCOPE_BASE)
        found = entries[0].attributes if entries else {}
        return {name: list(found.get(name.lower(), [])) for name in attributes}

    def close(self) -> None:
        if self._store is not None:
            self._store.directory.close()


@contextmanager
def admin(args: argparse.Namespace) -> Iterator[Admin]:
    ctx = Admin(args)
    try:
        yield ctx
    finally:
        ctx.close()


def private_file(path: Path, what: str, consequence: str) -> PrivateFile:
    """A PrivateFile (0600, exclusive, no symlink) made before the directory changes, or
    a one-line UsageError naming ``what`` and the ``consequence``."""
    from otpgate.admin.render import PrivateFileRefused, create_private

    try:
        return create_private(path, what, consequence)
    except PrivateFileRefused as exc:
        raise UsageError(str(exc)) from exc


def fill_private(file: PrivateFile | None, data: Callable[[], bytes]) -> str:
    """Write a PrivateFile made before the directory change; "" or why it failed (the
    change is done by then: the caller still prints what the file would have held)."""
    if file is None:
        return ""
    try:
        file.write(data())  # removes the file if it fails
    except OSError as exc:
        return exc.strerror or str(exc)
    return ""


# -- the parser ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """A command's function ``otpgate.cli.<module>.<name>``, imported when it runs."""

    module: str
    name: str

    def __call__(self, args: argparse.Namespace) -> int:
        module = importlib.import_module(f"otpgate.cli.{self.module}")
        func: Callable[[argparse.Namespace], int] = getattr(module, self.name)
        return func(args)


def _common(p: argparse.ArgumentParser, config: bool = True) -> None:
    if config:
        p.add_argument(
            "--config",
            default=os.environ.get(CONFIG_ENV, DEFAULT_CONFIG),
            help=f"config file (default: ${CONFIG_ENV} or {DEFAULT_CONFIG})",
        )
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="otpgate", description="One-time-password gateway for LDAP and Active Directory."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    code = sub.add_parser("code", help="print an HOTP/TOTP code, like oathtool")
    code.add_argument("--type", choices=("totp", "hotp"), default="totp")
    code.add_argument("--secret", required=True, help="the token's key in Base32")
    code.add_argument("--digits", type=int, default=6)
    code.add_argument("--algorithm", choices=[a.value for a in Algorithm], default="sha1")
    code.add_argument("--period", type=int, default=DEFAULT_PERIOD, help="TOTP period in seconds")
    code.add_argument("--time", type=int, help="TOTP: UNIX time to compute for (default: now)")
    code.add_argument("--counter", type=int, help="HOTP: the counter (default 0)")
    code.add_argument("--json", action="store_true")
    code.set_defaults(func=Command("offline", "cmd_code"))

    kg = sub.add_parser(
        "keygen",
        help="create a keyring, add a new key to one, or make a staged key current",
    )
    kg.add_argument("keyring", help="path of the keyring file (created with mode 0600)")
    kg.add_argument("--key-id", help="name of the new key (default: kYYYYmmddHHMMSS)")
    kg.add_argument(
        "--not-current",
        action="store_true",
        help="add the key without making it current (stage it on every gateway first)",
    )
    kg.add_argument(
        "--make-current",
        metavar="KID",
        help="generate nothing: make the existing key KID (added with --not-current) current",
    )
    kg.set_defaults(func=Command("offline", "cmd_keygen"))

    cc = sub.add_parser("check-config", help="load and validate a config file")
    cc.add_argument("--config", required=True)
    cc.set_defaults(func=Command("offline", "cmd_check_config"))

    en = sub.add_parser(
        "enroll",
        help="enroll a TOTP/HOTP software token (print its QR code), or an e-mail/SMS token "
        "(send a code, enroll once it is typed back)",
    )
    en.add_argument("user")
    en.add_argument("--type", choices=("totp", "hotp", "email", "sms"), default="totp")
    en.add_argument(
        "--attribute",
        metavar="NAME",
        help="email/sms: the attribute of the user's entry the codes go to (default: "
        "[delivery] mail_attribute; the first of sms_attributes the entry has)",
    )
    en.add_argument(
        "--destination-changed",
        action="store_true",
        help="email/sms: re-enroll although the address or number in the entry is not the "
        "one the user's current token was enrolled with (verify the user by other means "
        "first: on AD users may change their own mobile)",
    )
    en.add_argument("--secret", help="use this Base32 key instead of a new random one")
    en.add_argument("--digits", type=int, help="6-8 (default: [otp].digits)")
    en.add_argument("--algorithm", choices=[a.value for a in Algorithm])
    en.add_argument("--period", type=int, help="TOTP period in seconds (default: [otp].period)")
    en.add_argument("--label", help="a name for the token (e.g. 'work phone')")
    en.add_argument("--qr", metavar="FILE", help="also save the QR code as FILE.png or FILE.svg")
    en.add_argument("--no-qr", action="store_true", help="do not draw the QR code in the terminal")
    en.add_argument(
        "--keep-existing",
        action="store_true",
        help="add a second software token instead of replacing the user's current one",
    )
    _common(en)
    en.set_defaults(func=Command("users", "cmd_enroll"))

    sh = sub.add_parser("show", help="a user's tokens and lockout state (never secrets)")
    sh.add_argument("user")
    _common(sh)
    sh.set_defaults(func=Command("users", "cmd_show"))

    ls = sub.add_parser("list", help="every user with OTP state")
    ls.add_argument("--locked", action="store_true", help="only users locked out right now")
    _common(ls)
    ls.set_defaults(func=Command("users", "cmd_list"))

    rv = sub.add_parser("revoke", help="revoke one of a user's tokens")
    rv.add_argument("user")
    rv.add_argument("token", nargs="?", help="token id, serial or label (optional if only one)")
    _common(rv)
    rv.set_defaults(func=Command("users", "cmd_revoke"))

    rs = sub.add_parser("reset", help="revoke all of a user's tokens")
    rs.add_argument("user")
    _common(rs)
    rs.set_defaults(func=Command("users", "cmd_revoke"))

    sy = sub.add_parser("resync", help="resynchronise an HOTP token with three consecutive codes")
    sy.add_argument("user")
    sy.add_argument("code1")
    sy.add_argument("code2")
    sy.add_argument("code3")
    sy.add_argument("--token", help="token id or serial (if the user has several HOTP tokens)")
    _common(sy)
    sy.set_defaults(func=Command("users", "cmd_resync"))

    im = sub.add_parser("import", help="import hardware tokens into the directory inventory")
    im.add_argument("file")
    im.add_argument(
        "--format", required=True, choices=("pskc", "oath-csv", "yubico-csv", "otpauth")
    )
    im.add_argument(
        "--password",
        nargs="?",
        const="",
        metavar="PASSWORD",
        help="PSKC password (asked for when given without a value)",
    )
    im.add_argument("--password-file", help="read the PSKC password from this file")
    im.add_argument("--psk", metavar="HEX", help="PSKC pre-shared AES key in hex")
    im.add_argument(
        "--partial", action="store_true", help="import the good rows even if some are bad"
    )
    im.add_argument("--dry-run", action="store_true", help="check the file, import nothing")
    _common(im)
    im.set_defaults(func=Command("inventory", "cmd_import"))

    asg = sub.add_parser("assign", help="give an inventory token to a user")
    asg.add_argument("serial")
    asg.add_argument("user")
    _common(asg)
    asg.set_defaults(func=Command("inventory", "cmd_assign"))

    ua = sub.add_parser(
        "unassign", help="return a user's hardware token to the inventory, with its counter"
    )
    ua.add_argument("user")
    ua.add_argument("token", help="token id, serial or label")
    _common(ua)
    ua.set_defaults(func=Command("inventory", "cmd_unassign"))

    rn = sub.add_parser("rename", help="change the label of an inventory token")
    rn.add_argument("serial")
    rn.add_argument("name")
    _common(rn)
    rn.set_defaults(func=Command("inventory", "cmd_rename"))

    dl = sub.add_parser("delete", help="delete a token from the inventory")
    dl.add_argument("serial")
    _common(dl)
    dl.set_defaults(func=Command("inventory", "cmd_delete"))

    inv = sub.add_parser("inventory", help="list the unassigned tokens")
    _common(inv)
    inv.set_defaults(func=Command("inventory", "cmd_inventory"))

    sc = sub.add_parser("scratch", help="a new printable scratch list (the old one stops working)")
    sc.add_argument("user")
    sc.add_argument("--count", type=int, default=10, help="how many codes (1-100, default 10)")
    sc.add_argument("--length", type=int, default=8, help="digits per code (6-12, default 8)")
    sc.add_argument("--card", metavar="FILE.html", help="also write a print-ready HTML card")
    sc.add_argument(
        "--mail",
        action="store_true",
        help="send the list to the user's own e-mail address ([delivery]) instead of printing it",
    )
    _common(sc)
    sc.set_defaults(func=Command("users", "cmd_scratch"))

    ul = sub.add_parser("unlock", help="clear a user's lockout")
    ul.add_argument("user")
    _common(ul)
    ul.set_defaults(func=Command("users", "cmd_unlock"))

    from otpgate.cli.suspend import add_parsers  # suspend, resume, lost

    add_parsers(sub, _common)

    from otpgate.cli.apppasswords import add_parsers as add_app_passwords

    add_app_passwords(sub, _common)

    pn = sub.add_parser("pin", help="set or clear a user's PIN (RADIUS logins without a password)")
    pn.add_argument("user")
    what = pn.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--set",
        action="store_true",
        help="set a new PIN, 4-16 digits, read from standard input (asked twice on a terminal)",
    )
    what.add_argument("--clear", action="store_true", help="remove the user's PIN")
    _common(pn)
    pn.set_defaults(func=Command("users", "cmd_pin"))

    rk = sub.add_parser("rekey", help="re-encrypt every stored value under the current key")
    rk.add_argument("--dry-run", action="store_true", help="count, change nothing")
    rk.add_argument(
        "--retire",
        action="store_true",
        help="afterwards remove the older keys from the keyring, if nothing uses them",
    )
    _common(rk)
    rk.set_defaults(func=Command("keys", "cmd_rekey"))

    ms = sub.add_parser(
        "migrate-state",
        help="move users' state from their own entries into [directory].state_dn",
    )
    ms.add_argument("--dry-run", action="store_true", help="count, change nothing")
    _common(ms)
    ms.set_defaults(func=Command("keys", "cmd_migrate_state"))

    dr = sub.add_parser("doctor", help="check the live directory: schema, access, TLS, pinning")
    dr.add_argument("--test-user", help="an ordinary user to check what users can read/write")
    dr.add_argument("--test-password-file", help="the test user's password (else asked for)")
    dr.add_argument(
        "--slapd-config",
        action="append",
        default=[],
        metavar="PATH",
        help="an OpenLDAP server's slapd.conf or slapd.d folder (repeat per server): read for "
        "serverID and multiprovider/mirrormode when cn=config is not readable over LDAP",
    )
    _common(dr)
    dr.set_defaults(func=Command("diagnose", "cmd_doctor"))

    ta = sub.add_parser("test-auth", help="run a real login through the pipeline, step by step")
    ta.add_argument("user")
    ta.add_argument("--password-file", help="read the password from this file (else asked)")
    ta.add_argument("--otp", help="the code (else asked for)")
    ta.add_argument("--client", help="client IP address the policy should assume")
    _common(ta)
    ta.set_defaults(func=Command("diagnose", "cmd_test_auth"))

    from otpgate.cli.census import add_parser as add_census  # needs no config, no directory

    add_census(sub)
    return parser
