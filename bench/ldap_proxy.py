#!/usr/bin/env python3
"""LDAP bind benchmark, one run on loopback, same load client and concurrency for every target.

  direct     plain binds straight to slapd
  pass       plain binds through otpgate (exempt users: password only)
  slapo-otp  HOTP binds to slapd's own C overlay (password+code, counter written per bind)
  otpgate    HOTP binds through otpgate (users enrolled by otpgate, state CAS-written per bind)

Uses ../shared/bench/anchor_slapd.sh and ldapbind_load.py. Prints a table and the ratios, and
writes bench/results/ldap_proxy.json.  Bounded: each target runs --secs seconds.
usage: bench/ldap_proxy.py [--users 500] [--conc 16] [--secs 10] [--processes 1]
"""

from __future__ import annotations

import argparse
import json
import os
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

from bench.anchor import start_anchor  # noqa: E402

SHARED = ROOT.parent / "shared" / "bench"
BIN = Path(sys.executable).parent
SUFFIX = "dc=example,dc=org"
ADMIN = ("cn=admin," + SUFFIX, "secret")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def ldapadd(port: int, ldif: str) -> None:
    subprocess.run(["ldapadd", "-x", "-H", f"ldap://127.0.0.1:{port}", "-D", ADMIN[0], "-w", ADMIN[1]],
                   input=ldif, text=True, check=True, capture_output=True)


def enroll(config_path: Path, users: list[dict]) -> None:
    """Give each user an otpgate HOTP token with the key the load client will use."""
    from twisted.internet import task

    from otpgate.admin.enrollment import enroll_change, new_oath_token
    from otpgate.config import load_config
    from otpgate.service import Gateway
    from otpgate.tokens import TokenType
    from otpgate.vault import Keyring

    async def run(reactor) -> None:
        config = load_config(config_path)
        gw = Gateway(config, Keyring.load(config.keyring), reactor)
        try:
            for u in users:
                entry = await gw.store.resolve(u["dn"])
                token, secret = new_oath_token(config.otp, TokenType.HOTP,
                                               key=bytes.fromhex(u["secret_hex"]))
                await gw.store.update(entry, lambda s, t=token, k=secret: enroll_change(s, t, k, 5))
        finally:
            gw.close()

    from twisted.internet import defer

    task.react(lambda reactor: defer.ensureDeferred(run(reactor)))  # exits the process


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def load(port: int, users: Path, mode: str, conc: int, secs: float, pids: dict[str, int]) -> dict:
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    out = subprocess.run(
        [sys.executable, str(SHARED / "ldapbind_load.py"), "--port", str(port), "--users", str(users),
         "--mode", mode, "--conc", str(conc), "--secs", str(secs), "--state-out", str(users)],
        check=True, capture_output=True, text=True, timeout=secs + 120,
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    done = max(1, result["ok"] + result["fail"])
    for name, pid in pids.items():  # CPU time per bind, in microseconds
        result[f"cpu_us_{name}"] = round((cpu_seconds(pid) - before[name]) / done * 1e6)
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=500)
    ap.add_argument("--conc", type=int, default=16)
    ap.add_argument("--secs", type=float, default=10)
    ap.add_argument("--processes", type=int, default=1, help="otpgate reactor processes")
    ap.add_argument("--profile", metavar="SVG|TXT", help="py-spy profile of otpgate (.txt: raw)")
    ap.add_argument("--profile-target", choices=("pass", "otpgate"), default="otpgate")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="otpgate-bench-"))
    slapd_port, proxy_port = free_port(), free_port()
    proxies: list[subprocess.Popen] = []
    try:
        start_anchor(work / "slapd", slapd_port, args.users)
        og = []
        ldif = [f"dn: ou=otp,{SUFFIX}\nobjectClass: organizationalUnit\nou: otp\n"]
        for k in range(args.users):
            dn = f"uid=og{k},ou=otp,{SUFFIX}"
            ldif.append(f"dn: {dn}\nobjectClass: inetOrgPerson\nuid: og{k}\ncn: og{k}\nsn: og\n"
                        f"userPassword: pw{k}\n")
            og.append({"dn": dn, "password": f"pw{k}", "secret_hex": os.urandom(20).hex(), "counter": 0})
        ldapadd(slapd_port, "\n".join(ldif))
        (work / "og.json").write_text(json.dumps(og))
        subprocess.run([str(BIN / "otpgate"), "keygen", str(work / "keyring.json"), "--key-id", "bench"],
                       check=True, capture_output=True)
        listen = f"tcp:{proxy_port}:interface=127.0.0.1"
        config = work / "otpgate.toml"
        config.write_text(f"""
[directory]
profile = "openldap"
urls = ["ldap://127.0.0.1:{slapd_port}"]
base_dn = "{SUFFIX}"
bind_dn = "{ADMIN[0]}"
bind_password = "{ADMIN[1]}"
[vault]
keyring = "keyring.json"
[policy]
exempt_subtrees = ["ou=people,{SUFFIX}"]
[ldap_proxy]
listen = ["{listen}"]
processes = {args.processes}
[logging]
file = "otpgate.log"
""")
        subprocess.run([sys.executable, __file__, "--enroll", str(config), str(work / "og.json")],
                       check=True)
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

        runs = {"direct": load(slapd_port, work / "slapd" / "plain.json", "plain", args.conc,
                               args.secs, pids)}
        spy = profiled("pass")
        runs["pass"] = load(proxy_port, work / "slapd" / "plain.json", "plain", args.conc, args.secs,
                            pids)
        if spy is not None:
            spy.wait(timeout=120)
        runs["slapo-otp"] = load(slapd_port, work / "slapd" / "oath.json", "hotp", args.conc,
                                 args.secs, pids)
        spy = profiled("otpgate")
        runs["otpgate"] = load(proxy_port, work / "og.json", "hotp", args.conc, args.secs, pids)
        if spy is not None:
            spy.wait(timeout=120)
        result = {
            "users": args.users, "conc": args.conc, "secs": args.secs, "processes": args.processes,
            "runs": runs,
            "pass_vs_direct": round(runs["pass"]["rate"] / runs["direct"]["rate"], 3),
            "otpgate_vs_slapo_otp": round(runs["otpgate"]["rate"] / runs["slapo-otp"]["rate"], 3),
        }
        print(f"{'target':<10} {'binds/s':>9} {'fail':>6} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'slapd µs/bind':>14} {'otpgate µs/bind':>16}")
        for name, r in runs.items():
            ours = sum(v for k, v in r.items() if k.startswith("cpu_us_otpgate"))
            print(f"{name:<10} {r['rate']:>9.0f} {r['fail']:>6} {r['p50_ms']:>8} {r['p99_ms']:>8} "
                  f"{r['cpu_us_slapd']:>14} {ours:>16}")
        print(f"pass-through / direct : {result['pass_vs_direct']}")
        print(f"otpgate OTP / slapo-otp: {result['otpgate_vs_slapo_otp']}")
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
        pid = work / "slapd" / "slapd.pid"
        if pid.exists():
            os.kill(int(pid.read_text()), signal.SIGTERM)
            time.sleep(0.5)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--enroll"]:
        enroll(Path(sys.argv[2]), json.loads(Path(sys.argv[3]).read_text()))
    main()
