"""``/healthz``'s decision (otpgate/web/health.py) with stand-in pools on a Clock: ok only
when every pool answers in time, one check at a time, answers reused for a second.
The real thing (slapd up, slapd stopped, through twistd) is in
tests/integration/test_load_balancer.py."""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.task import Clock

from otpgate.directory.ldapdata import DirectoryUnavailable
from otpgate.web.health import HEALTH_TIMEOUT, KEEP_SECONDS, HealthCheck


class Conn:
    def __init__(self, pool):
        self.pool = pool

    def search(self, base, filter_ber, attributes, scope):
        self.pool.searches.append((base, attributes, scope))
        if self.pool.fail:
            return defer.fail(DirectoryUnavailable("down"))
        d = defer.Deferred()
        self.pool.pending.append(d)
        if not self.pool.hang:
            d.callback([])
        return d


class Pool:
    def __init__(self, fail=False, hang=False):
        self.fail, self.hang = fail, hang
        self.searches, self.pending = [], []

    async def connection(self):
        return Conn(self)


def result(d):
    """The deferred's result so far (None while it has none); the result stays in ``d``."""
    out = []

    def keep(value):
        out.append(value)
        return value

    d.addBoth(keep)
    return out[0] if out else None


def test_ok_when_every_pool_answers():
    clock, read, write = Clock(), Pool(), Pool()
    health = HealthCheck(clock, (read, write), "dc=example,dc=org")
    assert result(health.check()) is True
    assert read.searches == [("dc=example,dc=org", ["1.1"], 0)] and len(write.searches) == 1
    assert not clock.getDelayedCalls()


def test_unavailable_when_the_state_server_is_down():
    clock = Clock()
    health = HealthCheck(clock, (Pool(), Pool(fail=True)), "dc=x")
    assert result(health.check()) is False


def test_unavailable_after_the_timeout_then_one_check_at_a_time():
    clock, pool = Clock(), Pool(hang=True)
    health = HealthCheck(clock, (pool,), "dc=x")
    first, second = health.check(), health.check()
    assert result(first) is None and len(pool.searches) == 1  # one probe for both
    clock.advance(HEALTH_TIMEOUT)
    assert result(first) is False and result(second) is False
    third = health.check()  # the probe still runs: no second probe
    assert len(pool.searches) == 1
    pool.pending[0].callback([])  # the directory answers at last
    assert result(third) is True
    assert not clock.getDelayedCalls()


def test_answer_reused_for_a_second():
    clock, pool = Clock(), Pool()
    health = HealthCheck(clock, (pool,), "dc=x")
    for _ in range(50):
        assert result(health.check()) is True
    assert len(pool.searches) == 1
    clock.advance(KEEP_SECONDS)
    pool.fail = True
    assert result(health.check()) is False and len(pool.searches) == 2


def test_a_clock_stepped_back_does_not_keep_an_old_answer():
    """Review finding: with the wall clock stepped back an hour, the cached answer was reused
    until the clock caught up (a stale "unavailable", or a stale "ok" keeping a gateway UP)."""
    clock, pool = Clock(), Pool(fail=True)
    clock.advance(10_000)
    health = HealthCheck(clock, (pool,), "dc=x")
    assert result(health.check()) is False
    clock.rightNow -= 3600
    pool.fail = False
    assert result(health.check()) is True and len(pool.searches) == 2
