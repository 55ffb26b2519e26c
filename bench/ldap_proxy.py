#!/usr/bin/env python3
"""LDAP bind benchmark, one run on loopback, same load client and concurrency for every target.

  direct     plain binds straight to slapd
  pass       plain binds through otpgate (exempt users: password only)
  slapo-otp  HOTP binds to slapd's own C overlay (password+code, counter written per bind)
  ceiling    the directory's own limit for our kind of login (../shared/bench/directory_ceiling.py:
             a compare-and-swap Modify of one ~400-byte value, then the user's bind; no gateway)
  otpgate    HOTP binds through otpgate (users enrolled by otpgate, state CAS-written per bind)

On a Samba AD DC (bench/samba_ad.py; only when named in --targets: it needs Samba's fixed ports
127.0.0.1:389/636/3268/3269 and waits, up to --samba-port-wait, while another Samba holds them):

  ad-direct   plain simple binds of the AD users straight to the DC, on ldap://:389: the load
              client speaks no TLS, so this DC accepts simple binds without it
  ad-otpgate  password+HOTP binds of the same users through otpgate with the AD profile, an
              unprivileged service account and [directory] state_dn (one state entry per
              user, CAS-written per bind); otpgate reaches the DC over LDAPS

Every row carries the CPU µs per bind of each process (slapd or every Samba process summed,
otpgate, the load client) and its load (CPU seconds per second: 1.0 is a saturated core); the
busiest process is named, with the load of all our processes and of the whole machine (others'
work included: compare it with the cores).

The targets take turns: --rounds rounds, each running every target for --secs seconds in
turn, so that a slow spell of this shared machine (its disk's fsync latency bounds every
writing target) falls on all of them alike.  A row sums its rounds (rate = accepted binds /
seconds, CPU weighted by operations, p50/p99 the median of the rounds); each ratio is printed
over the sums and per round.

Uses ../shared/bench/anchor_slapd.sh and ldapbind_load.py. Prints a table and the ratios, and
writes bench/results/ldap_proxy.json.  Bounded: rounds x targets x --secs seconds, plus the
set-up (Samba AD: about 20 s for 300 users).
usage: bench/ldap_proxy.py [--users 500] [--ad-users 300] [--conc 16] [--secs 6] [--rounds 3]
       [--processes 1] [--targets direct,pass,slapo-otp,ceiling,otpgate,ad-direct,ad-otpgate]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
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
from bench.samba_ad import (  # noqa: E402
    AdSite,
    first_logons,
    otpgate_sections,
    samba_processes,
    start_site,
    wait_for_samba_ports,
    write_users,
)


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


def machine_busy() -> tuple[float, float]:
    """(CPU seconds every core of the machine spent busy, monotonic time): anyone's work."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK"), time.monotonic()


SLAPD_TARGETS = ("direct", "pass", "slapo-otp", "ceiling", "otpgate")
AD_TARGETS = ("ad-direct", "ad-otpgate")
RATIOS = (  # label, result key, pair of targets
    ("pass-through / direct  ", "pass_vs_direct", "pass/direct"),
    ("otpgate OTP / slapo-otp", "otpgate_vs_slapo_otp", "otpgate/slapo-otp"),
    ("otpgate OTP / ceiling  ", "otpgate_vs_ceiling", "otpgate/ceiling"),
    ("ceiling / slapo-otp    ", "ceiling_vs_slapo_otp", "ceiling/slapo-otp"),
    ("AD: otpgate / direct   ", "ad_otpgate_vs_ad_direct", "ad-otpgate/ad-direct"),
)

Plan = dict[str, tuple[int, Path, str, dict[str, int]]]
"""target -> (port, users file, load mode, the processes whose CPU is counted)."""


def start_gateway(work: Path, config: Path, processes: int, port: int,
                  proxies: list[subprocess.Popen[bytes]]) -> dict[str, int]:
    """twistd otpgate with ``config`` (its main process starts processes - 1 workers itself),
    added to ``proxies``; returns its processes as otpgate0, otpgate1..."""
    proc = subprocess.Popen(
        [str(BIN / "twistd"), "-n", "--pidfile=", "--logfile", str(work / "twistd.log"),
         "otpgate", "--config", str(config)], cwd=work)
    proxies.append(proc)
    wait_port(port)
    time.sleep(1 if processes > 1 else 0)  # let the workers bind
    workers = subprocess.run(["pgrep", "-f", f"otpgate.worker {config}"], capture_output=True,
                             text=True).stdout.split()
    return {f"otpgate{i}": pid for i, pid in enumerate([proc.pid, *map(int, workers)])}


def proxy_section(port: int, processes: int) -> str:
    return f"""
[ldap_proxy]
listen = ["tcp:{port}:interface=127.0.0.1"]
processes = {processes}
[logging]
file = "otpgate.log"
"""


def plan_slapd(work: Path, args: argparse.Namespace, wanted: set[str],
               proxies: list[subprocess.Popen[bytes]]) -> Plan:
    """The anchor slapd, otpgate's users on it, and a gateway (the slapd targets)."""
    slapd_port, proxy_port = free_tcp_port(), free_tcp_port()
    start_anchor(work / "slapd", slapd_port, args.users)
    add_otpgate_users(work, slapd_port, args.users)
    config = work / "otpgate.toml"
    config.write_text(directory_sections(work, slapd_port) + f"""
[policy]
exempt_subtrees = ["ou=people,{SUFFIX}"]
""" + proxy_section(proxy_port, args.processes))
    enroll(config, work / "og.json")
    gateway = start_gateway(work, config, args.processes, proxy_port, proxies)
    slapd = {"slapd": int((work / "slapd" / "slapd.pid").read_text())}
    pids = {**slapd, **gateway}
    plain, og = work / "slapd" / "plain.json", work / "og.json"
    plan: Plan = {
        "direct": (slapd_port, plain, "plain", pids),
        "pass": (proxy_port, plain, "plain", pids),
        "slapo-otp": (slapd_port, work / "slapd" / "oath.json", "hotp", pids),
        "ceiling": (slapd_port, plain, "ceiling", slapd),
        "otpgate": (proxy_port, og, "hotp", pids),
    }
    return {k: v for k, v in plan.items() if k in wanted}


def plan_ad(work: Path, args: argparse.Namespace, wanted: set[str],
            proxies: list[subprocess.Popen[bytes]]) -> tuple[Plan, AdSite]:
    """A Samba AD DC with AD users, and a gateway with the AD profile (the AD targets)."""
    work.mkdir()
    wait_for_samba_ports(args.samba_port_wait)
    started = time.monotonic()
    site, users = start_site(work, args.ad_users)
    try:
        proxy_port = free_tcp_port()
        config = work / "otpgate.toml"
        config.write_text(otpgate_sections(site, work) + proxy_section(proxy_port, args.processes))
        plain = write_users(work / "plain.json", [
            {k: u[k] for k in ("name", "dn", "password")} for u in users
        ])
        og = write_users(work / "og.json", users)
        enroll(config, og)
        first_logons(site.dc, users)
        took = time.monotonic() - started
        print(f"Samba AD DC provisioned in {site.dc.provision_seconds:.0f} s; {len(users)} users "
              f"added, enrolled and logged on once: {took:.0f} s in all", file=sys.stderr)
        gateway = start_gateway(work, config, args.processes, proxy_port, proxies)
        pids = {**samba_processes(site.dc), **gateway}
        plan: Plan = {
            "ad-direct": (389, plain, "plain", pids),
            "ad-otpgate": (proxy_port, og, "hotp", pids),
        }
        return {k: v for k, v in plan.items() if k in wanted}, site
    except BaseException:
        site.dc.stop()
        raise


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=500)
    ap.add_argument("--ad-users", type=int, default=300, help="users on the Samba AD DC")
    ap.add_argument("--conc", type=int, default=16)
    ap.add_argument("--secs", type=float, default=6, help="seconds per target per round")
    ap.add_argument("--rounds", type=int, default=3, help="turns of all targets")
    ap.add_argument("--processes", type=int, default=1, help="otpgate reactor processes")
    ap.add_argument("--profile", metavar="SVG|TXT", help="py-spy profile of otpgate (.txt: raw)")
    ap.add_argument("--profile-target", choices=("pass", "otpgate", "ad-otpgate"),
                    default="otpgate")
    ap.add_argument("--targets", default=",".join(SLAPD_TARGETS),
                    help="comma-separated targets (default: the slapd ones; the Samba AD ones "
                         "are " + ",".join(AD_TARGETS) + ")")
    ap.add_argument("--samba-port-wait", type=float, default=900, metavar="SECS",
                    help="how long to wait for another Samba to free 127.0.0.1:389/636")
    args = ap.parse_args()
    wanted = set(args.targets.split(","))
    if unknown := wanted - {*SLAPD_TARGETS, *AD_TARGETS}:
        ap.error(f"unknown targets: {', '.join(sorted(unknown))}")
    work = Path(tempfile.mkdtemp(prefix="otpgate-bench-"))
    proxies: list[subprocess.Popen[bytes]] = []
    site: AdSite | None = None
    try:
        plan: Plan = {}
        if wanted & set(AD_TARGETS):  # first: it may have to wait for Samba's ports
            ad_plan, site = plan_ad(work / "ad", args, wanted, proxies)
            plan.update(ad_plan)
        if wanted & set(SLAPD_TARGETS):
            plan = {**plan_slapd(work, args, wanted, proxies), **plan}

        def profiled(target: str) -> subprocess.Popen[bytes] | None:
            if not args.profile or args.profile_target != target:
                return None
            fmt = ["--format", "raw"] if args.profile.endswith(".txt") else []
            gateway = plan[target][3]["otpgate0"]
            return subprocess.Popen([str(BIN / "py-spy"), "record", *fmt, "-o", args.profile, "-d",
                                     str(int(args.secs)), "-p", str(gateway), "-r", "200"])

        rounds: dict[str, list[dict]] = {}
        for turn in range(args.rounds):
            for target, (port, users, mode, pids) in plan.items():
                spy = profiled(target) if turn == 0 else None
                busy, since = machine_busy()
                if mode == "ceiling":
                    run = ceiling(port, args, pids)
                else:
                    run = ldap_load(port, users, mode, args.conc, args.secs, pids)
                now_busy, now = machine_busy()
                run["machine_load"] = round((now_busy - busy) / (now - since), 2)
                rounds.setdefault(target, []).append(run)
                if spy is not None:
                    spy.wait(timeout=120)
        runs = {name: combine(each) for name, each in rounds.items()}
        for name, each in rounds.items():  # the whole machine's, ours and others' (2 cores)
            runs[name]["machine_load"] = round(statistics.mean(r["machine_load"] for r in each), 2)

        def ratio(a: str, b: str) -> float | None:
            return round(runs[a]["rate"] / runs[b]["rate"], 3) if a in runs and b in runs else None

        def per_round(a: str, b: str) -> list[float]:
            if a not in rounds or b not in rounds:
                return []
            pairs = zip(rounds[a], rounds[b], strict=True)
            return [round(x["rate"] / y["rate"], 3) for x, y in pairs]

        result = {
            "users": args.users, "ad_users": args.ad_users, "conc": args.conc, "secs": args.secs,
            "processes": args.processes, "rounds": args.rounds, "runs": runs,
            "per_round": {pair: per_round(*pair.split("/")) for _, _, pair in RATIOS},
            **{key: ratio(*pair.split("/")) for _, key, pair in RATIOS},
        }
        print(f"{'target':<10} {'binds/s':>9} {'fail':>6} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'dir µs':>9} {'otpgate µs':>11} {'client µs':>10}  busiest (CPU s/s)")
        for name, r in runs.items():
            ours = sum(v for k, v in r.items() if k.startswith("cpu_us_otpgate"))
            server = sum(v for k, v in r.items() if k.startswith(("cpu_us_slapd", "cpu_us_samba")))
            load = {k[7:]: round(v * r["rate"] / 1e6, 2) for k, v in r.items()
                    if k.startswith("cpu_us_")}
            busiest = max(load, key=load.__getitem__)
            r["load"] = load
            r["server_cpu_us"] = server  # the directory server: slapd, or every samba process
            r["total_load"] = round(sum(load.values()), 2)
            samba = ""
            if any(k.startswith("samba") for k in load):
                r["samba_load"] = round(sum(v for k, v in load.items() if k.startswith("samba")), 2)
                samba = f"; all samba {r['samba_load']}"
            print(f"{name:<10} {r['rate']:>9.0f} {r['fail']:>6} {r['p50_ms']:>8} {r['p99_ms']:>8} "
                  f"{server:>9} {ours:>11} {r['cpu_us_client']:>10}  "
                  f"{busiest} ({load[busiest]}{samba}; all {r['total_load']}; "
                  f"machine {r['machine_load']})")
        for label, key, pair in RATIOS:
            if result[key] is None:
                continue
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
        if site is not None:
            site.dc.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
