"""``otpgate census FILE...``: who binds, read from audit files alone (no config file, no
directory).  A table per account with its verdict, then the ``[[policy.exempt]]`` tables
suggested for the services that still need a code; or JSON, CSV, or the suggestion alone.
What is counted and decided is ``otpgate.census``'s; this module reads the arguments,
checks the files and prints."""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from otpgate.census import FILTERS, AccountRow, Census, rotated_siblings, scan
from otpgate.census.read import Unreadable
from otpgate.cli.base import UsageError
from otpgate.tokens import escape_unsafe as printable

PROGRESS_BYTES = 50 * 1024 * 1024
"""Inputs larger than this show a progress bar on a terminal (smaller ones take seconds)."""
POLICY_WIDTH = 32
"""Characters of the policy shown in the table (JSON and CSV have all of it)."""

COLUMNS = ("account", "binds", "refused", "codes", "clients", "front ends", "token", "policy",
           "first seen", "last seen", "verdict")  # fmt: skip
CSV_FIELDS = ("account", "dn", "user", "binds", "accepted", "refused", "would_refuse", "codes",
              "client_count", "clients_more", "clients", "front_ends", "channels", "listeners",
              "nas", "enrolled",
              "policy", "first_seen", "last_seen", "verdict", "why")  # fmt: skip


def add_parser(sub: Any) -> None:
    from otpgate.cli.base import Command

    ce = sub.add_parser(
        "census",
        help="who binds, from audit files: services, people without a token, people ready",
    )
    ce.add_argument("files", nargs="+", metavar="FILE", help="audit file (JSON or text; gzip)")
    fmt = ce.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print one JSON document")
    fmt.add_argument("--csv", action="store_true", help="print CSV with a header")
    ce.add_argument("--only", choices=sorted(FILTERS), help="only these accounts")
    ce.add_argument(
        "--suggest",
        action="store_true",
        help="print only the [[policy.exempt]] tables suggested for services that need a code",
    )
    ce.add_argument(
        "--rotated",
        action="store_true",
        help="also read each FILE's rotated files (FILE.1, FILE.2.gz, FILE-YYYYMMDD...), "
        "oldest first",
    )
    ce.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a progress bar on standard error (default: on a terminal, for inputs over 50 MB)",
    )
    ce.set_defaults(func=Command("census", "cmd_census"))


def input_files(names: list[str], rotated: bool) -> list[Path]:
    """The files to read, in order, each once; UsageError names one that cannot be read."""
    result: list[Path] = []
    for name in names:
        path = Path(name)
        try:
            if path.is_dir():
                raise UsageError(f"{name}: is a directory, not an audit file")
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise UsageError(f"cannot read {name}: {exc.strerror or exc}") from exc
        for found in rotated_siblings(path) if rotated else [path]:
            if found not in result:
                result.append(found)
    return result


class Bar:
    """A one-line progress bar of bytes read, redrawn at most ten times a second."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.start = self._last = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self._last < 0.1 and done < total:
            return
        self._last = now
        share = done / total if total else 1.0
        bar = "#" * int(30 * share) + "-" * (30 - int(30 * share))
        mb = 1024 * 1024
        self.out.write(f"\rreading [{bar}] {done // mb}/{total // mb} MB")
        self.out.flush()

    def finish(self) -> None:
        self.out.write(f" in {time.monotonic() - self.start:.0f} s\n")
        self.out.flush()


def _when(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%d %H:%M")


def table(rows: list[AccountRow]) -> str:
    """Aligned columns, one account a line (times UTC)."""
    lines = [list(COLUMNS)]
    for r in rows:
        policy = r.policy if len(r.policy) <= POLICY_WIDTH else r.policy[: POLICY_WIDTH - 3] + "..."
        lines.append([
            r.account, str(r.binds), str(r.refused), str(r.codes), r.clients_text,
            ",".join(r.front_ends),
            r.token_text, policy or "-", _when(r.first_seen), _when(r.last_seen), r.verdict,
        ])  # fmt: skip
    lines = [[printable(cell) for cell in line] for line in lines]
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    numeric = {1, 2, 3, 4}
    return "\n".join(
        "  ".join(
            cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i])
            for i, cell in enumerate(line)
        ).rstrip()
        for line in lines
    )


def _cell(value: Any) -> Any:
    """A CSV cell; text a spreadsheet would take for a formula starts with a quote."""
    if isinstance(value, list):
        value = " ".join(value)
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def write_csv(rows: list[AccountRow], out: TextIO) -> None:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for row in rows:
        doc = row.as_dict()
        writer.writerow([_cell(doc[f]) for f in CSV_FIELDS])


def cmd_census(args: argparse.Namespace) -> int:
    files = input_files(args.files, args.rotated)
    total = sum(p.stat().st_size for p in files)
    show = args.progress if args.progress is not None else (
        sys.stderr.isatty() and total > PROGRESS_BYTES
    )
    bar = Bar(sys.stderr) if show else None
    census = Census()
    try:
        scan(files, census, bar)
    except Unreadable as exc:
        if bar is not None:
            sys.stderr.write("\n")
        raise UsageError(str(exc)) from exc
    if bar is not None:
        bar.finish()
    if census.malformed:
        print(
            f"otpgate census: {census.malformed} line(s) looked like audit events but could "
            "not be read; skipped",
            file=sys.stderr,
        )
    if census.untracked:
        print(
            f"otpgate census: {census.untracked} event(s) of accounts beyond the first "
            f"{len(census.accounts)} not counted",
            file=sys.stderr,
        )
    rows = census.rows()
    suggestion = census.suggestion(datetime.datetime.now(datetime.UTC).date())
    if args.only:
        rows = [r for r in rows if FILTERS[args.only](r)]
    return _print(args, census, files, rows, suggestion)


def _print(
    args: argparse.Namespace, census: Census, files: list[Path], rows: list[AccountRow],
    suggestion: str,
) -> int:  # fmt: skip
    if args.json:
        doc = {
            "accounts": [r.as_dict() for r in rows],
            "events": census.events,
            "malformed": census.malformed,
            "untracked": census.untracked,
            "files": [os.fspath(p) for p in files],
            "suggestion": suggestion,
        }
        print(json.dumps(doc, indent=2))
    elif args.csv:
        write_csv(rows, sys.stdout)
    elif args.suggest:
        if suggestion:
            sys.stdout.write(suggestion)
        else:
            print("# otpgate census: no service that needs a code; nothing to suggest",
                  file=sys.stderr)  # fmt: skip
    else:
        print(table(rows))
        print(f"\n{len(rows)} account(s), {census.events} audit event(s) in {len(files)} file(s)")
        if suggestion:
            sys.stdout.write("\n" + suggestion)
    return 0

