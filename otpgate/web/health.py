"""``GET /healthz``: is this gateway able to log people in right now?

200 ``ok`` only when the directory answers a cheap read (a base-scope search of ``base_dn``
asking for no attributes) within ``HEALTH_TIMEOUT`` seconds, on the read servers *and* on
the server that holds OTP state (``write_url``, or the discovered PDC emulator: a gateway
that cannot write state fails every OTP login closed), and while the replication guard
(``directory/replication_guard.py``) and the state access guard (``state_acl_guard.py``) let
OTP state be written; 503 otherwise, with one of a few fixed reasons (``DIRECTORY``,
``OTP_STATE_REFUSED`` naming the guard).  The body says nothing else (no
server names, no errors): the check is unauthenticated, for load balancers.  An
unauthenticated endpoint must not become a way to load the directory, so at most one check
runs at a time and its answer is reused for ``KEEP_SECONDS``; the guards read the
servers at most as often as they would for logins (``RECHECK_SECONDS``).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from otpgate import ber
from otpgate.directory.guard import GuardRefusal, PeriodicGuard
from otpgate.directory.ldapdata import SCOPE_BASE
from otpgate.directory.pool import ServerPool
from otpgate.errors import DirectoryError

log = Logger()

HEALTH_TIMEOUT = 2.0
"""Seconds the directory has to answer before the gateway says it is unavailable."""
KEEP_SECONDS = 1.0
"""An answer is reused this long (HAProxy checks every 2 s by default)."""
OK = "ok"
DIRECTORY = "directory not answering"
"""A pool did not answer the read in time (or the guard could read no server)."""
OTP_STATE_REFUSED = "OTP state writes refused (%s)"
"""A guard refuses every OTP login: unpinned on multi-provider replication ("replication
guard"), or users who may write their own OTP state ("state access guard")."""
_ANY_OBJECT = ber.filter_present(b"objectClass")


class HealthCheck:
    def __init__(
        self,
        clock: Any,
        pools: tuple[ServerPool, ...],
        base_dn: str,
        guards: tuple[PeriodicGuard, ...] = (),
    ) -> None:
        self.clock = clock
        self.pools = pools
        self.base_dn = base_dn
        self.guards = guards
        self._answer: str | None = None
        self._at = 0.0
        self._running = False
        self._waiters: list[defer.Deferred[str]] = []

    def check(self) -> defer.Deferred[str]:
        """``OK``, or why not (at most ``HEALTH_TIMEOUT`` to wait)."""
        now = self.clock.seconds()
        # 0 <= ...: a wall clock stepped back must not keep an old answer.
        if self._answer is not None and 0 <= now - self._at < KEEP_SECONDS:
            return defer.succeed(self._answer)
        waiter: defer.Deferred[str] = defer.Deferred()
        self._waiters.append(waiter)
        timer = self.clock.callLater(HEALTH_TIMEOUT, self._late, waiter)
        waiter.addBoth(_cancel_timer, timer)
        if not self._running:
            self._running = True
            defer.ensureDeferred(self._probe()).addBoth(self._finished)
        return waiter

    def _late(self, waiter: defer.Deferred[str]) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)
            waiter.callback(DIRECTORY)

    async def _probe(self) -> str:
        for pool in self.pools:
            conn = await pool.connection()
            await conn.search(self.base_dn, _ANY_OBJECT, ["1.1"], scope=SCOPE_BASE)
        for guard in self.guards:
            if guard.active:
                # Its kept verdict, or a new probe once it is RECHECK_SECONDS old: a gateway
                # the balancer took out (no logins) still sees the directory change back.
                try:
                    await guard.check()
                except GuardRefusal:
                    return OTP_STATE_REFUSED % guard.health_name
        return OK

    def _finished(self, result: Any) -> None:
        answer = result if isinstance(result, str) else DIRECTORY
        if not isinstance(result, str):
            error = getattr(result, "value", result)
            if not isinstance(error, DirectoryError):
                log.failure("health check failed", result)
            else:
                log.info("health check: directory unavailable ({err})", err=error)
        self._running = False
        self._answer, self._at = answer, self.clock.seconds()
        waiting, self._waiters = self._waiters, []
        for waiter in waiting:
            waiter.callback(answer)


def _cancel_timer(result: Any, timer: Any) -> Any:
    if timer.active():
        timer.cancel()
    return result


def health_check(gateway: Any, clock: Any) -> HealthCheck:
    pools: tuple[ServerPool, ...] = (gateway.read_pool,)
    if gateway.write_pool is not gateway.read_pool:
        pools = (gateway.read_pool, gateway.write_pool)
    guards = (gateway.replication_guard, gateway.state_acl_guard)
    return HealthCheck(clock, pools, gateway.config.directory.base_dn, guards)
