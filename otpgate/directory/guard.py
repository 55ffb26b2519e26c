"""A verdict on the directory that the gateway keeps, renews every few minutes, and obeys.

The gateway refuses OTP-state writes while the directory is set up so that a code could be
accepted twice: multi-provider replication without a pinned server (``replication_guard``),
user entries whose OTP state their users may write (``state_acl_guard``).  Each guard reads
the servers as the service account at startup (so that the log says it at once), before
the first OTP-state write, and again every ``RECHECK_SECONDS``; logins that arrive during a
probe wait for its verdict.  While the verdict is a refusal, every OTP-state write raises
the guard's :class:`~otpgate.errors.DirectoryUnavailable` (fail closed: nothing spent,
nothing counted).  A probe that cannot read any server fails closed too and is retried at
the next login.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from otpgate.errors import DirectoryError, DirectoryUnavailable

log = Logger()

RECHECK_SECONDS = 300.0


class GuardRefusal(DirectoryUnavailable):
    """OTP state refused by a guard's verdict (logged by the guard when it turned)."""


class PeriodicGuard(ABC):
    """Subclasses set ``active``, ``name`` and implement :meth:`_probe`, which returns the
    evidence for a refusal (None: writes allowed) and logs a change of verdict, and
    :meth:`refusal`, the exception a write gets while refused."""

    name = "directory check"
    health_name = "directory check"
    """How ``/healthz`` names the guard while it refuses."""

    def __init__(self, clock: Any, active: bool) -> None:
        self.clock = clock
        self.active = active
        self._evidence: str | None = None
        self._checked_at: float | None = None
        self._running = False
        self._waiters: list[defer.Deferred[None]] = []
        self.recheck_seconds = RECHECK_SECONDS

    @property
    def refusing(self) -> bool:
        return self._evidence is not None

    @abstractmethod
    def refusal(self, evidence: str) -> GuardRefusal:
        """The exception an OTP-state write gets while the verdict is ``evidence``."""

    @abstractmethod
    async def _probe(self, previous: str | None, first: bool) -> str | None:
        """Read the servers: the evidence for a refusal, or None; log a turned verdict."""

    async def check(self) -> None:
        """Return if OTP state may be written; raise the guard's refusal if not,
        ``DirectoryUnavailable`` if no server could be read (fail closed)."""
        if not self.active:
            return
        now = self.clock.seconds()
        if self._checked_at is None or now - self._checked_at >= self.recheck_seconds:
            await self._refresh()
        if self._evidence is not None:
            raise self.refusal(self._evidence)

    def check_at_startup(self) -> defer.Deferred[None]:
        """Run the check as the gateway starts, so that the log says it then, not at the
        first OTP login; its outcome is kept like any other check's."""
        d: defer.Deferred[None] = defer.ensureDeferred(self.check())

        def failed(failure: Any) -> None:
            if failure.check(GuardRefusal):
                return None  # logged by _probe
            if failure.check(DirectoryError):
                log.warn(
                    "{check} at startup: {error}; tried again before the first OTP login",
                    check=self.name,
                    error=failure.getErrorMessage(),
                )
                return None
            return failure  # type: ignore[no-any-return]

        d.addErrback(failed)
        return d

    async def _refresh(self) -> None:
        """One probe at a time; logins that arrive meanwhile wait for its verdict."""
        if self._running:
            waiter: defer.Deferred[None] = defer.Deferred()
            self._waiters.append(waiter)
            await waiter
            return
        self._running = True
        try:
            evidence = await self._probe(self._evidence, self._checked_at is None)
        except BaseException as exc:
            self._running = False
            waiting, self._waiters = self._waiters, []
            for w in waiting:
                w.errback(exc)
            raise
        self._evidence = evidence
        self._checked_at = self.clock.seconds()
        self._running = False
        waiting, self._waiters = self._waiters, []
        for w in waiting:
            w.callback(None)
