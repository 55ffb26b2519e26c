#!/usr/bin/env python3
"""What the help desk's census page costs the gateway's process while it scans (loopback,
no server: the page's own cache over a real reactor).

Writes --lines JSON audit lines (about 250 bytes each: ~2,000 accounts, a few services
binding on a timer) into a temporary ``audit.log``, the older half as ``audit.log.1.gz``;
then, in one process with a running reactor (as in the gateway), asks the page's
``CensusCache`` for a view, which scans in a child process (``censusworker.py``), while a
LoopingCall
ticks every 10 ms on the reactor's thread.  Reports the scan's wall time, lines per second,
the reactor's lateness during the scan (median, 99th percentile, max: how long a login
arriving then would wait for the reactor; and the same for 2 s before it), the render time
of the page for the result, and the process's peak RSS.  Takes the integration-test lock for
its whole run.

usage: bench/census_page.py [--lines 1000000]   (at most 10,000,000)
Prints one JSON line and writes bench/results/census_page.json.
"""

from __future__ import annotations

import argparse
import fcntl
import gzip
import json
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
LOCK = Path("/tmp/otpgate-integration.lock")
MAX_LINES = 10_000_000
TICK = 0.010
IDLE_SECONDS = 2.0
"""Ticks measured before the scan: the reactor's lateness on this machine without it."""


def write_trail(log: Path, lines: int) -> None:
    rng = random.Random(7)
    start = time.time() - 30 * 86400
    step = 30 * 86400 / lines
    services = [f"uid=svc-job{i},ou=services,dc=example,dc=org" for i in range(5)]
    half = lines // 2

    def line(n: int) -> str:
        t = start + n * step
        if n % 50 == 0:
            dn, client, token = services[n // 50 % 5], f"192.0.2.{n // 50 % 5 + 10}", None
        else:
            who = rng.randrange(2000)
            dn = f"uid=user{who:04d},ou=people,dc=example,dc=org"
            client, token = f"198.51.{who % 200}.{rng.randrange(4)}", f"t{who:04d}"
        event = {"time": round(t, 3), "event": "auth", "outcome": "accept", "front_end": "ldap",
                 "user": dn.split(",")[0][4:], "dn": dn, "client": client, "token": token,
                 "reason": "otp ok", "channel": "apps", "policy": "otp", "enrolled": True}
        return json.dumps(event) + "\n"

    with gzip.open(log.with_name(log.name + ".1.gz"), "wt", compresslevel=1) as old:
        old.writelines(line(n) for n in range(half))
    with open(log, "w") as live:
        live.writelines(line(n) for n in range(half, lines))


def measure(log: Path) -> dict[str, Any]:
    from twisted.internet import defer, reactor, task

    from otpgate.web import render_census
    from otpgate.web.censuspage import CensusCache, child_process

    cache = CensusCache(reactor, child_process(reactor), log)
    late: list[float] = []
    idle: list[float] = []
    last = [time.monotonic()]

    def tick() -> None:
        now = time.monotonic()
        late.append(max(now - last[0] - TICK, 0.0))
        last[0] = now

    result: dict[str, Any] = {}

    async def run() -> None:
        ticker = task.LoopingCall(tick)
        ticker.start(TICK)
        await task.deferLater(reactor, IDLE_SECONDS, lambda: None)
        idle[:] = late[1:]
        late.clear()
        started = time.monotonic()
        own, child = cpu(resource.RUSAGE_SELF), cpu(resource.RUSAGE_CHILDREN)
        while (await cache.view(wait=0.2)) is None:
            pass
        result["scan_seconds"] = round(time.monotonic() - started, 2)
        result["gateway_cpu_seconds"] = round(cpu(resource.RUSAGE_SELF) - own, 2)
        result["worker_cpu_seconds"] = round(cpu(resource.RUSAGE_CHILDREN) - child, 2)
        ticker.stop()
        snap = cache.latest
        assert snap is not None and snap.error is None, snap
        t0 = time.monotonic()
        html = render_census.census_page(snap, "all", time.time())
        result["render_ms"] = round((time.monotonic() - t0) * 1000, 1)
        result["page_kb"] = round(len(html) / 1000)
        result["events"] = snap.events
        result["accounts"] = (snap.counts or {}).get("all", len(snap.rows))

    def stop(_: Any) -> None:
        reactor.stop()  # type: ignore[attr-defined]

    def go() -> None:
        d = defer.ensureDeferred(run())
        d.addErrback(lambda f: (f.printTraceback(), None)[1])
        d.addBoth(stop)

    reactor.callWhenRunning(go)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    result["reactor_late_ms_idle"] = lateness(idle)
    result["reactor_late_ms"] = lateness(late)
    return result


def cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def lateness(seconds: list[float]) -> dict[str, float]:
    ms = sorted(x * 1000 for x in seconds)
    return {
        "median": round(statistics.median(ms), 2),
        "p99": round(ms[int(len(ms) * 0.99)], 2),
        "max": round(ms[-1], 2),
        "ticks": len(ms),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    args = parser.parse_args()
    lines = min(max(args.lines, 1000), MAX_LINES)
    with open(LOCK, "a") as handle:
        print(f"waiting for {LOCK} ...", file=sys.stderr, flush=True)
        fcntl.flock(handle, fcntl.LOCK_EX)
        with tempfile.TemporaryDirectory() as tmp:
            log = Path(tmp) / "audit.log"
            write_trail(log, lines)
            size = sum(p.stat().st_size for p in Path(tmp).iterdir())
            result = {"lines": lines, "bytes_on_disk": size, **measure(log)}
    result["lines_per_second"] = round(lines / result["scan_seconds"])
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    result["worker_peak_rss_mb"] = round(
        resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    )
    print(json.dumps(result))
    out = ROOT / "bench" / "results" / "census_page.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
