"""Per-NAS request rate limit: a token bucket per source address.  Pure (the caller passes time)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """``rate`` requests per second with bursts of ``burst`` (0: the rate, at least 1);
    rate 0 means no limit."""

    def __init__(self, rate: float, burst: float, max_sources: int = 65536) -> None:
        if rate < 0 or burst < 0:
            raise ValueError("rate and burst must be 0 or more")
        self.rate = rate
        self.burst = max(burst or rate, 1.0) if rate else 0.0
        self.max_sources = max_sources
        self._buckets: dict[str, _Bucket] = {}

    def allow(self, source: str, now: float) -> bool:
        if not self.rate:
            return True
        bucket = self._buckets.get(source)
        if bucket is None:
            if len(self._buckets) >= self.max_sources:
                self._forget_full(now)
            bucket = self._buckets[source] = _Bucket(self.burst, now)
        else:
            elapsed = max(0.0, now - bucket.updated)
            bucket.tokens = min(self.burst, bucket.tokens + elapsed * self.rate)
            bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return True
        return False

    def _forget_full(self, now: float) -> None:
        """Drop buckets that have refilled: forgetting them changes nothing."""
        full = [
            source
            for source, b in self._buckets.items()
            if b.tokens + (now - b.updated) * self.rate >= self.burst
        ]
        for source in full:
            del self._buckets[source]
        if len(self._buckets) >= self.max_sources:
            self._buckets.clear()
