#!/usr/bin/env python3
"""A/B of two otpgate versions on the same slapd, interleaved, to see a code change through noise.

Two gateways run at once against one anchor slapd, each with its own half of the users: A from
the source tree ``--a`` (a git revision, checked out into a temporary worktree), B from
``--b`` (a directory, default: this checkout).  Each is a ``twistd otpgate`` process on its own
config file: with ``--protocol ldap`` its LDAP proxy, with ``radius`` its RADIUS server (its
own port and NAS secret, append mode), with ``both`` (the default) both front ends.  Short
load runs alternate A, B, B, A, ... per protocol so both see the same neighbours on this
shared machine; each run records the gateway's CPU µs per operation (its /proc utime+stime)
and the rate:

  ldap    OTP binds (../shared/bench/ldapbind_load.py, password + HOTP code)
  radius  RADIUS logins (../shared/bench/radius_load.py, Message-Authenticator, User-Password
          = password + HOTP code): every login a cold one that spends a code (CAS write) and
          binds the password upstream

Both protocols use the same users and HOTP tokens (the counters carry over from run to run).
Prints one JSON line: per protocol the per-run numbers and the median of B/A over the pairs.
Quote the ratio, not the absolute values.  Bounded: --pairs x 2 x --secs per protocol, plus a
1-s warm-up per gateway and protocol.

usage: bench/ldap_ab.py --a HEAD~1 [--b .] [--protocol ldap|radius|both] [--users 400]
                        [--conc 16] [--secs 3] [--pairs 5]
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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.fixtures import (  # noqa: E402
    BIN,
    SHARED,
    add_otpgate_users,
    directory_sections,
    enroll,
    free_tcp_port,
    ldap_load,
    shared_load,
    start_anchor,
    stop_anchor,
)
from bench.ldap_proxy import wait_port  # noqa: E402
from bench.radius_freeradius import free_udp_port  # noqa: E402

PROTOCOLS = ("ldap", "radius")


@dataclass(frozen=True)
class Gateway:
    """One ``twistd otpgate`` process and what its load clients need."""

    name: str
    proc: subprocess.Popen[bytes]
    users: Path
    ldap_port: int
    radius_port: int
    radius_secret: str


def gateway(work: Path, name: str, source: Path, sections: str, users: Path,
            protocols: tuple[str, ...]) -> Gateway:
    """``twistd otpgate`` from the tree ``source`` with the front ends of ``protocols``."""
    ldap_port = free_tcp_port() if "ldap" in protocols else 0
    radius_port = free_udp_port() if "radius" in protocols else 0
    secret = f"ab-{name.lower()}-{os.urandom(8).hex()}"  # one NAS secret per gateway
    text = sections
    if ldap_port:
        text += f"""
[ldap_proxy]
listen = ["tcp:{ldap_port}:interface=127.0.0.1"]
"""
    if radius_port:
        text += f"""
[radius]
listen = ["127.0.0.1:{radius_port}"]
[[radius.clients]]
address = "127.0.0.1"
secret = "{secret}"
mode = "append"
"""
    config = work / f"{name}.toml"
    config.write_text(text + f"""
[logging]
file = "{name}.log"
""")
    env = dict(os.environ, PYTHONPATH=str(source))  # this tree's otpgate before the venv's
    proc = subprocess.Popen(
        [str(BIN / "twistd"), "-n", "--pidfile=", "--logfile", str(work / f"{name}.twistd.log"),
         "otpgate", "--config", str(config)], cwd=work, env=env)
    try:
        if ldap_port:
            wait_port(ldap_port)
        if radius_port:
            wait_radius(radius_port, secret)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return Gateway(name, proc, users, ldap_port, radius_port, secret)


def wait_radius(port: int, secret: str, timeout: float = 30) -> None:
    """Until a Status-Server to 127.0.0.1:``port`` with ``secret`` is answered."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = subprocess.run(
            ["radclient", "-q", "-t", "0.5", "-r", "1", f"127.0.0.1:{port}", "status", secret],
            input=b"Message-Authenticator = 0x00\n", capture_output=True, check=False)
        if done.returncode == 0:
            return
        time.sleep(0.2)
    raise RuntimeError(f"nothing answers RADIUS on 127.0.0.1:{port}")


def radius_load(gw: Gateway, conc: int, secs: float, pids: dict[str, int]) -> dict[str, Any]:
    """../shared/bench/radius_load.py (HOTP, append mode) against ``gw``; the advanced
    counters are written back to its users file, as ldap_load() does."""
    return shared_load(
        [sys.executable, str(SHARED / "radius_load.py"), "--port", str(gw.radius_port),
         "--secret", gw.radius_secret, "--users", str(gw.users), "--mode", "hotp",
         "--conc", str(conc), "--secs", str(secs), "--timeout", "5",
         "--state-out", str(gw.users)],
        secs,
        pids,
    )


def load(protocol: str, gw: Gateway, conc: int, secs: float, measure: bool) -> dict[str, Any]:
    """One load run of ``protocol`` on ``gw``; exits on any failed bind or login."""
    pids = {"gw": gw.proc.pid} if measure else {}
    if protocol == "ldap":
        r = ldap_load(gw.ldap_port, gw.users, "hotp", conc, secs, pids)
        failed = {k: r[k] for k in ("fail", "codes") if r.get("fail")}
    else:
        r = radius_load(gw, conc, secs, pids)
        failed = {k: r[k] for k in ("reject", "timeout", "bad") if r.get(k)}
    if failed:
        raise SystemExit(f"{gw.name} {protocol}: failed: {failed}")
    return r


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-run numbers of one protocol and the medians of B/A over the pairs."""
    cpu = {n: [r["cpu_us"] for r in runs if r["gw"] == n] for n in ("A", "B")}
    rate = {n: [r["rate"] for r in runs if r["gw"] == n] for n in ("A", "B")}
    return {
        "runs": runs,
        "cpu_us_median": {n: statistics.median(v) for n, v in cpu.items()},
        "cpu_b_over_a": round(statistics.median(
            b / a for a, b in zip(cpu["A"], cpu["B"], strict=True)), 3),
        "rate_b_over_a": round(statistics.median(
            b / a for a, b in zip(rate["A"], rate["B"], strict=True)), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--a", required=True, help="git revision of the baseline")
    ap.add_argument("--b", default=str(ROOT), help="source directory of the candidate")
    ap.add_argument("--protocol", choices=(*PROTOCOLS, "both"), default="both",
                    help="OTP binds through the LDAP proxy, RADIUS logins, or both")
    ap.add_argument("--users", type=int, default=400, help="users, half per gateway")
    ap.add_argument("--conc", type=int, default=16, help="binds or requests in flight")
    ap.add_argument("--secs", type=float, default=3, help="seconds per run")
    ap.add_argument("--pairs", type=int, default=5, help="A/B pairs per protocol")
    args = ap.parse_args()
    protocols = PROTOCOLS if args.protocol == "both" else (args.protocol,)
    if args.users // 2 <= args.conc:
        ap.error("--users must be more than twice --conc (no user has two logins in flight)")
    work = Path(tempfile.mkdtemp(prefix="otpgate-ab-"))
    tree_a = work / "a"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(tree_a),
                    args.a], check=True)
    slapd_port = free_tcp_port()
    gateways: list[Gateway] = []
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
        for name, source in (("A", tree_a), ("B", Path(args.b).resolve())):
            gateways.append(gateway(work, name, source, sections, files[name], protocols))
        gws = {gw.name: gw for gw in gateways}
        for protocol in protocols:  # warm up: caches filled, code paths compiled
            for gw in gateways:
                load(protocol, gw, args.conc, 1, measure=False)
        runs: dict[str, list[dict[str, Any]]] = {p: [] for p in protocols}
        for i in range(args.pairs):
            for protocol in protocols:
                for name in ("A", "B") if i % 2 == 0 else ("B", "A"):
                    r = load(protocol, gws[name], args.conc, args.secs, measure=True)
                    runs[protocol].append({"gw": name, "rate": r["rate"],
                                           "cpu_us": r["cpu_us_gw"], "p99_ms": r["p99_ms"]})
        print(json.dumps({"a": args.a, "b": args.b,
                          **{p: summary(each) for p, each in runs.items()}}))
    finally:
        for gw in gateways:
            gw.proc.send_signal(signal.SIGTERM)
        for gw in gateways:
            try:
                gw.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                gw.proc.kill()
        stop_anchor(work / "slapd")
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree_a)],
                       check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
