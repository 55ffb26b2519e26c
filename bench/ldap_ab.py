#!/usr/bin/env python3
"""A/B of two otpgate versions on the same slapd, interleaved, to see a code change through noise.

Two gateways run at once against one anchor slapd, each with its own half of the users: A from
the source tree ``--a`` (a git revision, checked out into a temporary worktree), B from
``--b`` (a directory, default: this checkout).  Short load runs alternate A, B, B, A, ... so
both see the same neighbours on this shared machine; each run records the gateway's CPU µs per
OTP bind (its /proc utime+stime) and the rate.  Prints one JSON line: per-run numbers and the
median of B/A over the pairs.  Quote the ratio, not the absolute values.

usage: bench/ldap_ab.py --a HEAD~1 [--b .] [--users 400] [--conc 16] [--secs 3] [--pairs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.fixtures import (  # noqa: E402
    BIN,
    add_otpgate_users,
    directory_sections,
    enroll,
    free_tcp_port,
    ldap_load,
    start_anchor,
    stop_anchor,
)
from bench.ldap_proxy import wait_port  # noqa: E402


def gateway(work: Path, name: str, source: Path, slapd_port: int, sections: str) -> tuple:
    port = free_tcp_port()
    config = work / f"{name}.toml"
    config.write_text(sections + f"""
[ldap_proxy]
listen = ["tcp:{port}:interface=127.0.0.1"]
[logging]
file = "{name}.log"
""")
    env = dict(os.environ, PYTHONPATH=str(source))  # this tree's otpgate before the venv's
    proc = subprocess.Popen(
        [str(BIN / "twistd"), "-n", "--pidfile=", "--logfile", str(work / f"{name}.twistd.log"),
         "otpgate", "--config", str(config)], cwd=work, env=env)
    wait_port(port)
    return proc, port


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--a", required=True, help="git revision of the baseline")
    ap.add_argument("--b", default=str(ROOT), help="source directory of the candidate")
    ap.add_argument("--users", type=int, default=400)
    ap.add_argument("--conc", type=int, default=16)
    ap.add_argument("--secs", type=float, default=3)
    ap.add_argument("--pairs", type=int, default=5)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="otpgate-ab-"))
    tree_a = work / "a"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(tree_a),
                    args.a], check=True)
    slapd_port = free_tcp_port()
    procs: list[subprocess.Popen] = []
    try:
        start_anchor(work / "slapd", slapd_port, 10)
        users = add_otpgate_users(work, slapd_port, args.users)
        sections = directory_sections(work, slapd_port)
        (work / "all.toml").write_text(sections)
        enroll(work / "all.toml", work / "og.json")
        half = len(users) // 2
        files = {"A": work / "a.json", "B": work / "b.json"}
        files["A"].write_text(json.dumps(users[:half]))
        files["B"].write_text(json.dumps(users[half:]))
        ports, pids = {}, {}
        for name, source in (("A", tree_a), ("B", Path(args.b).resolve())):
            proc, ports[name] = gateway(work, name, source, slapd_port, sections)
            procs.append(proc)
            pids[name] = proc.pid
        for name in ("A", "B"):  # warm up: caches filled, code paths compiled
            ldap_load(ports[name], files[name], "hotp", args.conc, 1, {})
        runs: list[dict] = []
        for i in range(args.pairs):
            for name in ("A", "B") if i % 2 == 0 else ("B", "A"):
                r = ldap_load(ports[name], files[name], "hotp", args.conc, args.secs,
                              {"gw": pids[name]})
                if r["fail"]:
                    raise SystemExit(f"{name}: {r['fail']} failed binds: {r['codes']}")
                runs.append({"gw": name, "rate": r["rate"], "cpu_us": r["cpu_us_gw"],
                             "p99_ms": r["p99_ms"]})
        cpu = {n: [r["cpu_us"] for r in runs if r["gw"] == n] for n in ("A", "B")}
        rate = {n: [r["rate"] for r in runs if r["gw"] == n] for n in ("A", "B")}
        print(json.dumps({
            "a": args.a, "b": args.b, "runs": runs,
            "cpu_us_median": {n: statistics.median(v) for n, v in cpu.items()},
            "cpu_b_over_a": round(statistics.median(
                b / a for a, b in zip(cpu["A"], cpu["B"], strict=True)), 3),
            "rate_b_over_a": round(statistics.median(
                b / a for a, b in zip(rate["A"], rate["B"], strict=True)), 3),
        }))
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        stop_anchor(work / "slapd")
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree_a)],
                       check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
