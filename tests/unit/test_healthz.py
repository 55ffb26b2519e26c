"""``/healthz``'s decision (otpgate/web/health.py) with stand-in pools on a Clock: ok only
when every pool answers in time and the replication guard lets OTP state be written, one
check at a time, answers reused for a second.
The real thing (slapd up, slapd stopped, through twistd) is in
tests/integration/test_load_balancer.py."""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.task import Clock

from otpgate.directory.replication_guard import UnpinnedMultiProvider
from otpgate.errors import DirectoryUnavailable
from otpgate.web.health import (
    DIRECTORY,
    HEALTH_TIMEOUT,
    KEEP_SECONDS,
    OK,
    OTP_STATE_REFUSED,
    HealthCheck,
)


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
    assert result(health.check()) == OK
    assert read.searches == [("dc=example,dc=org", ["1.1"], 0)] and len(write.searches) == 1
    assert not clock.getDelayedCalls()


def test_unavailable_when_the_state_server_is_down():
    clock = Clock()
    health = HealthCheck(clock, (Pool(), Pool(fail=True)), "dc=x")
    assert result(health.check()) == DIRECTORY


def test_unavailable_after_the_timeout_then_one_check_at_a_time():
    clock, pool = Clock(), Pool(hang=True)
    health = HealthCheck(clock, (pool,), "dc=x")
    first, second = health.check(), health.check()
    assert result(first) is None and len(pool.searches) == 1  # one probe for both
    clock.advance(HEALTH_TIMEOUT)
    assert result(first) == DIRECTORY and result(second) == DIRECTORY
    third = health.check()  # the probe still runs: no second probe
    assert len(pool.searches) == 1
    pool.pending[0].callback([])  # the directory answers at last
    assert result(third) == OK
    assert not clock.getDelayedCalls()


def test_answer_reused_for_a_second():
    clock, pool = Clock(), Pool()
    health = HealthCheck(clock, (pool,), "dc=x")
    for _ in range(50):
        assert result(health.check()) == OK
    assert len(pool.searches) == 1
    clock.advance(KEEP_SECONDS)
    pool.fail = True
    assert result(health.check()) == DIRECTORY and len(pool.searches) == 2


def test_a_clock_stepped_back_does_not_keep_an_old_answer():
    """With the wall clock stepped back an hour, a cached answer must not be reused until the
    clock catches up (a stale "unavailable", or a stale "ok" keeping a gateway UP)."""
    clock, pool = Clock(), Pool(fail=True)
    clock.advance(10_000)
    health = HealthCheck(clock, (pool,), "dc=x")
    assert result(health.check()) == DIRECTORY
    clock.rightNow -= 3600
    pool.fail = False
    assert result(health.check()) == OK and len(pool.searches) == 2



class Guard:
    """Stands in for the replication guard: its check raises while it refuses."""

    def __init__(self, refusing=False, active=True, fail=False):
        self.refusing, self.active, self.fail = refusing, active, fail
        self.checks = 0
        self.health_name = "replication guard"

    async def check(self):
        self.checks += 1
        if self.fail:
            raise DirectoryUnavailable("replication check: no directory server answered")
        if self.refusing:
            raise UnpinnedMultiProvider("OTP state refused: ...")


def test_unavailable_while_the_replication_guard_refuses_otp_state():
    """Unpinned on multi-provider replication every OTP login is refused: the balancer must
    take the gateway out, and see it back once the guard lets OTP state through again (the
    guard is asked on every check: its own recheck runs even with no logins coming)."""
    clock, pool, guard = Clock(), Pool(), Guard(refusing=True)
    health = HealthCheck(clock, (pool,), "dc=x", (guard,))
    assert result(health.check()) == OTP_STATE_REFUSED % "replication guard" and guard.checks == 1
    assert result(health.check()) == OTP_STATE_REFUSED % "replication guard" and guard.checks == 1  # kept a second
    guard.refusing = False
    clock.advance(KEEP_SECONDS)
    assert result(health.check()) == OK and guard.checks == 2
    guard.fail = True  # the guard could read no server: fail closed
    clock.advance(KEEP_SECONDS)
    assert result(health.check()) == DIRECTORY
    pool.fail, guard.fail, guard.refusing = True, False, True  # the directory first
    clock.advance(KEEP_SECONDS)
    assert result(health.check()) == DIRECTORY and guard.checks == 3


def test_an_inactive_guard_is_not_asked():
    clock, guard = Clock(), Guard(refusing=True, active=False)
    assert result(HealthCheck(clock, (Pool(),), "dc=x", (guard,)).check()) == OK
    assert guard.checks == 0
