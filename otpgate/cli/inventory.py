"""Hardware-token inventory commands: import, assign, unassign, rename, delete, inventory.
The import flow (clashes, users, the error file, rollback, assignment) lives in
``otpgate.admin.imports``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from otpgate import cli
from otpgate.cli.base import CommandFailed, UsageError, admin, emit
from otpgate.errors import CodecError, DirectoryError

if TYPE_CHECKING:
    from otpgate.importers import ImportResult


def cmd_import(args: argparse.Namespace) -> int:
    from otpgate.admin.imports import Assigning, ImportRefused, import_tokens
    from otpgate.admin.render import Progress

    path = Path(args.file)
    data, result = _read_tokens(args, path)
    with admin(args) as ctx:
        store = ctx.store
        assigning = Assigning(
            store.mapper, ctx.config.otp.max_tokens_per_user, store.config.cas_retries
        )
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
                assigning=assigning,
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
        for done in outcome.assigned:
            if done.token is not None:
                text += f"\nassigned {done.serial} to {done.user} (token id {done.token.id})"
            else:
                text += f"\nnot assigned {done.serial} to {done.user} (kept in the inventory): "
                text += done.error
        emit(
            args,
            {
                "imported": outcome.imported,
                "skipped": [{"row": p.row, "error": p.message} for p in result.problems],
                "error_file": str(outcome.error_path) if result.problems else None,
                "assigned": [
                    {"serial": d.serial, "user": d.user, "token": d.token.id}
                    for d in outcome.assigned
                    if d.token is not None
                ],
                "not_assigned": [
                    {"serial": d.serial, "user": d.user, "error": d.error}
                    for d in outcome.assigned
                    if d.token is None
                ],
            },
            text,
        )
        if any(d.token is None for d in outcome.assigned):
            return 1
        return 0


def _read_tokens(args: argparse.Namespace, path: Path) -> tuple[bytes, ImportResult]:
    """The import file's bytes and what the parser of ``--format`` makes of them."""
    from otpgate.errors import ImportFormatError
    from otpgate.importers import MAX_IMPORT_BYTES
    from otpgate.importers.formats import parse_file

    try:
        if path.stat().st_size > MAX_IMPORT_BYTES:
            raise UsageError(f"{path} is larger than {MAX_IMPORT_BYTES // 2**20} MiB")
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from exc
    psk = None
    password = None
    if args.format != "pskc":
        if args.psk or args.password is not None or args.password_file:
            raise UsageError("--psk and --password are for --format pskc")
    elif args.psk:
        try:
            psk = bytes.fromhex(args.psk)
        except ValueError as exc:
            raise UsageError("--psk must be hexadecimal (32 hex digits for AES-128)") from exc
    if args.format == "pskc" and args.password_file:
        password = cli.read_secret_file(args.password_file)
    elif args.format == "pskc" and args.password is not None:
        password = args.password or cli.prompt_secret("PSKC password: ")
    try:
        return data, parse_file(args.format, data, psk=psk, password=password)
    except ImportFormatError as exc:
        if args.format != "pskc" and "UTF-8" in str(exc):
            raise UsageError(f"{path} is not UTF-8 text") from exc
        raise


def cmd_assign(args: argparse.Namespace) -> int:
    with admin(args) as ctx:
        token = ctx.inventory.assign(args.serial, args.user, ctx.config.otp.max_tokens_per_user)
    text = f"assigned {token.type.value} token {args.serial} to {args.user} (token id {token.id})"
    emit(args, {"serial": args.serial, "user": args.user, "token": token.shown()}, text)
    return 0


def cmd_unassign(args: argparse.Namespace) -> int:
    with admin(args) as ctx:
        token, _secret, last = ctx.inventory.unassign(args.user, args.token)
    counter = f", last used counter {last}" if last >= 0 else ""
    text = f"returned {token.type.value} token {token.serial} of {args.user} to the inventory"
    emit(
        args,
        {"serial": token.serial, "user": args.user, "token": token.id, "last": last},
        text + counter,
    )
    return 0


def cmd_rename(args: argparse.Namespace) -> int:
    from otpgate.admin.inventory import relabel

    try:
        change = relabel(args.name)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    with admin(args) as ctx:
        if ctx.inventory.rewrite(args.serial, change) is None:
            raise CommandFailed(f"serial {args.serial} is being assigned right now")
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
        docs: list[dict[str, Any]] = []
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
