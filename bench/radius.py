#!/usr/bin/env python3
"""RADIUS benchmark: one run on loopback, ../shared/bench/radius_load.py as the client of every
target (asyncio, Message-Authenticator, no busy polling), same concurrency for all.

  fr-pap         FreeRADIUS 3.2, PAP from a users file: the protocol ceiling (no OTP, no LDAP)
  fr-totp        FreeRADIUS 3.2 + rlm_ldap + rlm_totp (../shared/bench/freeradius_ldap_totp.sh,
                 read): user search, TOTP check, password bind; writes nothing (no replay
                 protection)
  fr-totp-write  the same with its `write` mode: the last accepted step read with the entry and
                 written back in post-auth (one LDAP Modify per login, not compare-and-swap)
  otpgate        otpgate append mode (User-Password = password + TOTP code) on the same users,
                 enrolled by otpgate with the same keys: one compare-and-swap write per login
  otpgate-replay the same users again within the same 30-s step: every request must be
                 rejected (the codes are spent)
  otpgate-reply  otpgate again (its own processes, its own 30-s step), with the VPN reply rules
                 of docs/RADIUS.md on its NAS: a group's VLAN (every user is a member: one more
                 group search per cold login), vendor attributes, the group's name as Class;
                 its otpgate CPU µs next to otpgate's is the cost of the reply rules

The targets take turns over --rounds rounds (a slow spell of this shared machine falls on all
of them alike); a row sums its rounds and each ratio is printed over the sums and per round.
TOTP targets each start just after a 30-s boundary and use each user at most once per step
(`reused` must be 0): --users bounds the requests of a run.  Every row carries the CPU µs per
request of each process (FreeRADIUS, slapd, otpgate, the load client) and its load (CPU
seconds per second: 1.0 is a saturated core); the busiest is named.  Writes
bench/results/radius.json.  Bounded: --secs per target, --users requests per TOTP target.

usage: bench/radius.py [--users 12000] [--conc 32] [--secs 8] [--rounds 3] [--processes 1]
                       [--profile F] [--targets fr-pap,fr-totp,fr-totp-write,otpgate,otpgate-reply]
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
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
    directory_sections,
    enroll,
    free_tcp_port,
    shared_load,
    start_anchor,
    stop_anchor,
)
from bench.fixtures import combine_rounds as combine  # noqa: E402
from bench.radius_freeradius import FreeRadius, free_udp_port  # noqa: E402

SECRET = "bench-radius-secret-0123456789"
GROUP = "cn=vpn-staff,ou=totp,dc=example,dc=org"
REPLY_RULES = f"""
reply_match = "first"
accept_message = "Welcome to the VPN"
[[radius.clients.reply]]
member_of = "{GROUP}"
group_names = ["Class", "Fortinet-Group-Name"]
[radius.clients.reply.attributes]
"Tunnel-Type:1" = "VLAN"
"Tunnel-Medium-Type:1" = "IEEE-802"
"Tunnel-Private-Group-Id:1" = "10"
"Cisco-AVPair" = "shell:priv-lvl=15"
"Session-Timeout" = 28800
[[radius.clients.reply]]
attributes = {{ "Tunnel-Type:1" = "VLAN", "Tunnel-Private-Group-Id:1" = "20" }}
"""


def radius_config(directory: str, port: int, log: str, rules: str = "") -> str:
    return directory + f"""
[radius]
listen = ["127.0.0.1:{port}"]
[[radius.clients]]
address = "127.0.0.1"
secret = "{SECRET}"
mode = "append"
{rules}
[logging]
file = "{log}"
"""


def add_group(slapd_port: int, users: Path) -> None:
    """``GROUP`` with every TOTP user as a member (groupOfNames)."""
    members = "".join(f"member: {u['dn']}\n" for u in json.loads(users.read_text()))
    subprocess.run(["ldapadd", "-x", "-H", f"ldap://127.0.0.1:{slapd_port}", "-D",
                    "cn=admin,dc=example,dc=org", "-w", "secret"],
                   input=f"dn: {GROUP}\nobjectClass: groupOfNames\ncn: vpn-staff\n{members}",
                   text=True, check=True, capture_output=True)


def radius_load(port: int, users: Path, mode: str, args: argparse.Namespace,
                pids: dict[str, int], requests: int | None = None) -> dict:
    argv = [sys.executable, str(SHARED / "radius_load.py"), "--port", str(port), "--secret",
            SECRET, "--users", str(users), "--mode", mode, "--conc", str(args.conc),
            "--secs", str(args.secs), "--timeout", "5"]
    if requests is not None:
        argv += ["--requests", str(requests)]
    return shared_load(argv, args.secs, pids)


def after_boundary(margin: float = 0.3) -> None:
    """Sleep until just after the next 30-s TOTP step boundary."""
    time.sleep(30 - time.time() % 30 + margin)


def wait_radius(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = subprocess.run(
            ["radclient", "-q", "-t", "0.5", "-r", "1", f"127.0.0.1:{port}", "status", SECRET],
            input=b"Message-Authenticator = 0x00\n", capture_output=True, check=False)
        if done.returncode == 0:
            return
        time.sleep(0.2)
    raise RuntimeError(f"nothing answers RADIUS on 127.0.0.1:{port}")


def freeradius_ldap(work: Path, slapd_port: int, mode: str, threads: int) -> tuple[int, int]:
    """../shared/bench/freeradius_ldap_totp.sh in ``mode``; (port, pid)."""
    port, where = free_udp_port(), work / f"fr-{mode}"
    subprocess.run(["bash", str(SHARED / "freeradius_ldap_totp.sh"), str(where), str(port),
                    str(slapd_port), SECRET, mode, str(threads)],
                   check=True, capture_output=True, text=True)
    wait_radius(port)
    return port, int((where / "radiusd.pid").read_text())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=12000, help="TOTP users (requests per run)")
    ap.add_argument("--conc", type=int, default=32, help="requests in flight")
    ap.add_argument("--secs", type=float, default=8, help="seconds per target (at most 12)")
    ap.add_argument("--rounds", type=int, default=3, help="turns of all targets")
    ap.add_argument("--threads", type=int, default=8, help="FreeRADIUS threads")
    ap.add_argument("--processes", type=int, default=1, help="otpgate processes (SO_REUSEPORT)")
    ap.add_argument("--profile", metavar="SVG|TXT", help="py-spy profile of otpgate under load")
    ap.add_argument("--targets", default="fr-pap,fr-totp,fr-totp-write,otpgate",
                    help="comma-separated subset (otpgate includes its replay run)")
    args = ap.parse_args()
    if not 0 < args.secs <= 12:
        ap.error("--secs must be in (0, 12]: otpgate and its replay run share one 30-s step")
    wanted = set(args.targets.split(","))
    work = Path(tempfile.mkdtemp(prefix="otpgate-bench-radius-"))
    slapd_port, radius_port = free_tcp_port(), free_udp_port()
    servers: list[subprocess.Popen] = []
    stop_pids: list[int] = []
    fr: FreeRadius | None = None
    try:
        slapd_pid = start_anchor(work / "slapd", slapd_port, 1000)
        totp = work / "totp.json"
        subprocess.run([sys.executable, str(SHARED / "add_totp_users.py"), str(slapd_port),
                        str(args.users), str(totp)], check=True, capture_output=True)
        config = work / "otpgate.toml"
        directory = directory_sections(work, slapd_port)
        config.write_text(radius_config(directory, radius_port, "otpgate.log"))
        reply_port = free_udp_port()
        reply_config = work / "otpgate-reply.toml"
        reply_config.write_text(radius_config(directory, reply_port, "reply.log", REPLY_RULES))
        if wanted & {"otpgate", "otpgate-reply"}:
            enroll(config, totp, "totp")
        if "otpgate-reply" in wanted:
            add_group(slapd_port, totp)
        rounds: dict[str, list[dict]] = {}
        fr_ports: dict[str, tuple[int, int]] = {}
        for mode in ("read", "write"):  # both FreeRADIUS + LDAP + TOTP servers, kept running
            name = "fr-totp" if mode == "read" else "fr-totp-write"
            if name in wanted:
                fr_ports[name] = freeradius_ldap(work, slapd_port, mode, args.threads)
                stop_pids.append(fr_ports[name][1])
        if "fr-pap" in wanted:
            plain = json.loads((work / "slapd" / "plain.json").read_text())
            fr = FreeRadius(work / "freeradius", {p["dn"][4:].split(",")[0]: p["password"]
                                                  for p in plain}, SECRET, threads=args.threads)
            fr.start()
        pids: dict[str, int] = {}
        if "otpgate" in wanted:
            shared = ["--shared"] if args.processes > 1 else []
            for _ in range(args.processes):
                servers.append(subprocess.Popen(
                    [sys.executable, str(ROOT / "bench" / "radius_server.py"), str(config),
                     *shared], cwd=work))
            wait_radius(radius_port)
            time.sleep(1 if args.processes > 1 else 0)  # every process is listening
            pids = {f"otpgate{i or ''}": p.pid for i, p in enumerate(servers)}
            pids["slapd"] = slapd_pid
        reply_pids: dict[str, int] = {}
        if "otpgate-reply" in wanted:
            shared = ["--shared"] if args.processes > 1 else []
            started = [subprocess.Popen(
                [sys.executable, str(ROOT / "bench" / "radius_server.py"), str(reply_config),
                 *shared], cwd=work) for _ in range(args.processes)]
            servers.extend(started)
            wait_radius(reply_port)
            time.sleep(1 if args.processes > 1 else 0)
            reply_pids = {f"otpgate{i or ''}": p.pid for i, p in enumerate(started)}
            reply_pids["slapd"] = slapd_pid
        for turn in range(args.rounds):
            if fr is not None and fr.proc is not None:
                rounds.setdefault("fr-pap", []).append(radius_load(
                    fr.port, work / "slapd" / "plain.json", "plain", args,
                    {"freeradius": fr.proc.pid}))
            for name, (port, pid) in fr_ports.items():
                after_boundary()  # a fresh 30-s step: every user has an unused code
                rounds.setdefault(name, []).append(radius_load(
                    port, totp, "totp", args, {"freeradius": pid, "slapd": slapd_pid},
                    args.users))
            if "otpgate" in wanted:
                after_boundary()
                spy = None
                if args.profile and turn == 0:
                    fmt = ["--format", "raw"] if args.profile.endswith(".txt") else []
                    spy = subprocess.Popen([str(BIN / "py-spy"), "record", *fmt, "-o",
                                            args.profile, "-d", str(int(args.secs)), "-p",
                                            str(servers[0].pid), "-r", "200"])
                run = radius_load(radius_port, totp, "totp", args, pids, args.users)
                rounds.setdefault("otpgate", []).append(run)
                if spy is not None:
                    spy.wait(timeout=120)
                replay_users = work / "replay.json"
                done = run["ok"]
                replay_users.write_text(json.dumps(json.loads(totp.read_text())[:done]))
                replay = radius_load(radius_port, replay_users, "totp", args, pids, done)
                if int(time.time()) // 30 != int(time.time() - run["secs"] - 1) // 30:
                    replay["note"] = "crossed a 30-s step: not a replay check"
                rounds.setdefault("otpgate-replay", []).append(replay)
            if "otpgate-reply" in wanted:
                after_boundary()
                rounds.setdefault("otpgate-reply", []).append(
                    radius_load(reply_port, totp, "totp", args, reply_pids, args.users))
        runs = {name: combine(each) for name, each in rounds.items()}
        per_round = {f"otpgate/{b}": [round(x["rate"] / y["rate"], 3) for x, y in
                                      zip(rounds["otpgate"], rounds[b], strict=True)]
                     for b in ("fr-totp-write", "fr-totp", "fr-pap")
                     if b in rounds and "otpgate" in rounds}
        if "otpgate" in rounds and "otpgate-reply" in rounds:
            per_round["otpgate-reply - otpgate"] = [
                round(r["cpu_us_otpgate"] - o["cpu_us_otpgate"], 1)
                for o, r in zip(rounds["otpgate"], rounds["otpgate-reply"], strict=True)]
        report(runs, per_round, args)
    finally:
        for proc in servers:
            proc.send_signal(signal.SIGTERM)
        for proc in servers:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        for pid in stop_pids:
            subprocess.run(["kill", str(pid)], check=False, capture_output=True)
        if fr is not None:
            fr.stop()
        stop_anchor(work / "slapd")
        shutil.rmtree(work, ignore_errors=True)


def report(runs: dict[str, dict], per_round: dict[str, list[float]],
           args: argparse.Namespace) -> None:
    def ratio(a: str, b: str) -> float | None:
        if a in runs and b in runs and runs[b]["rate"]:
            return round(runs[a]["rate"] / runs[b]["rate"], 3)
        return None

    result = {
        "users": args.users, "conc": args.conc, "secs": args.secs,
        "processes": args.processes, "threads": args.threads, "rounds": args.rounds,
        "runs": runs, "per_round": per_round,
        "otpgate_vs_fr_totp_write": ratio("otpgate", "fr-totp-write"),
        "otpgate_vs_fr_totp": ratio("otpgate", "fr-totp"),
        "otpgate_vs_fr_pap": ratio("otpgate", "fr-pap"),
    }
    print(f"{'target':<15} {'auths/s':>8} {'ok':>6} {'reject':>6} {'tmo':>4} {'reused':>6} "
          f"{'p50 ms':>7} {'p99 ms':>7}  CPU µs/request; busiest (CPU s/s)")
    for name, r in runs.items():
        cpu = {k[7:]: v for k, v in r.items() if k.startswith("cpu_us_")}
        done = r["ok"] + r["reject"] + r["timeout"]
        load = {k: round(v * done / max(r["secs"], 1e-9) / 1e6, 2) for k, v in cpu.items()}
        r["load"] = load
        busiest = max(load, key=load.__getitem__)
        text = " ".join(f"{k}={v}" for k, v in cpu.items())
        print(f"{name:<15} {r['rate']:>8.0f} {r['ok']:>6} {r['reject']:>6} {r['timeout']:>4} "
              f"{r.get('reused', 0):>6} {r['p50_ms']:>7} {r['p99_ms']:>7}  {text}; "
              f"{busiest} ({load[busiest]})")
    for label, key, pair in (("write", "otpgate_vs_fr_totp_write", "otpgate/fr-totp-write"),
                             ("read ", "otpgate_vs_fr_totp", "otpgate/fr-totp"),
                             ("PAP  ", "otpgate_vs_fr_pap", "otpgate/fr-pap")):
        each = " ".join(str(x) for x in per_round.get(pair, []))
        print(f"otpgate / FreeRADIUS {label}: {result[key]}  (rounds: {each or '-'})")
    if "otpgate-replay" in runs:
        print(f"replay accepted: {runs['otpgate-replay']['ok']} (must be 0)")
    if "otpgate" in runs and "otpgate-reply" in runs:
        extra = runs["otpgate-reply"]["cpu_us_otpgate"] - runs["otpgate"]["cpu_us_otpgate"]
        result["reply_rules_otpgate_us_per_login"] = round(extra, 1)
        each = " ".join(str(x) for x in per_round.get("otpgate-reply - otpgate", []))
        print(f"reply rules: {extra:+.1f} otpgate CPU µs per login (rounds: {each})")
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "radius.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
