"""Service-account connections to the directory, with failover across URLs.

LDAP lets many operations be outstanding on one connection (message ids), so
a pool of a few connections carries any number of concurrent requests.  A
dead connection is dropped and replaced on the next request, trying the URLs
in their configured order.

A pool with ``verify`` (the OTP-state pool on AD: the server must hold the PDC emulator
role) checks every new connection, and with ``recheck`` again before handing out a
connection whose last check is older than that: a server can lose what made it the right
one while it stays up (the role moves to another DC).  A connection that fails its check
is never used again: the pool closes all its connections, runs ``discover`` again and
opens a new one (failing closed if that cannot be done).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from otpgate.directory.connection import LdapConnection, TlsSettings, connect
from otpgate.directory.ldapdata import SUCCESS, LdapUrl
from otpgate.errors import DirectoryError, DirectoryUnavailable
from otpgate.stats import DirectoryStats

log = Logger()


class ServerPool:
    def __init__(
        self,
        reactor: Any,
        urls: Sequence[str],
        tls: TlsSettings,
        bind_dn: str,
        bind_password: str,
        timeout: float,
        size: int = 2,
        discover: Callable[[], Awaitable[list[str]]] | None = None,
        stats: DirectoryStats | None = None,
        verify: Callable[[LdapConnection], Awaitable[None]] | None = None,
        recheck: float = 0.0,
    ) -> None:
        """``discover``, if given, finds the URLs on first use (e.g. AD's PDC emulator);
        ``verify``, if given, checks every new bound connection (e.g. that it reached the
        PDC emulator itself); when it fails, the connection is closed, nothing is sent on
        it, and discovery runs again for the next one; ``recheck`` (seconds, 0: never) runs
        ``verify`` again on a connection last checked that long ago before handing it out.
        ``stats`` counts the traffic of every connection opened here."""
        if not urls:
            raise ValueError("a server pool needs at least one URL")
        self.reactor = reactor
        self.urls = [LdapUrl.parse(u) for u in urls]
        self.tls = tls
        self.bind_dn = bind_dn
        self._password = bind_password.encode()
        self.timeout = timeout
        self.size = size
        self._connections: list[LdapConnection] = []
        self._opening = 0
        self._waiters: list[defer.Deferred[LdapConnection]] = []
        self._next = 0
        self._discover = discover
        self._rediscover = discover
        self._verify = verify
        self.recheck = recheck
        self._checked_at: dict[LdapConnection, float] = {}
        """When each connection last passed ``verify``."""
        self._checks: dict[LdapConnection, list[defer.Deferred[bool]]] = {}
        """Connections being checked again, with the callers waiting for the verdict."""
        self.stats = stats if stats is not None else DirectoryStats()

    async def open_connection(self, bind: bool = True) -> LdapConnection:
        """A new connection to the first URL that answers (bound as the service account)."""
        if self._discover is not None:
            # Until discovery succeeds nothing is written anywhere else: fail closed.
            self.urls = [LdapUrl.parse(u) for u in await self._discover()]
            self._discover = None
        errors: list[str] = []
        for url in self.urls:
            try:
                conn = await connect(self.reactor, url, self.tls, self.timeout, self.stats)
            except DirectoryError as exc:
                errors.append(str(exc))
                continue
            if bind:
                await self._bind(conn, url)
                if self._verify is not None:
                    try:
                        await self._verify(conn)
                    except BaseException:
                        conn.close()
                        self._discover = self._rediscover  # e.g. the role moved: ask again
                        raise
                    self._checked_at[conn] = self.reactor.seconds()
            return conn
        raise DirectoryUnavailable("no directory server answered: " + "; ".join(errors))

    async def open_to(self, url: LdapUrl) -> LdapConnection:
        """A new service-account connection to this one server (no failover)."""
        conn = await connect(self.reactor, url, self.tls, self.timeout, self.stats)
        await self._bind(conn, url)
        return conn

    async def _bind(self, conn: LdapConnection, url: LdapUrl) -> None:
        code, message = await conn.simple_bind(self.bind_dn, self._password)
        if code != SUCCESS:
            conn.close()
            self.stats.error("service bind")
            raise DirectoryError(
                f"{url.url}: service account bind as {self.bind_dn} failed: {code} {message}",
                code,
            )

    async def connection(self) -> LdapConnection:
        """A service-account connection, checked within ``recheck`` seconds if the pool
        has ``verify``: a connection whose server fails the check again is closed with all
        the others, and a new one (discovered and checked) is handed out instead."""
        conns = self._connections
        if self._verify is None and len(conns) >= self.size and all(c.connected for c in conns):
            # The steady state with nothing to check (every login asks, several times):
            # round robin without another coroutine.
            self._next = (self._next + 1) % len(conns)
            return conns[self._next]
        conn = await self._any_connection()
        if not self._due(conn) or await self._still_good(conn):
            return conn
        return await self._any_connection()  # the pool was emptied: discovery runs again

    def _due(self, conn: LdapConnection) -> bool:
        if self._verify is None or self.recheck <= 0:
            return False
        checked = self._checked_at.get(conn)
        return checked is None or self.reactor.seconds() - checked >= self.recheck

    async def _still_good(self, conn: LdapConnection) -> bool:
        """Run ``verify`` on ``conn`` again (one check at a time per connection; callers
        that arrive meanwhile share its verdict).  True: keep using it.  False: its server
        answered and failed the check; every connection is closed and discovery will run
        again.  A check that lost its connection raises (the server is not there)."""
        assert self._verify is not None
        waiting = self._checks.get(conn)
        if waiting is not None:
            verdict: defer.Deferred[bool] = defer.Deferred()
            waiting.append(verdict)
            return await verdict
        self._checks[conn] = waiting = []
        try:
            await self._verify(conn)
        except Exception as exc:
            del self._checks[conn]
            answered = conn.connected
            log.warn(
                "write server check failed: {error}; its connections are closed and the "
                "server is looked for again",
                error=exc,
            )
            self.close()
            self._discover = self._rediscover
            for w in waiting:
                if answered:
                    w.callback(False)
                else:
                    w.errback(exc)
            if answered:
                return False
            raise
        del self._checks[conn]
        self._checked_at[conn] = self.reactor.seconds()
        for w in waiting:
            w.callback(True)
        return True

    async def _any_connection(self) -> LdapConnection:
        """A service-account connection, round robin over at most ``size`` of them.

        Callers that arrive while the pool is still opening its connections wait for
        those rather than opening their own (a burst of logins on a cold pool opens at most
        ``size`` connections); if opening fails, they fail with it (fail closed).
        """
        if not all(c.connected for c in self._connections):
            self._connections = [c for c in self._connections if c.connected]
            kept = self._checked_at
            self._checked_at = {c: kept[c] for c in self._connections if c in kept}
        if len(self._connections) + self._opening < self.size:
            self._opening += 1
            try:
                conn = await self.open_connection()
            except BaseException as exc:
                self._opening -= 1
                waiting, self._waiters = self._waiters, []
                for w in waiting:
                    w.errback(exc)
                raise
            self._opening -= 1
            self._connections.append(conn)
            waiting, self._waiters = self._waiters, []
            for w in waiting:
                w.callback(conn)
            return conn
        if not self._connections:
            waiter: defer.Deferred[LdapConnection] = defer.Deferred()
            self._waiters.append(waiter)
            return await waiter
        self._next = (self._next + 1) % len(self._connections)
        return self._connections[self._next]

    def close(self) -> None:
        for conn in self._connections:
            conn.close()
        self._connections = []
        self._checked_at = {}
