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
"""

from __future__ import annotations

import argparse
import json
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
    args = ap.parse_args()

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


if __name__ == "__main__":
    main()
