"""The help desk's census scan, in a process of its own: ``python -m otpgate.web.censusworker
LOG_FILE TODAY`` reads the audit trail and writes the page's ``Snapshot`` as JSON on
standard output, its progress as ``progress DONE TOTAL`` lines on standard error.

A scan of a large trail is a minute of pure-Python CPU.  In the gateway's process it would
hold the interpreter lock in turns with the reactor (measured with a thread: logins waited
up to 89 ms while 1,000,000 lines were read); in a child it costs the gateway nothing but
reading the answer.  The answer holds the rows a view can show (the first ``MAX_ROWS`` of
"all" and of each filter) and the count of each, not every account.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

from otpgate.census import FILTERS, AccountRow

PROGRESS_EVERY = 0.25
"""Seconds between two progress lines."""


def shown_rows(rows: tuple[AccountRow, ...], limit: int) -> tuple[AccountRow, ...]:
    """The rows any view shows (the first ``limit`` of "all" and of each filter), in order."""
    keep: set[int] = set(range(min(limit, len(rows))))
    for test in FILTERS.values():
        taken = 0
        for i, row in enumerate(rows):
            if taken >= limit:
                break
            if test(row):
                keep.add(i)
                taken += 1
    return tuple(rows[i] for i in sorted(keep))


def encode(snapshot: Any) -> str:
    doc = dataclasses.asdict(snapshot)
    return json.dumps(doc)


def decode(text: str) -> Any:
    """The ``Snapshot`` a worker wrote (ValueError if it is not one)."""
    from otpgate.web.censuspage import Snapshot

    doc = json.loads(text)
    if not isinstance(doc, dict):
        raise ValueError("not a census snapshot")
    tuples = {f.name for f in dataclasses.fields(AccountRow) if str(f.type).startswith("tuple")}
    rows = []
    for row in doc.pop("rows"):
        fields: dict[str, Any] = {k: tuple(v) if k in tuples else v for k, v in row.items()}
        rows.append(AccountRow(**fields))
    files = tuple((str(name), int(size)) for name, size in doc.pop("files"))
    return Snapshot(rows=tuple(rows), files=files, **doc)


def main(argv: list[str]) -> int:
    from otpgate.web.censuspage import Progress, scan_trail
    from otpgate.web.render_census import MAX_ROWS

    log_file, today = Path(argv[0]), float(argv[1])
    last = [0.0]

    class Reporting(Progress):
        def update(self, done: int, total: int) -> None:
            now = time.monotonic()
            if now - last[0] >= PROGRESS_EVERY:
                last[0] = now
                sys.stderr.write(f"progress {done} {total}\n")
                sys.stderr.flush()

    result = scan_trail(log_file, today, Reporting())
    result = dataclasses.replace(result, rows=shown_rows(result.rows, MAX_ROWS))
    sys.stdout.write(encode(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
