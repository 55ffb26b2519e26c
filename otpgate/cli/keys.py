"""``otpgate rekey``: runs ``otpgate.admin.rekey``'s pass and retire, prints the report."""

from __future__ import annotations

import argparse
import sys

from otpgate.cli.base import CommandFailed, admin, emit


def cmd_rekey(args: argparse.Namespace) -> int:
    from otpgate.admin.rekey import RetireRefused, keys_of_the_run, rekey_pass, retire_after
    from otpgate.admin.render import Progress
    from otpgate.directory.scans import users_with_state

    with admin(args) as ctx:
        store = ctx.store
        current = ctx.keyring.current
        try:
            run_keys = keys_of_the_run(ctx.config.keyring, ctx.keyring, args.retire)
            report = rekey_pass(
                lambda: users_with_state(store),
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


def cmd_migrate_state(args: argparse.Namespace) -> int:
    from otpgate.admin.migrate import MigrationReport, migrate_user
    from otpgate.directory.scans import user_entries_with_values
    from otpgate.errors import OtpgateError

    report = MigrationReport()
    with admin(args) as ctx:
        store = ctx.store
        if store.mapper.container is None:
            raise CommandFailed("[directory].state_dn is not set: there is nowhere to migrate to")
        for found in user_entries_with_values(store):
            report.scanned += 1
            try:
                outcome = store.run(migrate_user(store.mapper, found, args.dry_run))
            except OtpgateError as exc:
                report.failed.append((found.dn, str(exc)))
                continue
            report.done[outcome] = report.done.get(outcome, 0) + 1
    verb = "would move" if args.dry_run else "moved"
    lines = [
        f"migrate-state into {ctx.config.directory.state_dn}: {report.scanned} user(s) "
        f"scanned, {verb} {report.done.get('migrated', 0)}"
    ]
    lines += [f"  {what}: {n}" for what, n in sorted(report.done.items()) if what != "migrated"]
    lines += [f"  failed: {dn}: {err}" for dn, err in report.failed]
    emit(args, {**report.to_dict(), "dry_run": args.dry_run}, "\n".join(lines))
    if report.failed:
        raise CommandFailed(f"{len(report.failed)} user(s) could not be migrated; run it again")
    return 0
