"""What the gateway counts while it runs: directory traffic and RADIUS packets.

Plain integers and fixed-bucket histograms updated on the hot path (two clock reads and
a bisect per directory operation); ``otpgate.web.metrics`` reads them when /metrics is
scraped.  Nothing here knows about Prometheus, and nothing here does I/O.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from dataclasses import asdict, dataclass, field

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""Upper bounds in seconds; a last, unbounded bucket catches the rest."""


@dataclass
class Latency:
    """A histogram of durations over LATENCY_BUCKETS (per-bucket counts, not cumulative)."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)


class DirectoryStats:
    """The gateway's own directory operations: latency by operation, errors, CAS conflicts."""

    def __init__(self) -> None:
        self.latency: dict[str, Latency] = {}
        self.errors: Counter[str] = Counter()
        self.cas_conflicts = 0

    def observe(self, operation: str, seconds: float) -> None:
        latency = self.latency.get(operation)
        if latency is None:
            latency = self.latency[operation] = Latency()
        latency.observe(seconds)

    def error(self, kind: str) -> None:
        self.errors[kind] += 1


@dataclass
class RadiusCounters:
    received: int = 0
    accepted: int = 0
    rejected: int = 0
    challenged: int = 0
    status_server: int = 0
    no_reply_unavailable: int = 0
    dropped_unknown_client: int = 0
    dropped_malformed: int = 0
    dropped_unsupported_code: int = 0
    dropped_bad_authenticator: int = 0
    dropped_missing_authenticator: int = 0
    dropped_rate_limited: int = 0
    duplicates_answered: int = 0
    duplicates_in_flight: int = 0
    failover_retransmissions: int = 0
    """Accepts of a request another gateway had accepted (``failover_replay_seconds``)."""
    errors: int = 0

    def snapshot(self) -> dict[str, int]:
        return asdict(self)

    def drops(self) -> dict[str, int]:
        """Dropped packets by reason (the ``dropped_`` counters without their prefix)."""
        return {
            name.removeprefix("dropped_"): value
            for name, value in self.snapshot().items()
            if name.startswith("dropped_")
        }
