"""The RADIUS front end's pure state: duplicate cache, challenge States, rate limits, clients."""

import ipaddress

import pytest

from otpgate.config import RadiusClient
from otpgate.radius.challenge import ChallengeStore
from otpgate.radius.clients import ClientTable
from otpgate.radius.dedup import DuplicateCache, Pending
from otpgate.radius.ratelimit import RateLimiter

KEY = ("192.0.2.1", 1812, 7, b"a" * 16)


def test_duplicate_cache_lifecycle():
    cache = DuplicateCache(lifetime=30, max_entries=10)
    assert cache.begin(KEY, 0) is Pending.NEW
    assert cache.begin(KEY, 1) is Pending.IN_FLIGHT
    cache.finish(KEY, b"reply", 2)
    assert cache.begin(KEY, 20) == b"reply"
    assert cache.begin(KEY, 31.9) == b"reply"  # lifetime counts from the reply
    assert cache.begin(KEY, 32) is Pending.NEW  # expired: a new request
    cache.finish(KEY, None, 33)  # nothing sent: forgotten
    assert cache.begin(KEY, 34) is Pending.NEW


def test_duplicate_cache_key_parts_and_capacity():
    cache = DuplicateCache(lifetime=30, max_entries=3)
    keys = [("192.0.2.1", 1812, 7, b"a" * 16), ("192.0.2.1", 1813, 7, b"a" * 16),
            ("192.0.2.1", 1812, 8, b"a" * 16), ("192.0.2.1", 1812, 7, b"b" * 16)]
    for k in keys:
        assert cache.begin(k, 0) is Pending.NEW
        cache.finish(k, repr(k).encode(), 0)
    assert len(cache) == 3  # the oldest went
    assert cache.begin(keys[0], 1) is Pending.NEW
    assert cache.begin(keys[3], 1) == repr(keys[3]).encode()


def test_duplicate_cache_validation():
    with pytest.raises(ValueError):
        DuplicateCache(0, 1)


def test_challenge_states():
    store = ChallengeStore(timeout=60, max_pending=100)
    s1 = store.issue("alice", "uid=alice", "192.0.2.1", 0)
    s2 = store.issue("alice", "uid=alice", "192.0.2.1", 0)
    assert len(s1) == 16 and s1 != s2
    found = store.take(s1, "alice", "192.0.2.1", 10)
    assert found is not None and found.dn == "uid=alice"
    assert store.take(s1, "alice", "192.0.2.1", 10) is None  # single use
    assert store.take(s2, "bob", "192.0.2.1", 10) is None  # another user: refused ...
    assert store.take(s2, "alice", "192.0.2.1", 10) is None  # ... and spent
    s3 = store.issue("alice", "uid=alice", "192.0.2.1", 0)
    assert store.take(s3, "alice", "192.0.2.2", 10) is None  # another NAS
    s4 = store.issue("alice", "uid=alice", "192.0.2.1", 0)
    assert store.take(s4, "alice", "192.0.2.1", 60) is None  # expired
    assert store.take(b"short", "alice", "192.0.2.1", 0) is None
    assert len(store) == 0


def test_challenge_store_capacity():
    store = ChallengeStore(timeout=60, max_pending=2)
    states = [store.issue("u", "dn", "c", i) for i in range(3)]
    assert len(store) == 2
    assert store.take(states[0], "u", "c", 3) is None
    assert store.take(states[2], "u", "c", 3) is not None


def test_rate_limiter():
    limiter = RateLimiter(rate=2, burst=3)
    assert [limiter.allow("a", 0) for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("b", 0)
    assert not limiter.allow("a", 0.4)
    assert limiter.allow("a", 0.5)
    assert RateLimiter(0, 0).allow("x", 0)  # no limit
    default = RateLimiter(rate=50, burst=0)  # burst 0: a second's worth at once
    assert sum(default.allow("nas", 0.0) for _ in range(60)) == 50
    slow = RateLimiter(rate=0.5, burst=0)
    assert sum(slow.allow("nas", 0.0) for _ in range(3)) == 1
    small = RateLimiter(rate=1, burst=1, max_sources=2)
    for i, src in enumerate("xyz"):
        assert small.allow(src, i * 10)


def client(network, name=""):
    return RadiusClient(ipaddress.ip_network(network), b"s" * 16, name=name)


def test_client_table_most_specific_and_mapped():
    table = ClientTable([client("10.0.0.0/8", "wide"), client("10.1.2.3/32", "exact"),
                         client("2001:db8::/32", "v6")])
    assert table.match("10.1.2.3").name == "exact"
    assert table.match("10.9.9.9").name == "wide"
    assert table.match("::ffff:10.1.2.3").name == "exact"
    assert table.match("2001:db8::1").name == "v6"
    assert table.match("192.0.2.1") is None
    assert table.match("not-an-ip") is None
