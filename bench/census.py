#!/usr/bin/env python3
"""``otpgate census`` over a large audit log: lines per second, CPU per line and peak memory,
for 1M and 10M lines (memory must not grow with the log).

Generates JSON audit lines as the gateway writes them (~290 bytes each, every field set)
into a temporary directory, rotated logrotate-style: ``audit.log.9.gz`` ... ``audit.log.7.gz``
(gzip, level 6 as logrotate's gzip), ``audit.log.6`` ... ``audit.log.1`` and ``audit.log``, one
tenth of the lines each.  The mix: ~2,000 accounts; a few services binding every few seconds from
one or two hosts (about a third of the lines), people in office hours from varied addresses,
most typing codes, some not enrolled on a report-only listener.

Each measurement runs in a process of its own, so that its peak RSS is its own:
``in-process`` calls ``otpgate.census.scan`` directly; ``cli`` runs
``python -m otpgate.cli census --json``.  The 1M measurement reads ``audit.log`` alone (plain),
the 10M one every file (``--rotated``, gzip included).

usage: flock /tmp/otpgate-integration.lock python bench/census.py [--lines 10000000]
       [--dir DIR (reuse or keep the generated files)]
Prints one JSON line per measurement and a summary table.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MAX_LINES = 10_000_000
"""The bound on what is generated (about 2.5 GB on disk, a third of it before gzip)."""
PARTS = 10
GZIPPED = 3
T0 = 1796601600.0  # 2026-12-07T00:00:00Z
SPAN = 30 * 86400.0
LINE = (
    '{"time": %.3f, "event": "auth", "outcome": "%s", "front_end": "%s", "user": "%s", '
    '"dn": "%s", "client": "%s", "token": %s, "reason": "%s", "channel": "%s", '
    '"policy": "otp", "enrolled": %s}\n'
)


def accounts(rnd: random.Random) -> list[tuple[str, ...]]:
    """(user, dn, kind, fixed client) for ~2,000 accounts; kind: service, coder, none."""
    found: list[tuple[str, ...]] = []
    for i in range(8):
        name = f"svc-{['backup', 'print', 'sync', 'mail', 'crm', 'wiki', 'ci', 'scan'][i]}"
        found.append((name, f"uid={name},ou=services,dc=example,dc=org", "service",
                      f"192.0.2.{10 + i}"))  # fmt: skip
    for i in range(1992):
        name = f"user{i:04d}"
        kind = "none" if i % 10 == 0 else "coder"
        found.append((name, f"uid={name},ou=people,dc=example,dc=org", kind, ""))
    return found


def generate(directory: Path, lines: int) -> list[Path]:
    """``lines`` audit lines in PARTS files, oldest first; returns the files oldest first."""
    rnd = random.Random(42)
    everyone = accounts(rnd)
    services = [a for a in everyone if a[2] == "service"]
    people = [a for a in everyone if a[2] != "service"]
    per_part = lines // PARTS
    step = SPAN / lines
    t = T0
    paths = []
    for part in range(PARTS):
        number = PARTS - 1 - part
        name = f"audit.log.{number}" if number else "audit.log"
        if number >= PARTS - GZIPPED:
            name += ".gz"
        path = directory / name
        out: IO[str] = (
            gzip.open(path, "wt", compresslevel=6, encoding="utf-8")  # noqa: SIM115 - closed below
            if name.endswith(".gz")
            else open(path, "w", encoding="utf-8")  # noqa: SIM115
        )
        chunk: list[str] = []
        for _ in range(per_part):
            t += step
            if rnd.random() < 0.35:
                user, dn, _kind, client = rnd.choice(services)
                chunk.append(LINE % (t, "accept", "ldap", user, dn, client, "null",
                                     "password accepted", "apps", "false"))  # fmt: skip
            else:
                user, dn, kind, _ = rnd.choice(people)
                client = f"10.{rnd.randint(0, 40)}.{rnd.randint(0, 255)}.{rnd.randint(1, 254)}"
                if kind == "coder":
                    chunk.append(LINE % (t, "accept", "ldap", user, dn, client, '"t-1a2b3c"',
                                         "password+OTP accepted", "apps", "true"))  # fmt: skip
                else:
                    chunk.append(LINE % (
                        t, "accept", "ldap", user, dn, client, "null",
                        "report-only: would refuse: no token enrolled", "rollout", "false",
                    ))  # fmt: skip
            if len(chunk) >= 10000:
                out.write("".join(chunk))
                chunk.clear()
        out.write("".join(chunk))
        out.close()
        paths.append(path)
    return paths


def measure_in_process(files: list[str]) -> dict[str, Any]:
    """Run in a process of its own: scan ``files`` and report this process's costs."""
    from otpgate.census import scan

    start, before = time.monotonic(), resource.getrusage(resource.RUSAGE_SELF)
    census = scan([Path(f) for f in files])
    rows = census.rows()
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"events": census.events, "accounts": len(rows), "wall_s": wall, "cpu_s": cpu,
            "peak_rss_mb": after.ru_maxrss / 1024}  # fmt: skip


def run_child(argv: list[str]) -> tuple[str, float, float, float]:
    """(stdout, wall seconds, CPU seconds, peak RSS in MB) of one child process."""
    start = time.monotonic()
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(argv, stdout=out, cwd=ROOT)
        _pid, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - start
        out.seek(0)
        text = out.read().decode()
    if proc.returncode != 0:
        raise SystemExit(f"{argv[:4]} exited {proc.returncode}")
    return text, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def report(how: str, lines: int, size: int, wall: float, cpu: float, rss: float) -> dict[str, Any]:
    row = {
        "how": how, "lines": lines, "mb_on_disk": round(size / 2**20), "wall_s": round(wall, 1),
        "lines_per_s": round(lines / wall), "cpu_s": round(cpu, 1),
        "cpu_us_per_line": round(cpu / lines * 1e6, 2), "peak_rss_mb": round(rss, 1),
    }  # fmt: skip
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=MAX_LINES)
    ap.add_argument("--dir", help="generate here (kept), or reuse what is there")
    ap.add_argument("--in-process", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.in_process:
        print(json.dumps(measure_in_process(args.in_process)))
        return
    lines = min(args.lines, MAX_LINES)
    directory = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="otpgate-census-"))
    try:
        directory.mkdir(parents=True, exist_ok=True)
        files = sorted(directory.glob("audit.log*"), key=_age)
        if len(files) != PARTS:
            start = time.monotonic()
            files = generate(directory, lines)
            print(f"generated {lines} lines in {time.monotonic() - start:.0f} s", file=sys.stderr)
        rows = []
        per_part = lines // PARTS
        for subset, count in (([files[-1]], per_part), (files, per_part * PARTS)):
            size = sum(p.stat().st_size for p in subset)
            names = [str(p) for p in subset]
            out, wall, cpu, rss = run_child([sys.executable, __file__, "--in-process", *names])
            assert json.loads(out)["events"] == count, out
            rows.append(report("in-process", count, size, wall, cpu, rss))
            cli = [sys.executable, "-m", "otpgate.cli", "census", "--json", "--no-progress"]
            cli += ["--rotated", names[-1]] if len(subset) > 1 else names
            out, wall, cpu, rss = run_child(cli)
            assert json.loads(out)["events"] == count
            rows.append(report("cli", count, size, wall, cpu, rss))
        print(f"\n{'how':<11} {'lines':>10} {'MB':>6} {'wall s':>7} {'lines/s':>9} "
              f"{'CPU s':>6} {'µs/line':>8} {'peak RSS MB':>11}")  # fmt: skip
        for r in rows:
            print(f"{r['how']:<11} {r['lines']:>10} {r['mb_on_disk']:>6} {r['wall_s']:>7} "
                  f"{r['lines_per_s']:>9} {r['cpu_s']:>6} {r['cpu_us_per_line']:>8} "
                  f"{r['peak_rss_mb']:>11}")  # fmt: skip
    finally:
        if not args.dir:
            shutil.rmtree(directory, ignore_errors=True)


def _age(path: Path) -> tuple[int, int]:
    """Oldest first: the highest rotation number first, the live file last."""
    suffix = path.name.removeprefix("audit.log").removesuffix(".gz").lstrip(".")
    return (0, -int(suffix)) if suffix else (1, 0)


if __name__ == "__main__":
    main()
