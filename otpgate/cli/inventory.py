"""Hardware-token inventory commands: import, assign, rename, delete, inventory.  The
import flow (clashes, the error file, rollback) lives in ``otpgate.admin.imports``."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from otpgate import cli
from otpgate.cli.base import CommandFailed, UsageError, admin, emit
from otpgate.errors import CodecError, DirectoryError

if TYPE_CHECKING:
    from otpgate.directory.inventory import InventoryItem
    from otpgate.importers import ImportResult
    from otpgate.tokens import Secret, Token


def cmd_import(args: argparse.Namespace) -> int:
    from otpgate.admin.imports import ImportRefused, import_tokens
    from otpgate.admin.render import Progress

    path = Path(args.file)
    data, result = _read_tokens(args, path)
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


def _read_tokens(args: argparse.Namespace, path: Path) -> tuple[bytes, ImportResult]:
    """The import file's bytes and what the parser of ``--format`` makes of them."""
    from otpgate.importers import MAX_IMPORT_BYTES
    from otpgate.importers.csvfiles import parse_oath_csv, parse_yubico_csv
    from otpgate.importers.pskc import parse_pskc

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
            password = cli.read_secret_file(args.password_file)
        elif args.password is not None:
            password = args.password or cli.prompt_secret("PSKC password: ")
        return data, parse_pskc(data, psk=psk, password=password)
    if args.psk or args.password is not None or args.password_file:
        raise UsageError("--psk and --password are for --format pskc")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path} is not UTF-8 text") from exc
    parser = parse_oath_csv if args.format == "oath-csv" else parse_yubico_csv
    return data, parser(text)


def cmd_assign(args: argparse.Namespace) -> int:
    with admin(args) as ctx:
        token = ctx.inventory.assign(args.serial, args.user, ctx.config.otp.max_tokens_per_user)
    text = f"assigned {token.type.value} token {args.serial} to {args.user} (token id {token.id})"
    emit(args, {"serial": args.serial, "user": args.user, "token": token.shown()}, text)
    return 0


def cmd_rename(args: argparse.Namespace) -> int:
    with admin(args) as ctx:
        def relabelled(item: InventoryItem) -> tuple[Token, Secret, int] | None:
            if item.token is None or item.secret is None:
                return None
            try:
                return dataclasses.replace(item.token, label=args.name), item.secret, item.last
            except ValueError as exc:
                raise UsageError(str(exc)) from exc

        if ctx.inventory.rewrite(args.serial, relabelled) is None:
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
