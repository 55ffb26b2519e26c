#!/usr/bin/env python3
"""What an app-password login costs the gateway, next to a password + code login, in one run.

One anchor slapd (../shared/bench/anchor_slapd.sh), one ``twistd otpgate`` from this tree with
its LDAP proxy on one listener that takes app passwords, and one set of users, each holding
an HOTP token and an app password scoped to that listener.  The same load client
(../shared/bench/ldapbind_load.py), the same users and concurrency for both targets:

  otp  binds with password + HOTP code (``--mode hotp``): the gateway binds the password
       upstream and spends the code (a compare-and-swap write of the use state)
  app  binds with the app password (``--mode plain``, the app password as the password):
       the gateway reads the entry (cached, as for every login), hashes the secret
       (PBKDF2, apppass.ITERATIONS rounds) and writes the last use (compare-and-swap);
       nothing is bound upstream

HOTP stands for the codes: the load client has no TOTP mode, and a TOTP code differs from an
HOTP code by the window of steps tried (an HMAC each), not by any directory work.  Every user
writes its use state on every login, on both paths; users are many more than the binds in
flight.

The targets take turns (--rounds, the order swapped each round) so a slow spell of this
shared machine falls on both.  Each row: binds/s, p50/p99, and CPU µs per bind of the gateway,
slapd and the load client; then the ratios app/otp.  ``--profile FILE`` records the gateway
with py-spy during the first run of ``--profile-target`` (default app).  Writes
bench/results/app_passwords.json.  Loopback only; bounded: rounds x 2 x --secs seconds, plus
the set-up.

usage: bench/app_passwords.py [--users 400] [--conc 16] [--secs 6] [--rounds 3]
                              [--profile out.svg|out.txt] [--profile-target app|otp]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.fixtures import (  # noqa: E402
    BIN,
    add_otpgate_users,
    combine_rounds,
    directory_sections,
    each_user,
    enroll,
    free_tcp_port,
    ldap_load,
    start_anchor,
    stop_anchor,
)
from bench.ldap_proxy import wait_port  # noqa: E402

TARGETS = ("otp", "app")


def config_text(work: Path, slapd_port: int, proxy_port: int) -> str:
    listen = f"tcp:{proxy_port}:interface=127.0.0.1"
    return directory_sections(work, slapd_port) + f"""
[ldap_proxy]
listen = ["{listen}"]
[app_passwords]
listeners = ["{listen}"]
[logging]
file = "otpgate.log"
"""


def create_app_passwords(config: Path, users_file: Path, out: Path) -> None:
    """One app password per user of ``users_file`` (scoped to the listener), in a subprocess
    (twistd's task.react exits the process it runs in); ``out``: the users with the app
    password as their password, for the load client."""
    subprocess.run(
        [sys.executable, "-m", "bench.app_passwords", "--create", str(config), str(users_file),
         str(out)],
        cwd=ROOT, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def _create(config_path: Path, users: list[dict], out: Path) -> None:
    from otpgate.admin.apppasswords import create_change, scope_for

    rows: list[dict] = []

    async def one(gw: Any, config: Any, u: dict) -> None:
        places, now = config.app_passwords, time.time()
        scope = scope_for(places, listeners=list(places.listeners), now=now)
        secret, change = create_change("bench", scope, now, places.max_per_user)
        entry = await gw.store.resolve(u["dn"], fresh=True)
        await gw.store.update(entry, change)
        rows.append({"name": u["name"], "dn": u["dn"], "password": secret})

    each_user(config_path, users, one, lambda: out.write_text(json.dumps(rows)))


def start_gateway(work: Path, config: Path, port: int) -> subprocess.Popen[bytes]:
    """``twistd otpgate`` from this tree (its otpgate before the venv's)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [str(BIN / "twistd"), "-n", "--pidfile=", "--logfile", str(work / "twistd.log"),
         "otpgate", "--config", str(config)], cwd=work, env=env)
    try:
        wait_port(port)
    except BaseException:
        proc.kill()
        raise
    return proc


def table(runs: dict[str, dict]) -> None:
    print(f"{'target':<7} {'binds/s':>8} {'fail':>5} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'gateway µs':>11} {'slapd µs':>9} {'client µs':>10}")
    for name, r in runs.items():
        print(f"{name:<7} {r['rate']:>8.0f} {r['fail']:>5} {r['p50_ms']:>7} {r['p99_ms']:>7} "
              f"{r['cpu_us_gateway']:>11} {r['cpu_us_slapd']:>9} {r['cpu_us_client']:>10}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=400)
    ap.add_argument("--conc", type=int, default=16)
    ap.add_argument("--secs", type=float, default=6, help="seconds per target per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--profile", metavar="SVG|TXT", help="py-spy of the gateway, first run")
    ap.add_argument("--profile-target", choices=TARGETS, default="app")
    args = ap.parse_args()
    if args.users <= 2 * args.conc:
        ap.error("--users must be more than twice --conc")
    work = Path(tempfile.mkdtemp(prefix="otpgate-bench-app-"))
    gateway: subprocess.Popen[bytes] | None = None
    try:
        slapd_port, proxy_port = free_tcp_port(), free_tcp_port()
        slapd_pid = start_anchor(work / "slapd", slapd_port, 10)
        add_otpgate_users(work, slapd_port, args.users)
        config = work / "otpgate.toml"
        config.write_text(config_text(work, slapd_port, proxy_port))
        enroll(config, work / "og.json")
        create_app_passwords(config, work / "og.json", work / "app.json")
        gateway = start_gateway(work, config, proxy_port)
        pids = {"gateway": gateway.pid, "slapd": slapd_pid}
        files = {"otp": (work / "og.json", "hotp"), "app": (work / "app.json", "plain")}
        for users, mode in files.values():  # warm-up: code paths, connections
            ldap_load(proxy_port, users, mode, args.conc, 1, {})
        rounds: dict[str, list[dict]] = {t: [] for t in TARGETS}
        for turn in range(args.rounds):
            for target in TARGETS if turn % 2 == 0 else TARGETS[::-1]:
                users, mode = files[target]
                spy = None
                if args.profile and target == args.profile_target and turn == 0:
                    fmt = ["--format", "raw"] if args.profile.endswith(".txt") else []
                    spy = subprocess.Popen([str(BIN / "py-spy"), "record", *fmt, "-o",
                                            args.profile, "-d", str(int(args.secs)), "-p",
                                            str(gateway.pid), "-r", "200"])
                run = ldap_load(proxy_port, users, mode, args.conc, args.secs, pids)
                if spy is not None:
                    spy.wait(timeout=120)
                if run["fail"]:
                    raise SystemExit(f"{target}: failed binds: {run['codes']}")
                rounds[target].append(run)
        runs = {t: combine_rounds(each) for t, each in rounds.items()}
        table(runs)
        otp, app = runs["otp"], runs["app"]
        ratios = {
            "gateway_cpu_app_over_otp": round(app["cpu_us_gateway"] / otp["cpu_us_gateway"], 3),
            "slapd_cpu_app_over_otp": round(app["cpu_us_slapd"] / otp["cpu_us_slapd"], 3),
            "rate_app_over_otp": round(app["rate"] / otp["rate"], 3),
        }
        for key, value in ratios.items():
            print(f"{key}: {value}")
        result = {"users": args.users, "conc": args.conc, "secs": args.secs,
                  "rounds": args.rounds, "runs": runs, **ratios}
        out = ROOT / "bench" / "results"
        out.mkdir(exist_ok=True)
        (out / "app_passwords.json").write_text(json.dumps(result, indent=2))
    finally:
        if gateway is not None:
            gateway.send_signal(signal.SIGTERM)
            try:
                gateway.wait(timeout=15)
            except subprocess.TimeoutExpired:
                gateway.kill()
        stop_anchor(work / "slapd")
        time.sleep(0.2)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__" and sys.argv[1:2] == ["--create"]:
    _create(Path(sys.argv[2]), json.loads(Path(sys.argv[3]).read_text()), Path(sys.argv[4]))
elif __name__ == "__main__":
    main()
