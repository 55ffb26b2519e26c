"""Users' password binds on a few reused directory connections.

``Gateway.check_password`` opens a new connection for every bind (TCP, maybe
TLS, then close): at RADIUS rates that setup costs more than the bind itself,
on both sides.  LDAP lets a connection bind again and again (RFC 4511 §4.2), so
this pool keeps up to ``size`` connections, each doing one bind at a time; a
request waits for a free one.  The connections are used for nothing but user
binds, so the identity left on one by a bind is never used for anything.

A reused connection that the server has closed meanwhile (idle timeout) fails
on its first write; that bind is retried once on a new connection.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol

from twisted.internet import defer

from otpgate.errors import DirectoryUnavailable


class BindConnection(Protocol):
    @property
    def connected(self) -> bool: ...

    def close(self) -> None: ...

    async def simple_bind(self, dn: str, password: bytes) -> tuple[int, str]: ...


class BindPool:
    def __init__(self, open_connection: Callable[[], Awaitable[BindConnection]], size: int) -> None:
        if size < 1:
            raise ValueError("a bind pool needs at least one connection")
        self._open_connection = open_connection
        self.size = size
        self._idle: list[BindConnection] = []
        self._count = 0
        """Connections open or being opened, idle or in use."""
        self._waiters: deque[defer.Deferred[BindConnection | None]] = deque()
        self._closed = False

    async def check_password(self, dn: str, password: bytes) -> tuple[int, str]:
        """A simple bind as ``dn``: (LDAP result code, diagnostic message)."""
        for attempt in (1, 2):
            conn, reused = await self._acquire()
            try:
                result = await conn.simple_bind(dn, password)
            except DirectoryUnavailable:
                self._discard(conn)
                if reused and attempt == 1:
                    continue  # probably closed by the server while idle: once more, fresh
                raise
            except BaseException:  # re-raised: the connection's state is unknown, drop it
                self._discard(conn)
                raise
            self._release(conn)
            return result
        raise DirectoryUnavailable("no connection for the password check")  # not reached

    async def _acquire(self) -> tuple[BindConnection, bool]:
        if self._closed:
            raise DirectoryUnavailable("the bind pool is closed")
        while self._idle:
            conn = self._idle.pop()
            if conn.connected:
                return conn, True
            self._count -= 1
        if self._count >= self.size:
            waiter: defer.Deferred[BindConnection | None] = defer.Deferred()
            self._waiters.append(waiter)
            handed = await waiter
            if handed is not None:
                return handed, True
            # a connection was discarded: its slot is ours (already counted for us)
        else:
            self._count += 1
        try:
            conn = await self._open_connection()
        except BaseException:
            self._free_slot()
            raise
        return conn, False

    def _release(self, conn: BindConnection) -> None:
        if self._closed or not conn.connected:
            self._discard(conn)
            return
        if self._waiters:
            self._waiters.popleft().callback(conn)
        else:
            self._idle.append(conn)

    def _discard(self, conn: BindConnection) -> None:
        conn.close()
        self._free_slot()

    def _free_slot(self) -> None:
        if self._waiters and not self._closed:
            self._waiters.popleft().callback(None)  # the waiter opens a connection in our slot
        else:
            self._count -= 1

    def close(self) -> None:
        self._closed = True
        for conn in self._idle:
            conn.close()
        self._count -= len(self._idle)
        self._idle = []
        while self._waiters:
            self._waiters.popleft().errback(DirectoryUnavailable("the bind pool is closed"))
