"""``otpgate rekey``: runs ``otpgate.admin.rekey``'s pass and retire, prints the report."""

from __future__ import annotations

import argparse
import sys

from otpgate.cli.base import CommandFailed, admin, emit


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
