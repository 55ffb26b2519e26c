#!/usr/bin/env python3
"""Scale-out benchmark: OTP logins/s of one and of two gateways behind HAProxy, same directory.

  direct     HOTP binds straight to gateway 1 (no balancer; the reference)
  haproxy-1  the same through HAProxy (TCP mode, send-proxy-v2) with gateway 1 only
  haproxy-2  through HAProxy with gateways 1 and 2 (round robin)

Same load client (../shared/bench/ldapbind_load.py --mode hotp), concurrency and users for
every target; each row carries the CPU µs per login of every process (slapd, each gateway,
HAProxy, the client) and names the busiest.  On a machine with few cores the parts compete
for them: read the CPU per login, not only the rate.  Uses ../shared/bench/anchor_slapd.sh
(the anchor slapd) and tests/servers/haproxy.py (the same HAProxy configuration the tests
use).  Bounded: each target runs --secs seconds.  Writes bench/results/scale_out.json.
usage: scripts/bench scale_out.py [--users 400] [--conc 16] [--secs 8]
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
    add_otpgate_users,
    directory_sections,
    enroll,
    free_tcp_port,
    ldap_load,
    start_anchor,
    stop_anchor,
)
from bench.ldap_proxy import wait_port  # noqa: E402
from tests.servers.haproxy import HAProxy  # noqa: E402

BALANCER = "127.0.0.2"  # HAProxy connects to the gateways from here; the client from 127.0.0.1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=400)
    parser.add_argument("--conc", type=int, default=16)
    parser.add_argument("--secs", type=float, default=8.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="otpgate-scale-"))
    gateways: list[subprocess.Popen] = []
    results: dict[str, dict] = {}
    try:
        slapd_port = free_tcp_port()
        slapd_pid = start_anchor(work / "slapd", slapd_port, 10)
        add_otpgate_users(work, slapd_port, args.users)
        sections = directory_sections(work, slapd_port)
        ports = [free_tcp_port(), free_tcp_port()]
        configs = []
        for i, port in enumerate(ports, 1):
            config = work / f"gw{i}.toml"
            config.write_text(sections + f"""
[ldap_proxy]
listen = ["tcp:{port}:interface=127.0.0.1"]
proxy_protocol_from = ["{BALANCER}/32"]
""")
            configs.append(config)
        enroll(configs[0], work / "og.json")
        for i, config in enumerate(configs, 1):
            gateways.append(subprocess.Popen(
                [str(BIN / "twistd"), "-n", "--pidfile=", "--logfile",
                 str(work / f"gw{i}.log"), "otpgate", "--config", str(config)], cwd=work))
        for port in ports:
            wait_port(port)
        pids = {"slapd": slapd_pid, "gw1": gateways[0].pid, "gw2": gateways[1].pid}

        def run(name: str, port: int, extra: dict[str, int]) -> None:
            result = ldap_load(port, work / "og.json", "hotp", args.conc, args.secs,
                               {**pids, **extra})
            results[name] = result
            print(f"{name:10} {json.dumps(result)}", flush=True)

        run("direct", ports[0], {})
        for name, servers in (("haproxy-1", {"gw1": ports[0]}),
                              ("haproxy-2", {"gw1": ports[0], "gw2": ports[1]})):
            haproxy = HAProxy(work / name, free_tcp_port(), servers, check_ms=1000,
                              source=BALANCER)
            haproxy.start()
            try:
                haproxy.wait_status(dict.fromkeys(servers, "UP"))
                assert haproxy.proc is not None
                run(name, haproxy.port, {"haproxy": haproxy.proc.pid})
            finally:
                haproxy.stop()
    finally:
        for proc in gateways:
            proc.send_signal(signal.SIGTERM)
        for proc in gateways:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        stop_anchor(work / "slapd")
        time.sleep(0.5)
        shutil.rmtree(work, ignore_errors=True)
    report(results)


def report(results: dict[str, dict]) -> None:
    parts = ("slapd", "gw1", "gw2", "haproxy", "client")
    print(f"\n{'target':10} {'logins/s':>9} {'fail':>5} {'p99 ms':>7}  "
          + " ".join(f"{p + ' µs':>11}" for p in parts) + "  busiest")
    for name, r in results.items():
        cpu = {p: r.get(f"cpu_us_{p}") for p in parts}
        busiest = max((p for p in parts if cpu[p] is not None), key=lambda p: cpu[p] or 0)
        print(f"{name:10} {r['rate']:>9} {r['fail']:>5} {r['p99_ms']:>7}  "
              + " ".join(f"{'-' if cpu[p] is None else cpu[p]:>11}" for p in parts)
              + f"  {busiest}")
    one, two = results.get("haproxy-1"), results.get("haproxy-2")
    if one and two and one["rate"]:
        print(f"\ntwo gateways / one gateway behind HAProxy: {two['rate'] / one['rate']:.2f}x")
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "scale_out.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
