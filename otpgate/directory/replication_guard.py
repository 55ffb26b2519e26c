"""The gateway refuses OTP state writes unpinned on OpenLDAP multi-provider replication.

``[directory] write_url`` unset on an OpenLDAP profile: OTP state goes to the first of
``urls`` that answers.  If those servers are providers that replicate each other, two
gateways (or one after a failover) can accept one code twice.  As the gateway starts,
before the first OTP state write, and again every ``RECHECK_SECONDS``, the guard reads
every configured server (``replication.probe``); if they show multi-provider
replication, every OTP state write is refused (:class:`UnpinnedMultiProvider`, an
"unavailable": fail closed) until ``write_url`` pins one provider, or
``allow_unpinned_multi_provider = true`` accepts the risk.  Exempt and no-OTP logins write
no state and are not affected.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from otpgate.directory.config import DirectoryConfig
from otpgate.directory.connection import LdapConnection
from otpgate.directory.drive import run_steps_async
from otpgate.directory.ldapdata import DirectoryError, DirectoryUnavailable
from otpgate.directory.pool import ServerPool
from otpgate.directory.replication import (
    PIN_FIX,
    ProbeRefused,
    ReplicationFacts,
    multi_provider_evidence,
    probe,
    readable,
)

log = Logger()

RECHECK_SECONDS = 300.0


class UnpinnedMultiProvider(DirectoryUnavailable):
    """OTP state would be written unpinned to one of several replicating providers."""


def guard_needed(config: DirectoryConfig) -> bool:
    return (
        config.profile.server != "ad"
        and config.write_url is None
        and not config.allow_unpinned_multi_provider
    )


async def server_facts(conn: LdapConnection, url: str, base_dn: str) -> ReplicationFacts:
    """Run ``replication.probe`` over one of the gateway's connections."""
    return await run_steps_async(
        probe(url, base_dn),
        lambda q: conn.search(q.base, q.filter_ber, q.attributes, scope=q.scope),
    )


class ReplicationGuard:
    def __init__(self, config: DirectoryConfig, pool: ServerPool, clock: Any) -> None:
        self.config = config
        self.pool = pool
        self.clock = clock
        self.active = guard_needed(config)
        self._evidence: str | None = None
        self._checked_at: float | None = None
        self._running = False
        self._waiters: list[defer.Deferred[None]] = []

    @property
    def refusing(self) -> bool:
        return self._evidence is not None

    async def check(self) -> None:
        """Return if OTP state may be written; raise :class:`UnpinnedMultiProvider` if
        not, ``DirectoryUnavailable`` if no server could be read (fail closed)."""
        if not self.active:
            return
        now = self.clock.seconds()
        if self._checked_at is None or now - self._checked_at >= RECHECK_SECONDS:
            await self._refresh()
        if self._evidence is not None:
            raise UnpinnedMultiProvider(
                "OTP state refused: OpenLDAP multi-provider replication and no "
                f"[directory] write_url ({self._evidence}); {PIN_FIX}"
            )

    def check_at_startup(self) -> defer.Deferred[None]:
        """Run the check as the gateway starts, so that the log says it then, not at the
        first OTP login; its outcome is kept like any other check's."""
        d: defer.Deferred[None] = defer.ensureDeferred(self.check())

        def failed(failure: Any) -> None:
            if failure.check(UnpinnedMultiProvider):
                return None  # logged by _probe
            if failure.check(DirectoryError):
                log.warn(
                    "replication check at startup: {error}; tried again before the first OTP login",
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
            await self._probe()
        except BaseException as exc:
            self._running = False
            waiting, self._waiters = self._waiters, []
            for w in waiting:
                w.errback(exc)
            raise
        self._running = False
        waiting, self._waiters = self._waiters, []
        for w in waiting:
            w.callback(None)

    async def _probe(self) -> None:
        facts: list[ReplicationFacts] = []
        errors: list[str] = []
        refused: list[str] = []
        for url in self.pool.urls:
            try:
                conn = await self.pool.open_to(url)
            except DirectoryError as exc:
                errors.append(str(exc))
                continue
            try:
                facts.append(await server_facts(conn, url.url, self.config.base_dn))
            except ProbeRefused as exc:
                refused.append(str(exc))
            except DirectoryError as exc:
                errors.append(f"{url.url}: {exc}")
            finally:
                conn.close()
        if not facts and not refused:
            raise DirectoryUnavailable(
                "replication check: no directory server answered: " + "; ".join(errors)
            )
        evidence = multi_provider_evidence(facts)
        if refused:  # a server that answered without showing its replication: fail closed
            evidence = "; ".join(
                [*([evidence] if evidence else []), "could not be checked: " + "; ".join(refused)]
            )
        if evidence is not None and self._evidence is None:
            log.error(
                "OpenLDAP multi-provider replication and no [directory] write_url: every OTP "
                "login is refused until OTP state is pinned ({evidence}); {fix}",
                evidence=evidence,
                fix=PIN_FIX,
            )
        elif evidence is None and self._evidence is not None:
            log.warn("replication check: no multi-provider replication seen now; OTP logins resume")
        elif evidence is None and self._checked_at is None and not readable(facts):
            log.warn(
                "replication check: no server showed a naming context for {base}",
                base=self.config.base_dn,
            )
        self._evidence = evidence
        self._checked_at = self.clock.seconds()
