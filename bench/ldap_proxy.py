#!/usr/bin/env python3
"""LDAP bind benchmark, one run on loopback, same load client and concurrency for every target.

  direct     plain binds straight to slapd
  pass       plain binds through otpgate (exempt users: password only)
  slapo-otp  HOTP binds to slapd's own C overlay (password+code, counter written per bind)
  ceiling    the directory's own limit for our kind of login (../shared/bench/directory_ceiling.py:
             a compare-and-swap Modify of one ~400-byte value, then the user's bind; no gateway)
  otpgate    HOTP binds through otpgate (users enrolled by otpgate, state CAS-written per bind)

Every row carries the CPU µs per bind of each process (slapd, otpgate, the load client) and its
load (CPU seconds per second: 1.0 is a saturated core); the busiest process is named.

The targets take turns: --rounds rounds, each running every target for --secs seconds in
turn, so that a slow spell of this shared machine (its disk's fsync latency bounds every
writing target) falls on all of them alike.  A row sums its rounds (rate = accepted binds /
seconds, CPU weighted by operations, p50/p99 the median of the rounds); each ratio is printed
over the sums and per round.

Uses ../shared/bench/anchor_slapd.sh and ldapbind_load.py. Prints a table and the ratios, and
writes bench/results/ldap_proxy.json.  Bounded: rounds x targets x --secs seconds.
usage: bench/ldap_proxy.py [--users 500] [--conc 16] [--secs 6] [--rounds 3] [--processes 1]
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.fixtures import (  # noqa: E402
    BIN,
    SHARED,
    SUFFIX,
    add_otpgate_users,
    directory_sections,
    enroll,
    free_tcp_port,
    ldap_load,
    shared_load,
    start_anchor,
    stop_anchor,
)
from bench.fixtures import combine_rounds as combine  # noqa: E402


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def ceiling(port: int, args: argparse.Namespace, pids: dict[str, int]) -> dict:
    """directory_ceiling.py on the anchor's plain users, same users/concurrency/time."""
    return shared_load(
        [sys.executable, str(SHARED / "directory_ceiling.py"), "--port", str(port),
         "--users", str(args.users), "--conc", str(args.conc), "--secs", str(args.secs)],
        args.secs,
        pids,
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=500)
    ap.add_argument("--conc", type=int, default=16)
    ap.add_argument("--secs", type=float, default=6, help="seconds per target per round")
    ap.add_argument("--rounds", type=int, default=3, help="turns of all targets")
    ap.add_argument("--processes", type=int, default=1, help="otpgate reactor processes")
    ap.add_argument("--profile", metavar="SVG|TXT", help="py-spy profile of otpgate (.txt: raw)")
    ap.add_argument("--profile-target", choices=("pass", "otpgate"), default="otpgate")
    ap.add_argument("--targets", default="direct,pass,slapo-otp,ceiling,otpgate",
                    help="comma-separated subset of the targets to run (default: all)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="otpgate-bench-"))
    slapd_port, proxy_port = free_tcp_port(), free_tcp_port()
    proxies: list[subprocess.Popen] = []
    try:
        start_anchor(work / "slapd", slapd_port, args.users)
        add_otpgate_users(work, slapd_port, args.users)
        listen = f"tcp:{proxy_port}:interface=127.0.0.1"
        config = work / "otpgate.toml"
        config.write_text(directory_sections(work, slapd_port) + f"""
[policy]
exempt_subtrees = ["ou=people,{SUFFIX}"]
[ldap_proxy]
listen = ["{listen}"]
processes = {args.processes}
[logging]
file = "otpgate.log"
""")
        enroll(config, work / "og.json")
        for _ in range(1):  # the main process starts processes - 1 workers itself
            proxies.append(subprocess.Popen(
                [str(BIN / "twistd"), "-n", "--pidfile=", "--logfile", str(work / "twistd.log"),
                 "otpgate", "--config", str(config)], cwd=work))
        wait_port(proxy_port)
        pids = {"slapd": int((work / "slapd" / "slapd.pid").read_text())}
        time.sleep(1 if args.processes > 1 else 0)  # let the workers bind
        workers = subprocess.run(["pgrep", "-f", f"otpgate.worker {config}"], capture_output=True,
                                 text=True).stdout.split()
        pids.update({f"otpgate{i}": int(p) for i, p in enumerate([proxies[0].pid, *workers])})
        def profiled(target: str) -> subprocess.Popen | None:
            if not args.profile or args.profile_target != target:
                return None
            fmt = ["--format", "raw"] if args.profile.endswith(".txt") else []
            return subprocess.Popen([str(BIN / "py-spy"), "record", *fmt, "-o", args.profile, "-d",
                                     str(int(args.secs)), "-p", str(proxies[0].pid), "-r", "200"])

        wanted = set(args.targets.split(","))
        plain, og = work / "slapd" / "plain.json", work / "og.json"
        plan = {
            "direct": (slapd_port, plain, "plain"),
            "pass": (proxy_port, plain, "plain"),
            "slapo-otp": (slapd_port, work / "slapd" / "oath.json", "hotp"),
            "ceiling": (slapd_port, plain, "ceiling"),
            "otpgate": (proxy_port, og, "hotp"),
        }
        rounds: dict[str, list[dict]] = {}
        for turn in range(args.rounds):
            for target, (port, users, mode) in plan.items():
                if target not in wanted:
                    continue
                spy = profiled(target) if turn == 0 else None
                if mode == "ceiling":
                    run = ceiling(port, args, {"slapd": pids["slapd"]})
                else:
                    run = ldap_load(port, users, mode, args.conc, args.secs, pids)
                rounds.setdefault(target, []).append(run)
                if spy is not None:
                    spy.wait(timeout=120)
        runs = {name: combine(each) for name, each in rounds.items()}

        def ratio(a: str, b: str) -> float | None:
            return round(runs[a]["rate"] / runs[b]["rate"], 3) if a in runs and b in runs else None

        def per_round(a: str, b: str) -> list[float]:
            if a not in rounds or b not in rounds:
                return []
            pairs = zip(rounds[a], rounds[b], strict=True)
            return [round(x["rate"] / y["rate"], 3) for x, y in pairs]

        result = {
            "users": args.users, "conc": args.conc, "secs": args.secs, "processes": args.processes,
            "rounds": args.rounds, "runs": runs,
            "per_round": {k: per_round(*k.split("/")) for k in (
                "pass/direct", "otpgate/slapo-otp", "otpgate/ceiling", "ceiling/slapo-otp")},
            "pass_vs_direct": ratio("pass", "direct"),
            "otpgate_vs_slapo_otp": ratio("otpgate", "slapo-otp"),
            "otpgate_vs_ceiling": ratio("otpgate", "ceiling"),
            "ceiling_vs_slapo_otp": ratio("ceiling", "slapo-otp"),
        }
        print(f"{'target':<10} {'binds/s':>9} {'fail':>6} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'slapd µs':>9} {'otpgate µs':>11} {'client µs':>10}  busiest (CPU s/s)")
        for name, r in runs.items():
            ours = sum(v for k, v in r.items() if k.startswith("cpu_us_otpgate"))
            load = {k[7:]: round(v * r["rate"] / 1e6, 2) for k, v in r.items()
                    if k.startswith("cpu_us_")}
            busiest = max(load, key=load.__getitem__)
            r["load"] = load
            print(f"{name:<10} {r['rate']:>9.0f} {r['fail']:>6} {r['p50_ms']:>8} {r['p99_ms']:>8} "
                  f"{r['cpu_us_slapd']:>9} {ours:>11} {r['cpu_us_client']:>10}  "
                  f"{busiest} ({load[busiest]})")
        for label, key, pair in (
            ("pass-through / direct  ", "pass_vs_direct", "pass/direct"),
            ("otpgate OTP / slapo-otp", "otpgate_vs_slapo_otp", "otpgate/slapo-otp"),
            ("otpgate OTP / ceiling  ", "otpgate_vs_ceiling", "otpgate/ceiling"),
            ("ceiling / slapo-otp    ", "ceiling_vs_slapo_otp", "ceiling/slapo-otp"),
        ):
            each = " ".join(str(x) for x in result["per_round"][pair])
            print(f"{label}: {result[key]}  (rounds: {each or '-'})")
        out = ROOT / "bench" / "results"
        out.mkdir(exist_ok=True)
        (out / "ldap_proxy.json").write_text(json.dumps(result, indent=2))
    finally:
        for p in proxies:
            p.send_signal(signal.SIGTERM)
        for p in proxies:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        stop_anchor(work / "slapd")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
