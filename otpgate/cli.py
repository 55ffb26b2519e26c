"""The ``otpgate`` command line: one sub-command per admin task.

Every command prints human output by default and JSON with ``--json``, and exits
non-zero with one clear line on standard error (no traceback for a user mistake):
2 for a usage or configuration error, 1 when the directory or the data say no.

Directory commands run synchronously over ldap3 (``otpgate.directory.sync``), driving the
same pure mapping and compare-and-swap planning as the gateway.  ``test-auth`` runs the
gateway's own async pipeline under the Twisted reactor.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import dataclasses
import getpass
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from otpgate.codec import CodecError
from otpgate.config import Config, ConfigError, load_config
from otpgate.directory.ldapdata import DirectoryError
from otpgate.importers import ImportFormatError
from otpgate.otp.oath import (
    DEFAULT_PERIOD,
    Algorithm,
    check_digits,
    check_period,
    hotp,
    time_step,
)
from otpgate.tokens import escape_unsafe as printable
from otpgate.vault import VaultError, keygen, make_current

DEFAULT_CONFIG = "/etc/otpgate/otpgate.toml"
CONFIG_ENV = "OTPGATE_CONFIG"


class UsageError(Exception):
    """A mistake in what the user asked for: printed as one line."""


class CommandFailed(Exception):
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
    """Read a secret without echo (tests replace this)."""
    return getpass.getpass(prompt)


def read_secret_file(path: str) -> str:
    try:
        return Path(path).read_text("utf-8").rstrip("\r\n")
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from exc


# -- offline commands --------------------------------------------------------------------


def cmd_code(args: argparse.Namespace) -> int:
    key = decode_base32(args.secret)
    if not key:
        raise UsageError("--secret is empty")
    algorithm = Algorithm(args.algorithm)
    try:
        check_digits(args.digits)
        check_period(args.period)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if args.type == "hotp":
        if args.time is not None:
            raise UsageError("--time is for --type totp; give --counter N for HOTP")
        counter = args.counter if args.counter is not None else 0
    else:
        if args.counter is not None:
            raise UsageError("--counter is for --type hotp; give --time UNIX for TOTP")
        now = args.time if args.time is not None else time.time()
        counter = time_step(now, args.period)
    if counter < 0:
        raise UsageError("the counter (or time) must not be negative")
    code = hotp(key, counter, args.digits, algorithm)
    if args.json:
        print(json.dumps({"code": code, "counter": counter}))
    else:
        print(code)
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    path = Path(args.keyring)
    if args.make_current:
        if args.key_id or args.not_current:
            raise UsageError("--make-current KID changes the current key; it takes no other option")
        before = make_current(path, args.make_current)
        if before == args.make_current:
            print(f"key {before!r} is already current in {path}")
        else:
            print(
                f"key {args.make_current!r} is now current in {path} (was {before!r}); "
                "copy the keyring to every gateway, then run `otpgate rekey`"
            )
        return 0
    kid = args.key_id or time.strftime("k%Y%m%d%H%M%S")
    existed = path.exists()
    keygen(path, kid, make_current=not args.not_current)
    verb = "added key" if existed else "created keyring with key"
    print(f"{verb} {kid!r} in {path} (mode 0600)" + ("" if args.not_current else "; it is current"))
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    config = load_config(Path(args.config))
    print(
        f"{args.config}: OK (profile {config.directory.profile.name}, "
        f"{len(config.directory.urls)} directory URL(s))"
    )
    return 0


# -- directory commands -------------------------------------------------------------------


class Admin:
    """Config, keyring and (lazily) the synchronous directory store of one command."""

    def __init__(self, args: argparse.Namespace) -> None:
        from otpgate.vault import Keyring

        self.args = args
        self.config: Config = load_config(Path(args.config))
        self.keyring = Keyring.load(self.config.keyring)
        self._store: Any = None
        self._inventory: Any = None

    @property
    def store(self) -> Any:
        from otpgate.directory.sync import open_store

        if self._store is None:
            self._store = open_store(self.config.directory, self.keyring)
        return self._store

    @property
    def inventory(self) -> Any:
        from otpgate.directory.sync import SyncInventory

        if self._inventory is None:
            self._inventory = SyncInventory.open(self.store)
        return self._inventory

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


def _summary(ctx: Admin, name: str) -> Any:
    from otpgate.admin.listing import summarise

    user = ctx.store.resolve(name)
    # Listing never decrypts a seed: decode without it.
    state = ctx.store.decode(user, with_secrets=False)
    return summarise(name, user.dn, state)


def cmd_enroll(args: argparse.Namespace) -> int:
    from otpgate.admin.render import qr_bytes, qr_terminal

    key = decode_base32(args.secret) if args.secret else None
    if args.qr and Path(args.qr).suffix.lower() not in (".png", ".svg"):
        raise UsageError(f"--qr {args.qr}: give a .png or .svg file name")
    # The QR file is created (empty, 0600, exclusively) before the directory changes: a bad
    # path must fail while the user's old token still works.
    qr_file = _create_private(Path(args.qr), "--qr", "nothing was changed") if args.qr else None
    try:
        enrolled, gone, user, uri = _enroll(args, key)
    except BaseException:
        if qr_file is not None:
            qr_file.discard()
        raise
    qr_error = _fill_private(qr_file, lambda: qr_bytes(uri, Path(args.qr).suffix))
    doc = {
        "user": args.user,
        "dn": user.dn,
        "token": enrolled.to_dict(),
        "replaced": [t.id for t in gone],
        "uri": uri,
        "qr_file": None if qr_error else args.qr,
    }
    lines = [
        f"enrolled {enrolled.type.value.upper()} token {enrolled.id} for {args.user} ({user.dn})"
    ]
    if gone:
        lines.append("replaced: " + ", ".join(f"{t.id} ({t.type.value})" for t in gone))
    lines.append("Add it to an authenticator app: scan the QR code or enter the key URI.")
    if not args.no_qr:
        lines.append(qr_terminal(uri).rstrip("\n"))
    lines.append(uri)
    if args.qr and not qr_error:
        lines.append(f"QR code written to {args.qr} (mode 0600: it holds the secret)")
    emit(args, doc, "\n".join(lines))
    if qr_error:
        raise CommandFailed(
            f"the token is enrolled, but the QR file {args.qr} could not be written "
            f"({qr_error}); use the key URI printed above"
        )
    return 0


def _fill_private(file: Any, data: Callable[[], bytes]) -> str:
    """Write a PrivateFile made before the directory change; "" or why it failed (the
    change is done by then: the caller still prints what the file would have held)."""
    if file is None:
        return ""
    try:
        file.write(data())  # removes the file if it fails
    except OSError as exc:
        return exc.strerror or str(exc)
    return ""


def _enroll(args: argparse.Namespace, key: bytes | None) -> tuple[Any, Any, Any, str]:
    from otpgate.admin.enrollment import enroll_replacing, new_oath_token, otpauth_uri
    from otpgate.tokens import TokenType

    with admin(args) as ctx:
        otp = ctx.config.otp
        try:
            token, secret = new_oath_token(
                otp,
                TokenType(args.type),
                key=key,
                label=args.label or "",
                digits=args.digits,
                algorithm=Algorithm(args.algorithm) if args.algorithm else None,
                period=args.period,
            )
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
        user = ctx.store.resolve(args.user)
        change = enroll_replacing(token, secret, otp.max_tokens_per_user, not args.keep_existing)
        (enrolled, gone), user = ctx.store.update(user, change)
        uri = otpauth_uri(enrolled, secret, args.user, otp.issuer)
    return enrolled, gone, user, uri


def cmd_show(args: argparse.Namespace) -> int:
    from otpgate.admin.listing import show_text

    with admin(args) as ctx:
        summary = _summary(ctx, args.user)
    now = time.time()
    emit(args, summary.to_dict(now), show_text(summary, now))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from otpgate.admin.listing import collect_summaries, list_text

    now = time.time()
    with admin(args) as ctx:
        store = ctx.store
        summaries, problems = collect_summaries(
            store.users_with_state(),
            lambda user: store.decode(user, with_secrets=False),
            now,
            args.locked,
        )
    text = list_text(summaries, now)
    if problems:
        text += "\n" + "\n".join(f"unreadable: {p['dn']}: {p['error']}" for p in problems)
    emit(args, {"users": [s.to_dict(now) for s in summaries], "unreadable": problems}, text)
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    from otpgate.admin.manage import reset_change, revoke_change

    with admin(args) as ctx:
        user = ctx.store.resolve(args.user)
        if args.command == "reset":
            removed, user = ctx.store.update(user, reset_change)
        else:
            removed, user = ctx.store.update(user, lambda s: revoke_change(s, args.token))
    ids = [t.id for t in removed]
    what = ", ".join(
        f"{t.id} ({t.type.value}{' ' + t.serial if t.serial else ''})" for t in removed
    )
    text = f"{args.user}: revoked {what}" if removed else f"{args.user} had no tokens"
    emit(args, {"user": args.user, "dn": user.dn, "revoked": ids}, text)
    return 0


def cmd_resync(args: argparse.Namespace) -> int:
    from otpgate.admin.manage import resync_change

    codes = (args.code1, args.code2, args.code3)
    with admin(args) as ctx:
        user = ctx.store.resolve(args.user)
        now = time.time()
        (token, counter), user = ctx.store.update(
            user, lambda s: resync_change(s, args.token, codes, now)
        )
    text = (
        f"{args.user}: token {token.id} resynchronised at counter {counter}; "
        f"the next code is number {counter + 1}"
    )
    emit(args, {"user": args.user, "token": token.id, "counter": counter}, text)
    return 0


def cmd_unlock(args: argparse.Namespace) -> int:
    from otpgate.admin.manage import unlock_change

    with admin(args) as ctx:
        user = ctx.store.resolve(args.user)
        before, user = ctx.store.update(user, unlock_change)
    was = "was locked" if before.locked_until > time.time() else "was not locked"
    text = f"{args.user}: unlocked ({was}, {before.failures} recent failure(s) cleared)"
    emit(
        args,
        {
            "user": args.user,
            "was_locked": before.locked_until > time.time(),
            "failures_cleared": before.failures,
        },
        text,
    )
    return 0


def cmd_scratch(args: argparse.Namespace) -> int:
    from otpgate.admin.manage import scratch_change
    from otpgate.admin.render import scratch_card_html
    from otpgate.otp.scratch import format_for_print, generate_scratch_list

    if args.card and Path(args.card).suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"--card {args.card}: the card is HTML (give a .html file name)")
    try:
        codes, scratch = generate_scratch_list(args.count, args.length)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    # The card file first (empty, 0600, exclusively): a bad path fails while the old list
    # still works.
    card = _create_private(Path(args.card), "--card", "nothing was changed") if args.card else None
    try:
        with admin(args) as ctx:
            user = ctx.store.resolve(args.user)
            now = time.time()
            token, user = ctx.store.update(user, lambda s: scratch_change(s, scratch, now))
            issuer = ctx.config.otp.issuer
    except BaseException:
        if card is not None:
            card.discard()
        raise
    card_error = _fill_private(
        card, lambda: scratch_card_html(args.user, issuer, codes, now).encode("utf-8")
    )
    printed = format_for_print(codes)
    lines = [f"new scratch list {token.id} for {args.user}; any previous list no longer works:"]
    lines += [f"  {i:>3}. {code}" for i, code in enumerate(printed, start=1)]
    if args.card and not card_error:
        lines.append(f"print-ready card: {args.card} (mode 0600; delete it after printing)")
    emit(
        args,
        {
            "user": args.user,
            "token": token.id,
            "codes": codes,
            "card": None if card_error else args.card,
        },
        "\n".join(lines),
    )
    if card_error:
        raise CommandFailed(
            f"the new list is active, but the card {args.card} could not be written "
            f"({card_error}); the codes are printed above"
        )
    return 0


# -- inventory ---------------------------------------------------------------------------


def cmd_import(args: argparse.Namespace) -> int:
    from otpgate.admin.imports import ImportRefused, import_tokens
    from otpgate.admin.render import Progress
    from otpgate.importers import MAX_IMPORT_BYTES
    from otpgate.importers.csvfiles import parse_oath_csv, parse_yubico_csv
    from otpgate.importers.pskc import parse_pskc

    path = Path(args.file)
    try:
        if path.stat().st_size > MAX_IMPORT_BYTES:
            raise UsageError(f"{path} is larger than {MAX_IMPORT_BYTES // 2**20} MiB")
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from exc
    if args.format == "pskc":
        psk = None
        if args.psk:
            try:
                psk = bytes.fromhex(args.psk)
            except ValueError as exc:
                raise UsageError("--psk must be hexadecimal (32 hex digits for AES-128)") from exc
        password = None
        if args.password_file:
            password = read_secret_file(args.password_file)
        elif args.password is not None:
            password = args.password or prompt_secret("PSKC password: ")
        result = parse_pskc(data, psk=psk, password=password)
    else:
        if args.psk or args.password is not None or args.password_file:
            raise UsageError("--psk and --password are for --format pskc")
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise UsageError(f"{path} is not UTF-8 text") from exc
        parser = parse_oath_csv if args.format == "oath-csv" else parse_yubico_csv
        result = parser(text)
    with admin(args) as ctx:
        try:
            outcome = import_tokens(
                ctx.inventory,
                result,
                path,
                data,
                partial=args.partial,
                dry_run=args.dry_run,
                progress=lambda total: Progress(
                    total, "importing", sys.stderr, None if not args.json else False
                ),
            )
        except ImportRefused as exc:
            raise CommandFailed(str(exc)) from exc
        result = outcome.result
        if args.dry_run:
            emit(
                args,
                {
                    "would_import": [t.serial for t in result.tokens],
                    "problems": len(result.problems),
                },
                f"dry run: {len(result.tokens)} token(s) would be imported",
            )
            return 0
        text = f"imported {len(outcome.imported)} token(s) into {ctx.config.directory.inventory_dn}"
        if result.problems:
            text += f"; {len(result.problems)} row(s) skipped, marked in {outcome.error_path}"
        emit(
            args,
            {
                "imported": outcome.imported,
                "skipped": [{"row": p.row, "error": p.message} for p in result.problems],
                "error_file": str(outcome.error_path) if result.problems else None,
            },
            text,
        )
        return 0


def _create_private(path: Path, what: str, consequence: str) -> Any:
    """A PrivateFile (0600, exclusive, no symlink) or a clear one-line refusal."""
    from otpgate.admin.render import PrivateFileRefused, create_private

    try:
        return create_private(path, what, consequence)
    except PrivateFileRefused as exc:
        raise UsageError(str(exc)) from exc


def cmd_assign(args: argparse.Namespace) -> int:
    with admin(args) as ctx:
        token = ctx.inventory.assign(args.serial, args.user, ctx.config.otp.max_tokens_per_user)
    text = f"assigned {token.type.value} token {args.serial} to {args.user} (token id {token.id})"
    emit(args, {"serial": args.serial, "user": args.user, "token": token.to_dict()}, text)
    return 0


def cmd_rename(args: argparse.Namespace) -> int:
    with admin(args) as ctx:
        item = ctx.inventory.get(args.serial)
        if item.token is None or item.secret is None:
            raise CommandFailed(f"serial {args.serial} is being assigned right now")
        try:
            token = dataclasses.replace(item.token, label=args.name)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
        ctx.inventory.replace(item, token, item.secret, item.last)
    emit(args, {"serial": args.serial, "label": args.name}, f"{args.serial}: label {args.name!r}")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    with admin(args) as ctx:
        ctx.inventory.delete(args.serial)
    emit(args, {"deleted": args.serial}, f"deleted {args.serial} from the inventory")
    return 0


def cmd_inventory(args: argparse.Namespace) -> int:
    from otpgate.admin.listing import table, when

    with admin(args) as ctx:
        mapper = ctx.inventory.mapper
        rows = []
        docs = []
        for entry in ctx.inventory.entries():
            try:
                item = mapper.item(entry)
            except (CodecError, DirectoryError) as exc:
                serial = (entry.first("cn") or b"?").decode("utf-8", "replace")
                docs.append({"serial": serial, "state": "unreadable", "error": str(exc)})
                rows.append([serial, "-", "-", "-", f"unreadable: {exc}"])
                continue
            token = item.token
            state = "available" if token is not None else "being assigned"
            docs.append(
                {
                    "serial": item.serial,
                    "state": state,
                    "type": token.type.value if token else None,
                    "label": token.label if token else None,
                    "created": token.created if token else None,
                }
            )
            rows.append(
                [
                    item.serial,
                    token.type.value if token else "-",
                    token.label if token and token.label else "-",
                    when(token.created) if token else "-",
                    state,
                ]
            )
    text = (
        table(("SERIAL", "TYPE", "LABEL", "IMPORTED", "STATE"), rows)
        if rows
        else "the inventory is empty"
    )
    emit(args, {"tokens": docs}, text)
    return 0


# -- rekey -------------------------------------------------------------------------------


def cmd_rekey(args: argparse.Namespace) -> int:
    from otpgate.admin.rekey import RetireRefused, keys_of_the_run, rekey_pass, retire_after
    from otpgate.admin.render import Progress

    with admin(args) as ctx:
        store = ctx.store
        current = ctx.keyring.current
        try:
            run_keys = keys_of_the_run(ctx.config.keyring, ctx.keyring, args.retire)
            report = rekey_pass(
                store,
                ctx.inventory if ctx.config.directory.inventory_dn else None,
                current,
                args.dry_run,
                lambda total: Progress(
                    total, "rekey", sys.stderr, None if not args.json else False
                ),
            )
            retired: list[str] = []
            if args.retire and not args.dry_run:
                retired = retire_after(report, ctx.config.keyring, current, run_keys)
        except RetireRefused as exc:
            raise CommandFailed(str(exc)) from exc
    verb = "would rewrite" if args.dry_run else "rewrote"
    lines = [
        f"rekey to key {current!r}: {report.scanned} entr(y/ies) scanned, {verb} "
        f"{report.rewritten}, {report.current} already current"
    ]
    lines += [f"  failed: {dn}: {err}" for dn, err in report.failed]
    if report.old_keys:
        lines.append(f"keys still in use: {', '.join(sorted(report.old_keys))}")
    elif not args.dry_run and not report.failed:
        lines.append(
            "no stored value uses an older key: `otpgate rekey --retire` removes them from the "
            "keyring (update every gateway's keyring too)"
            if not retired
            else f"retired key(s) {', '.join(retired)} from {ctx.config.keyring}"
        )
    doc = {**report.to_dict(), "current_key": current, "retired": retired, "dry_run": args.dry_run}
    emit(args, doc, "\n".join(lines))
    if report.failed:
        raise CommandFailed(f"{len(report.failed)} value(s) could not be rewritten; run it again")
    return 0


# -- doctor ------------------------------------------------------------------------------


def cmd_doctor(args: argparse.Namespace) -> int:
    from otpgate.admin.doctor import failed, render
    from otpgate.admin.doctor_live import Doctor

    password = None
    if args.test_password_file:
        password = read_secret_file(args.test_password_file)
    elif args.test_user and sys.stdin.isatty():
        password = prompt_secret(f"password of {args.test_user}: ")
    with admin(args) as ctx:
        say: Callable[[str], None] | None = None
        if not args.json and sys.stderr.isatty():

            def say(text: str) -> None:
                print(f"... {text}", file=sys.stderr)

        checks = Doctor(ctx.config, ctx.store, args.test_user, password, say).run()
    emit(args, {"checks": [c.to_dict() for c in checks], "ok": not failed(checks)}, render(checks))
    if failed(checks):
        count = sum(1 for c in checks if c.status.value == "fail")
        raise CommandFailed(f"{count} check(s) failed; see the fixes above")
    return 0


# -- test-auth ---------------------------------------------------------------------------


def cmd_test_auth(args: argparse.Namespace) -> int:
    from twisted.internet import task

    if args.password_file:
        password = read_secret_file(args.password_file)
    else:
        password = prompt_secret(f"password of {args.user}: ")
    otp = (args.otp if args.otp is not None else prompt_secret("OTP: ")).strip()
    config = load_config(Path(args.config))
    from otpgate.vault import Keyring

    keyring = Keyring.load(config.keyring)
    out = sys.stdout
    outcome: dict[str, Any] = {}

    async def run(reactor: Any) -> None:
        outcome["code"] = await _test_auth(reactor, config, keyring, args, password, otp, out)

    try:
        task.react(lambda reactor: _deferred(run(reactor)))
    except SystemExit as exc:
        if exc.code not in (0, None):
            return int(exc.code) if isinstance(exc.code, int) else 1
    return int(outcome.get("code", 1))


def _deferred(coro: Any) -> Any:
    from twisted.internet import defer

    return defer.ensureDeferred(coro)


async def _test_auth(
    reactor: Any,
    config: Config,
    keyring: Any,
    args: argparse.Namespace,
    password: str,
    otp: str,
    out: TextIO,
) -> int:
    from otpgate.auth.pipeline import AuthRequest
    from otpgate.service import Gateway

    steps: list[dict[str, Any]] = []

    def step(name: str, ok: bool | None, detail: str) -> None:
        steps.append({"step": name, "ok": ok, "detail": detail})
        if not args.json:
            mark = {True: "[ ok ]", False: "[FAIL]", None: "[info]"}[ok]
            out.write(f"{mark} {name}: {printable(detail)}\n")
            out.flush()

    gateway = Gateway(config, keyring, reactor)
    result_ok = False
    try:
        try:
            user = await gateway.store.resolve(args.user)
            step("resolve", True, f"{args.user} is {user.dn}")
            decision = gateway.authenticator.policy.decide(user.dn, user.groups, args.client)
            step(
                "policy",
                None,
                ("OTP required" if decision.needs_otp else "no OTP needed")
                + f" ({decision.reason})",
            )
            state = gateway.store.decode(user, with_secrets=False)
            kinds = ", ".join(f"{t.id} {t.type.value}" for t in state.tokens) or "none"
            step("tokens", bool(state.tokens) or not decision.needs_otp, kinds)
            locked = state.used.locked_until > reactor.seconds()
            step("lockout", not locked, "locked out" if locked else "not locked")
        except (DirectoryError, CodecError) as exc:
            step("resolve", False, str(exc))
        delimiter = config.ldap_proxy.otp_delimiter
        secret = password + (delimiter if delimiter and otp else "") + otp
        request = AuthRequest(args.user, secret, args.client, "test-auth")
        result = await gateway.authenticator.authenticate(request, gateway.check_password)
        step("pipeline", result.ok, ("accepted: " if result.ok else "rejected: ") + result.reason)
        result_ok = result.ok
    finally:
        gateway.close()
    if args.json:
        out.write(json.dumps({"user": args.user, "ok": result_ok, "steps": steps}, indent=2) + "\n")
    return 0 if result_ok else 1


# -- the parser ----------------------------------------------------------------------------


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
    code.set_defaults(func=cmd_code)

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
    kg.set_defaults(func=cmd_keygen)

    cc = sub.add_parser("check-config", help="load and validate a config file")
    cc.add_argument("--config", required=True)
    cc.set_defaults(func=cmd_check_config)

    en = sub.add_parser("enroll", help="enroll a TOTP/HOTP software token, print its QR code")
    en.add_argument("user")
    en.add_argument("--type", choices=("totp", "hotp"), default="totp")
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
    en.set_defaults(func=cmd_enroll)

    sh = sub.add_parser("show", help="a user's tokens and lockout state (never secrets)")
    sh.add_argument("user")
    _common(sh)
    sh.set_defaults(func=cmd_show)

    ls = sub.add_parser("list", help="every user with OTP state")
    ls.add_argument("--locked", action="store_true", help="only users locked out right now")
    _common(ls)
    ls.set_defaults(func=cmd_list)

    rv = sub.add_parser("revoke", help="revoke one of a user's tokens")
    rv.add_argument("user")
    rv.add_argument("token", nargs="?", help="token id, serial or label (optional if only one)")
    _common(rv)
    rv.set_defaults(func=cmd_revoke)

    rs = sub.add_parser("reset", help="revoke all of a user's tokens")
    rs.add_argument("user")
    _common(rs)
    rs.set_defaults(func=cmd_revoke)

    sy = sub.add_parser("resync", help="resynchronise an HOTP token with three consecutive codes")
    sy.add_argument("user")
    sy.add_argument("code1")
    sy.add_argument("code2")
    sy.add_argument("code3")
    sy.add_argument("--token", help="token id or serial (if the user has several HOTP tokens)")
    _common(sy)
    sy.set_defaults(func=cmd_resync)

    im = sub.add_parser("import", help="import hardware tokens into the directory inventory")
    im.add_argument("file")
    im.add_argument("--format", required=True, choices=("pskc", "oath-csv", "yubico-csv"))
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
    im.set_defaults(func=cmd_import)

    asg = sub.add_parser("assign", help="give an inventory token to a user")
    asg.add_argument("serial")
    asg.add_argument("user")
    _common(asg)
    asg.set_defaults(func=cmd_assign)

    rn = sub.add_parser("rename", help="change the label of an inventory token")
    rn.add_argument("serial")
    rn.add_argument("name")
    _common(rn)
    rn.set_defaults(func=cmd_rename)

    dl = sub.add_parser("delete", help="delete a token from the inventory")
    dl.add_argument("serial")
    _common(dl)
    dl.set_defaults(func=cmd_delete)

    inv = sub.add_parser("inventory", help="list the unassigned tokens")
    _common(inv)
    inv.set_defaults(func=cmd_inventory)

    sc = sub.add_parser("scratch", help="a new printable scratch list (the old one stops working)")
    sc.add_argument("user")
    sc.add_argument("--count", type=int, default=10, help="how many codes (1-100, default 10)")
    sc.add_argument("--length", type=int, default=8, help="digits per code (6-12, default 8)")
    sc.add_argument("--card", metavar="FILE.html", help="also write a print-ready HTML card")
    _common(sc)
    sc.set_defaults(func=cmd_scratch)

    ul = sub.add_parser("unlock", help="clear a user's lockout")
    ul.add_argument("user")
    _common(ul)
    ul.set_defaults(func=cmd_unlock)

    rk = sub.add_parser("rekey", help="re-encrypt every stored value under the current key")
    rk.add_argument("--dry-run", action="store_true", help="count, change nothing")
    rk.add_argument(
        "--retire",
        action="store_true",
        help="afterwards remove the older keys from the keyring, if nothing uses them",
    )
    _common(rk)
    rk.set_defaults(func=cmd_rekey)

    dr = sub.add_parser("doctor", help="check the live directory: schema, access, TLS, pinning")
    dr.add_argument("--test-user", help="an ordinary user to check what users can read/write")
    dr.add_argument("--test-password-file", help="the test user's password (else asked for)")
    _common(dr)
    dr.set_defaults(func=cmd_doctor)

    ta = sub.add_parser("test-auth", help="run a real login through the pipeline, step by step")
    ta.add_argument("user")
    ta.add_argument("--password-file", help="read the password from this file (else asked)")
    ta.add_argument("--otp", help="the code (else asked for)")
    ta.add_argument("--client", help="client IP address the policy should assume")
    _common(ta)
    ta.set_defaults(func=cmd_test_auth)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from otpgate.admin.enrollment import PolicyError

    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (UsageError, ConfigError, VaultError) as exc:
        return _fail(args, exc, 2)
    except (
        CommandFailed,
        DirectoryError,
        CodecError,
        PolicyError,
        ImportFormatError,
        OSError,
    ) as exc:
        return _fail(args, exc, 1)
    except KeyboardInterrupt:
        print(f"otpgate {args.command}: interrupted", file=sys.stderr)
        return 130


def _fail(args: argparse.Namespace, exc: BaseException, code: int) -> int:
    message = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        message = f"{exc.filename or ''}: {exc.strerror}".lstrip(": ")
    line = printable(" ".join(message.split()))
    if getattr(args, "json", False) and not getattr(args, "emitted", False):
        print(json.dumps({"error": line, "command": args.command}))
    print(f"otpgate {args.command}: {line}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
