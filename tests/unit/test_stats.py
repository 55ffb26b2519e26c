"""The gateway's counters: histogram buckets and RADIUS drop reasons."""

from otpgate.stats import LATENCY_BUCKETS, DirectoryStats, Latency, RadiusCounters


def test_latency_buckets_are_upper_bounds_with_an_overflow_bucket():
    h = Latency()
    for seconds in (0.0, 0.0005, 0.0006, 5.0, 99.0):
        h.observe(seconds)
    assert len(h.counts) == len(LATENCY_BUCKETS) + 1
    assert h.counts[0] == 2 and h.counts[1] == 1  # le=0.0005 is inclusive
    assert h.counts[LATENCY_BUCKETS.index(5.0)] == 1 and h.counts[-1] == 1
    assert h.count == 5 and abs(h.total - 104.0011) < 1e-9


def test_directory_stats_per_operation_and_errors():
    s = DirectoryStats()
    s.observe("bind", 0.01)
    s.observe("bind", 0.02)
    s.error("timeout")
    s.error("timeout")
    assert s.latency["bind"].count == 2 and "search" not in s.latency
    assert s.errors == {"timeout": 2}


def test_radius_drops_are_the_dropped_counters_by_reason():
    c = RadiusCounters(received=4, accepted=1, dropped_malformed=2, dropped_rate_limited=1)
    drops = c.drops()
    assert drops["malformed"] == 2 and drops["rate_limited"] == 1
    assert "accepted" not in drops and set(drops) == {
        "unknown_client", "malformed", "unsupported_code", "bad_authenticator",
        "missing_authenticator", "rate_limited",
    }
