#!/usr/bin/env python3
"""RADIUS benchmark: one run on loopback, `radclient -p 64` as the client of every RADIUS target.

  freeradius  FreeRADIUS 3.2, PAP from a users file: the protocol ceiling (no OTP, no write)
  slapo-otp   OpenLDAP's C overlay, HOTP binds (password+code, counter written per bind) on the
              same slapd, driven by ../shared/bench/ldapbind_load.py at the same concurrency
              (radclient cannot speak LDAP): the directory's own write-bound OTP rate
  otpgate     otpgate append mode: PAP, User-Password = password + HOTP code, users enrolled
              by otpgate, one compare-and-swap write per request

Then the same otpgate request file again: every request must be rejected (codes spent).

Latency: radclient prints one "Sent ... Id N from 0.0.0.0:PORT" and one "Received ... Id N ...
to 127.0.0.1:PORT" line per packet; they are timestamped as they arrive (line-buffered pipe),
so p50/p99 are the client's view at -p 64.  Prints a table and both ratios, writes
bench/results/radius.json.  Bounded: a fixed number of requests per target, and timeouts.

usage: bench/radius.py [--users 1000] [--rounds 10] [--fr-requests 60000] [--secs 10]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.fixtures import (  # noqa: E402
    BIN,
    add_otpgate_users,
    cpu_seconds,
    directory_sections,
    enroll,
    free_tcp_port,
    ldap_load,
    start_anchor,
    stop_anchor,
)
from bench.radius_freeradius import FreeRadius, free_udp_port  # noqa: E402

SECRET = "bench-radius-secret-0123456789"
PARALLEL = 64
NICE = ("nice", "-n", "19")
"""Every load client runs niced: radclient busy-polls its socket (measured ~1.3 ms of CPU per
request against otpgate, most of a core), and on two cores a client should not take the CPU
from the server it measures.  Applied to all three targets alike."""
SENT = re.compile(rb"^Sent Access-Request Id (\d+) from [^:]+:(\d+) ")
RECEIVED = re.compile(rb"^Received (Access-\w+) Id (\d+) from \S+ to [^:]+:(\d+) ")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def radclient_run(requests: Path, port: int, timeout: float, pids: dict[str, int]) -> dict:
    """radclient -p 64 over the file; rate and latency from its timestamped output."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    args = [
        *NICE,
        "stdbuf",
        "-oL",
        "radclient",
        "-p",
        str(PARALLEL),
        "-s",
        "-t",
        "5",
        "-r",
        "3",
        "-f",
        str(requests),
        f"127.0.0.1:{port}",
        "auth",
        SECRET,
    ]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    sent: dict[tuple[bytes, bytes], float] = {}
    latencies: list[float] = []
    codes: dict[str, int] = {}
    tail: list[bytes] = []
    first = last = None
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            now = time.perf_counter()
            m = SENT.match(line)
            if m:
                key = (m.group(1), m.group(2))
                sent.setdefault(key, now)  # a retransmission keeps the first send time
                if first is None:
                    first = now
                continue
            m = RECEIVED.match(line)
            if m:
                start = sent.pop((m.group(2), m.group(3)), None)
                if start is not None:
                    latencies.append(now - start)
                kind = m.group(1).decode()
                codes[kind] = codes.get(kind, 0) + 1
                last = now
                continue
            tail.append(line)
        _pid, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        timer.cancel()
    text = b"".join(tail).decode(errors="replace")
    summary = {k: int(v) for k, v in re.findall(r"(Accepted|Rejected|Lost)\s*:\s*(\d+)", text)}
    secs = (last - first) if first is not None and last is not None else float("nan")
    done = max(1, sum(codes.values()))
    result = {
        "accepted": summary.get("Accepted", codes.get("Access-Accept", 0)),
        "rejected": summary.get("Rejected", codes.get("Access-Reject", 0)),
        "lost": summary.get("Lost", 0),
        "secs": round(secs, 2),
        "rate": round(codes.get("Access-Accept", 0) / secs, 1) if secs == secs and secs > 0 else 0,
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
    }
    for name, pid in pids.items():
        result[f"cpu_us_{name}"] = round((cpu_seconds(pid) - before[name]) / done * 1e6)
    result["cpu_us_radclient"] = round((usage.ru_utime + usage.ru_stime) / done * 1e6)
    return result


def hotp(key: bytes, counter: int) -> str:
    from otpgate.otp.oath import hotp as _hotp

    return _hotp(key, counter)


def pap_block(name: str, password: str) -> str:
    return f'User-Name = "{name}"\nUser-Password = "{password}"\nMessage-Authenticator = 0x00\n'


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=1000, help="otpgate users (and slapo-otp users)")
    ap.add_argument("--rounds", type=int, default=10, help="codes per otpgate user")
    ap.add_argument("--fr-requests", type=int, default=60000, help="FreeRADIUS PAP requests")
    ap.add_argument("--secs", type=float, default=10, help="slapo-otp load duration")
    ap.add_argument("--processes", type=int, default=1, help="otpgate processes (SO_REUSEPORT)")
    ap.add_argument("--bind-connections", type=int, default=8,
                    help="[radius] bind_connections of each otpgate process")
    ap.add_argument(
        "--profile",
        metavar="SVG|TXT",
        help="py-spy profile of otpgate under load (.txt: collapsed stacks)",
    )
    args = ap.parse_args()
    if args.users < 2 * PARALLEL:
        ap.error(
            f"--users must be at least {2 * PARALLEL}: no user may have two requests in flight"
        )
    work = Path(tempfile.mkdtemp(prefix="otpgate-bench-radius-"))
    slapd_port, radius_port = free_tcp_port(), free_udp_port()
    otpgates: list[subprocess.Popen] = []
    fr: FreeRadius | None = None
    try:
        slapd_pid = start_anchor(work / "slapd", slapd_port, args.users)
        og = add_otpgate_users(work, slapd_port, args.users)
        config = work / "otpgate.toml"
        config.write_text(directory_sections(work, slapd_port) + f"""
[radius]
listen = ["127.0.0.1:{radius_port}"]
bind_connections = {args.bind_connections}
[[radius.clients]]
address = "127.0.0.1"
secret = "{SECRET}"
mode = "append"
[logging]
file = "otpgate.log"
""")
        enroll(config, work / "og.json")
        requests = work / "otpgate-requests.txt"
        requests.write_text(
            "\n".join(
                pap_block(u["name"], u["password"] + hotp(bytes.fromhex(u["secret_hex"]), c))
                for c in range(args.rounds)
                for u in og
            )
        )
        plain = json.loads((work / "slapd" / "plain.json").read_text())
        fr_users = {p["dn"].split(",")[0][4:]: p["password"] for p in plain}
        fr_requests = work / "freeradius-requests.txt"
        names = list(fr_users)
        fr_requests.write_text(
            "\n".join(
                pap_block(names[i % len(names)], fr_users[names[i % len(names)]])
                for i in range(args.fr_requests)
            )
        )

        fr = FreeRadius(work / "freeradius", fr_users, SECRET, threads=4)
        fr.start()
        shared = ["--shared"] if args.processes > 1 else []
        for _ in range(args.processes):
            server = [sys.executable, str(ROOT / "bench" / "radius_server.py"), str(config)]
            otpgates.append(subprocess.Popen([*server, *shared], cwd=work))
        wait_radius(radius_port)
        time.sleep(1)  # every process is listening
        assert fr.proc is not None
        fr_pid = fr.proc.pid
        runs = {
            "freeradius": radclient_run(fr_requests, fr.port, 600, {"freeradius": fr_pid}),
            "slapo-otp": ldap_load(
                slapd_port,
                work / "slapd" / "oath.json",
                "hotp",
                PARALLEL,
                args.secs,
                {"slapd": slapd_pid},
                nice=NICE,
            ),
        }
        spy = None
        if args.profile:
            fmt = ["-f", "raw"] if args.profile.endswith(".txt") else []  # collapsed stacks
            spy = subprocess.Popen(
                [
                    str(BIN / "py-spy"),
                    "record",
                    "-o",
                    args.profile,
                    "-d",
                    str(int(args.secs)),
                    "-p",
                    str(otpgates[0].pid),
                    "-r",
                    "200",
                    *fmt,
                ]
            )
        pids = {f"otpgate{i or ''}": p.pid for i, p in enumerate(otpgates)}
        pids["slapd"] = slapd_pid
        runs["otpgate"] = radclient_run(requests, radius_port, 900, pids)
        if spy is not None:
            spy.wait(timeout=120)
        runs["otpgate-replay"] = radclient_run(requests, radius_port, 900, pids)
        total = args.users * args.rounds
        result = {
            "parallel": PARALLEL,
            "users": args.users,
            "otpgate_requests": total,
            "processes": args.processes,
            "bind_connections": args.bind_connections,
            "runs": runs,
            "all_accepted": runs["otpgate"]["accepted"] == total,
            "replay_all_rejected": runs["otpgate-replay"]["rejected"] == total,
            "otpgate_vs_slapo_otp": round(runs["otpgate"]["rate"] / runs["slapo-otp"]["rate"], 3),
            "otpgate_vs_freeradius": round(runs["otpgate"]["rate"] / runs["freeradius"]["rate"], 3),
        }
        print(
            f"{'target':<15} {'auths/s':>9} {'accept':>7} {'reject':>7} {'lost':>5} "
            f"{'p50 ms':>8} {'p99 ms':>8}  CPU µs per request"
        )
        for name, r in runs.items():
            ok = r.get("accepted", r.get("ok"))
            bad = r.get("rejected", r.get("fail"))
            cpu = " ".join(f"{k[7:]}={v}" for k, v in r.items() if k.startswith("cpu_us_"))
            print(
                f"{name:<15} {r['rate']:>9.0f} {ok:>7} {bad:>7} {r.get('lost', 0):>5} "
                f"{r['p50_ms']:>8} {r['p99_ms']:>8}  {cpu}"
            )
        print(f"otpgate OTP / slapo-otp OTP : {result['otpgate_vs_slapo_otp']}")
        print(f"otpgate OTP / FreeRADIUS PAP: {result['otpgate_vs_freeradius']}")
        print(
            f"first run all Accept: {result['all_accepted']}, "
            f"replay all Reject: {result['replay_all_rejected']}"
        )
        out = ROOT / "bench" / "results"
        out.mkdir(exist_ok=True)
        (out / "radius.json").write_text(json.dumps(result, indent=2))
    finally:
        for proc in otpgates:
            proc.send_signal(signal.SIGTERM)
        for proc in otpgates:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        if fr is not None:
            fr.stop()
        stop_anchor(work / "slapd")
        shutil.rmtree(work, ignore_errors=True)


def wait_radius(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = subprocess.run(
            ["radclient", "-q", "-t", "0.5", "-r", "1", f"127.0.0.1:{port}", "status", SECRET],
            input=b"Message-Authenticator = 0x00\n",
            capture_output=True,
            check=False,
        )
        if done.returncode == 0:
            return
        time.sleep(0.2)
    raise RuntimeError(f"otpgate RADIUS does not answer on 127.0.0.1:{port}")


if __name__ == "__main__":
    main()
