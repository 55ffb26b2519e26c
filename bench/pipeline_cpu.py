#!/usr/bin/env python3
"""CPU per login of the pipeline alone: no network, no directory server, one process.

The pipeline, the state engine and the crypto run exactly as in the gateway, over the
in-memory directory of the unit tests (``tests/unit/memdir.py``), on Twisted's ``Clock``.
What it leaves out is what ``bench/ldap_proxy.py`` measures: sockets, BER, Deferreds of
real I/O, and the directory's own work.  Use it to compare code changes (A/B in one run);
quote the end-to-end numbers from the real benchmarks.

usage: bench/pipeline_cpu.py [--users 500] [--logins 20000] [--repeat 3]
Prints one JSON line: logins per round, cpu_us_per_login (process CPU, the fastest round: this
machine is shared and noisy), and every round's.

``--radius``: the whole RADIUS datagram path instead (decode, handler, pipeline, signed reply),
A/B in one run: each login alternates between a NAS without reply rules and one with the
VPN rules of docs/RADIUS.md (a group's VLAN, vendor attributes, group names as Class, a value
copied from the entry).  Both NASes' logins resolve the same entry with the same group
membership read (the store reads what any NAS's rules need), so the difference is the reply
step: the rules' evaluation and the encoding of what they add.  Reports µs per login of each
arm (the fastest round), the difference of the fastest rounds and the median of the
rounds' differences (use an odd --users: each user then logs in through both NASes).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=500)
    ap.add_argument("--logins", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=3, help="rounds; the fastest is reported")
    ap.add_argument("--radius", action="store_true", help="the RADIUS path, reply rules A/B")
    args = ap.parse_args()
    if args.radius:
        radius_reply_ab(args)
        return

    from twisted.internet import defer, task

    from otpgate.otp.oath import hotp
    from otpgate.tokens import TokenType
    from tests.unit.test_pipeline import PW, World, config

    result: dict[str, object] = {}

    async def run(_reactor: object) -> None:
        log = Path(tempfile.mkdtemp(prefix="otpgate-bench-")) / "audit.log"
        world = World(config("user", logging={"file": str(log)}))  # as the gateway runs
        world.auth.audit.start()
        keys = []
        for k in range(args.users):
            world.directory.add_user(f"u{k}", PW)
            keys.append(await world.oath(f"u{k}", TokenType.HOTP))
        counter = 0
        rounds = []
        for _round in range(args.repeat):
            names = [f"u{i % args.users}" for i in range(args.logins)]
            secrets = [
                PW + hotp(keys[i % args.users], counter + i // args.users)
                for i in range(args.logins)
            ]
            counter += -(-args.logins // args.users)
            world.directory.operations.clear()
            cpu = time.process_time()
            for name, secret in zip(names, secrets, strict=True):
                ok = await world.login(name, secret)
                if not ok.ok:
                    raise SystemExit(f"{name} refused: {ok.reason}")
                world.clock.advance(0.0001)
            rounds.append(round((time.process_time() - cpu) / args.logins * 1e6, 1))
        world.auth.audit.stop()
        ops = world.directory.operations
        result["directory_ops_per_login"] = {  # type: ignore[assignment]
            kind: round(ops.count(kind) / args.logins, 2) for kind in sorted(set(ops))
        }
        result["logins"] = args.logins
        result["cpu_us_per_login"] = min(rounds)
        result["rounds"] = rounds  # type: ignore[assignment]

    try:
        task.react(lambda reactor: defer.ensureDeferred(run(reactor)))
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    print(json.dumps(result))


RULES = [
    {"member_of": "cn=quarantine,ou=groups,dc=x",
     "attributes": {"Tunnel-Type:1": "VLAN", "Tunnel-Medium-Type:1": "IEEE-802",
                    "Tunnel-Private-Group-Id:1": "999"}},
    {"member_of": "cn=vpn staff,ou=groups,dc=x",
     "attributes": {"Tunnel-Type:1": "VLAN", "Tunnel-Medium-Type:1": "IEEE-802",
                    "Tunnel-Private-Group-Id:1": "10", "Cisco-AVPair": "shell:priv-lvl=15",
                    "Session-Timeout": 28800},
     "group_names": ["Class", "Fortinet-Group-Name"],
     "from_entry": {"Filter-Id": "departmentNumber"}},
    {"attributes": {"Tunnel-Type:1": "VLAN", "Tunnel-Medium-Type:1": "IEEE-802",
                    "Tunnel-Private-Group-Id:1": "20"}},
]


def radius_reply_ab(args: argparse.Namespace) -> None:
    import os
    from types import SimpleNamespace

    from pyrad import packet as pp
    from pyrad.dictionary import Dictionary
    from twisted.internet import defer, task

    from otpgate.otp.oath import hotp
    from otpgate.radius.server import RadiusServer
    from otpgate.stats import RadiusCounters
    from otpgate.tokens import TokenType
    from tests.unit.test_pipeline import PW, World, config

    secret = b"bench-radius-secret-0123456789"
    arms = {"plain": ("192.0.2.1", 1812), "reply": ("192.0.2.2", 1812)}
    clients = [{"address": arms["plain"][0], "secret": secret.decode()},
               {"address": arms["reply"][0], "secret": secret.decode(), "reply": RULES,
                "accept_message": "Welcome to the VPN"}]
    result: dict[str, object] = {}

    async def run(_reactor: object) -> None:
        log = Path(tempfile.mkdtemp(prefix="otpgate-bench-")) / "audit.log"
        world = World(config("user", logging={"file": str(log)}, radius={"clients": clients}))
        world.auth.audit.start()
        names = [f"u{k}" for k in range(args.users)]
        dns = [world.directory.add_user(n, PW, departmentNumber=["Sales"]) for n in names]
        world.directory.add_group("cn=vpn staff,ou=groups,dc=x", dns)
        world.directory.add_group("cn=quarantine,ou=groups,dc=x", [])
        keys = [await world.oath(n, TokenType.HOTP) for n in names]
        gateway = SimpleNamespace(config=world.config, authenticator=world.auth,
                                  check_password=world.directory.check_password,
                                  radius_counters=RadiusCounters())
        server = RadiusServer(gateway, world.clock)
        sent: list[bytes] = []
        cpu = {arm: [] for arm in arms}  # type: dict[str, list[float]]
        counter = 0
        for _round in range(args.repeat):
            spent = dict.fromkeys(arms, 0.0)
            for i in range(args.logins):
                arm = "plain" if i % 2 == 0 else "reply"
                k = i % args.users
                pkt = pp.AuthPacket(id=i % 256, secret=secret, dict=Dictionary())
                pkt.authenticator = os.urandom(16)
                pkt[1] = [names[k].encode()]
                pkt[2] = [pkt.PwCrypt(PW + hotp(keys[k], counter + i // args.users))]
                pkt.add_message_authenticator()
                raw = pkt.RequestPacket()
                start = time.process_time()
                server.datagram(raw, arms[arm], lambda data, _addr: sent.append(data))
                spent[arm] += time.process_time() - start
                if sent[-1][0] != pp.AccessAccept:
                    raise SystemExit(f"{names[k]} refused through the {arm} NAS")
                world.clock.advance(0.0001)
            counter += -(-args.logins // args.users)
            for arm in arms:
                cpu[arm].append(round(spent[arm] / (args.logins / 2) * 1e6, 1))
        world.auth.audit.stop()
        last = pp.AuthPacket(packet=sent[-1], secret=secret, dict=Dictionary())
        result["logins_per_arm_per_round"] = args.logins // 2
        result["reply_attributes_in_an_accept"] = sum(len(v) for v in last.values())
        for arm in arms:
            result[f"cpu_us_per_login_{arm}"] = min(cpu[arm])
            result[f"rounds_{arm}"] = cpu[arm]
        rounds = [round(r - p, 1) for r, p in zip(cpu["reply"], cpu["plain"], strict=True)]
        result["reply_step_us"] = round(min(cpu["reply"]) - min(cpu["plain"]), 1)
        result["reply_step_us_median_round"] = statistics.median(rounds)
        result["reply_step_us_rounds"] = rounds

    try:
        task.react(lambda reactor: defer.ensureDeferred(run(reactor)))
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    print(json.dumps(result))


if __name__ == "__main__":
    main()
