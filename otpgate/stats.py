"""What the gateway counts while it runs: directory traffic and RADIUS packets.

Plain integers and fixed-bucket histograms updated on the hot path (two clock reads and
a bisect per directory operation); ``otpgate.web.metrics`` reads them when /metrics is
scraped.  Nothing here knows about Prometheus, and nothing here does I/O.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

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

    # -- across processes (``otpgate.procstats``): plain JSON, summed by the main process --

    def to_dict(self) -> dict[str, Any]:
        return {
            "latency": {op: [h.counts, h.total] for op, h in self.latency.items()},
            "errors": dict(self.errors),
            "cas_conflicts": self.cas_conflicts,
        }

    def add(self, doc: Mapping[str, Any]) -> None:
        """Add another process's ``to_dict`` (ValueError if it is not one)."""
        latency = _mapping(doc.get("latency"), "latency")
        for op, value in latency.items():
            if not (isinstance(value, list) and len(value) == 2):
                raise ValueError(f"latency.{op}: expected [counts, total]")
            counts, total = value
            if not isinstance(counts, list) or len(counts) != len(LATENCY_BUCKETS) + 1:
                raise ValueError(f"latency.{op}: expected {len(LATENCY_BUCKETS) + 1} buckets")
            mine = self.latency.get(str(op))
            if mine is None:
                mine = self.latency[str(op)] = Latency()
            added = zip(mine.counts, counts, strict=True)
            mine.counts = [a + _count(b, "latency") for a, b in added]
            mine.total += _number(total, "latency total")
        for kind, count in _mapping(doc.get("errors"), "errors").items():
            self.errors[str(kind)] += _count(count, "errors")
        self.cas_conflicts += _count(doc.get("cas_conflicts", 0), "cas_conflicts")


class AuthCounts:
    """Audit events counted by bounded label values (``otpgate.web.metrics`` decides the
    labels and fills this): plain counters, so that every process can count and the main
    process can sum them for /metrics."""

    def __init__(self) -> None:
        self.auth: Counter[tuple[str, str]] = Counter()
        """(front end, outcome)"""
        self.rejections: Counter[tuple[str, str]] = Counter()
        """(front end, reason class)"""
        self.lockouts = 0
        self.web_actions: Counter[str] = Counter()
        self.sends: Counter[tuple[str, str]] = Counter()
        """(channel, outcome) of codes sent by e-mail/SMS"""
        self.apps: Counter[tuple[str, str]] = Counter()
        """(front end, outcome) of logins with an app password (also in ``auth``)"""

    @property
    def total(self) -> int:
        """Every authentication event counted (accepts, rejects, challenges)."""
        return sum(self.auth.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "auth": [[f, o, n] for (f, o), n in self.auth.items()],
            "rejections": [[f, r, n] for (f, r), n in self.rejections.items()],
            "lockouts": self.lockouts,
            "web_actions": dict(self.web_actions),
            "sends": [[c, o, n] for (c, o), n in self.sends.items()],
            "apps": [[f, o, n] for (f, o), n in self.apps.items()],
        }

    def add(self, doc: Mapping[str, Any]) -> None:
        """Add another process's ``to_dict`` (ValueError if it is not one)."""
        pairs = (
            ("auth", self.auth),
            ("rejections", self.rejections),
            ("sends", self.sends),
            ("apps", self.apps),
        )
        for name, target in pairs:
            rows = doc.get(name, [])
            if not isinstance(rows, list):
                raise ValueError(f"{name}: expected a list")
            for row in rows:
                if not (isinstance(row, list) and len(row) == 3):
                    raise ValueError(f"{name}: expected [label, label, count] rows")
                target[(str(row[0]), str(row[1]))] += _count(row[2], name)
        self.lockouts += _count(doc.get("lockouts", 0), "lockouts")
        for action, count in _mapping(doc.get("web_actions"), "web_actions").items():
            self.web_actions[str(action)] += _count(count, "web_actions")


def _mapping(value: Any, what: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{what}: expected an object")
    return value


def _count(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{what}: expected a count")
    return value


def _number(value: Any, what: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{what}: expected a number")
    return float(value)


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
