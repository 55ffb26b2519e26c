"""The cost of the HOTP search over 100,000 counters (claiming a token, resynchronising it),
and whether it depends on where, or whether, the codes match.

    .venv/bin/python bench/hotp_search.py [--runs 7]

Bounded: a few seconds of CPU in one process, no I/O.  Reports, per case, the fastest and
the median run in µs: the first codes of the window, the last ones, codes that match
nowhere (the worst case, and every failed claim), and the older way (``hmac.digest`` and a
string per counter) for comparison; then µs per counter.
"""

from __future__ import annotations

import argparse
import hmac
import os
import statistics
import time
from collections.abc import Callable

from otpgate.otp.oath import RESYNC_WINDOW, Algorithm, find_consecutive, hotp


def per_counter_hmac(key: bytes, codes: list[str], last: int) -> int | None:
    """The search as it was: ``hotp`` (``hmac.digest``, a string) for every counter."""
    start = last + 1
    window = [hotp(key, c).encode() for c in range(start, start + RESYNC_WINDOW + 2)]
    first, second, third = (c.encode() for c in codes)
    found = None
    for i in range(RESYNC_WINDOW):
        hit = (
            hmac.compare_digest(window[i], first)
            & hmac.compare_digest(window[i + 1], second)
            & hmac.compare_digest(window[i + 2], third)
        )
        if hit and found is None:
            found = start + i
    return found


def timed(run: Callable[[], object], runs: int) -> tuple[float, float]:
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - started)
    return min(seconds) * 1e6, statistics.median(seconds) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    runs = max(1, min(args.runs, 50))
    key = os.urandom(20)
    first = [hotp(key, c) for c in range(0, 3)]
    last = [hotp(key, c) for c in range(RESYNC_WINDOW - 1, RESYNC_WINDOW + 2)]
    nowhere = ["000000", "000000", "000000"]
    cases: list[tuple[str, Callable[[], object]]] = [
        ("match at the first counter", lambda: find_consecutive(key, first, -1)),
        ("match at the last counter", lambda: find_consecutive(key, last, -1)),
        ("no match (worst case)", lambda: find_consecutive(key, nowhere, -1)),
        ("no match, SHA-256 key", lambda: find_consecutive(
            os.urandom(32), nowhere, -1, algorithm=Algorithm.SHA256)),
        ("no match, hmac.digest per counter", lambda: per_counter_hmac(key, nowhere, -1)),
    ]  # fmt: skip
    print(f"HOTP search, {RESYNC_WINDOW} counters, {runs} runs each (µs: fastest / median)")
    for name, run in cases:
        fastest, median = timed(run, runs)
        print(f"  {name:36} {fastest:10.0f} {median:10.0f}   {median / RESYNC_WINDOW:.2f} µs/counter")


if __name__ == "__main__":
    main()
