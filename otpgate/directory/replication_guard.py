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

from twisted.internet import task
from twisted.logger import Logger

from otpgate.directory.config import DirectoryConfig
from otpgate.directory.connection import LdapConnection
from otpgate.directory.drive import run_steps_async
from otpgate.directory.guard import RECHECK_SECONDS, GuardRefusal, PeriodicGuard
from otpgate.directory.ldapdata import LdapUrl
from otpgate.directory.pool import ServerPool
from otpgate.directory.replication import (
    PIN_FIX,
    ProbeRefused,
    ReplicationFacts,
    multi_provider_evidence,
    probe,
    readable,
)
from otpgate.errors import DirectoryError, DirectoryUnavailable

log = Logger()

RETRY_DELAYS = (0.5, 1.0)
"""Seconds before each new try of the servers whose probe failed (a refusal such as busy,
or no answer from any server)."""

__all__ = ["RECHECK_SECONDS", "ReplicationGuard", "UnpinnedMultiProvider", "guard_needed"]


class UnpinnedMultiProvider(GuardRefusal):
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


class ReplicationGuard(PeriodicGuard):
    """The periodic check and its waiting logins are ``guard.PeriodicGuard``'s."""

    name = "replication check"
    health_name = "replication guard"

    def __init__(self, config: DirectoryConfig, pool: ServerPool, clock: Any) -> None:
        super().__init__(clock, guard_needed(config))
        self.config = config
        self.pool = pool

    def refusal(self, evidence: str) -> UnpinnedMultiProvider:
        return UnpinnedMultiProvider(
            "OTP state refused: OpenLDAP multi-provider replication and no "
            f"[directory] write_url ({evidence}); {PIN_FIX}"
        )

    async def _probe(self, previous: str | None, first: bool) -> str | None:
        outcomes = {url: await self._probe_one(url) for url in self.pool.urls}
        for delay in RETRY_DELAYS:
            failed = [u for u, o in outcomes.items() if not isinstance(o, ReplicationFacts)]
            refusals = any(isinstance(outcomes[u], ProbeRefused) for u in failed)
            if not failed or (not refusals and len(failed) < len(outcomes)):
                break  # servers out of reach show nothing: those that answered decide
            log.info(
                "replication check: {failures}; asking again in {delay} s",
                failures="; ".join(str(outcomes[u]) for u in failed),
                delay=delay,
            )
            await task.deferLater(self.clock, delay, lambda: None)
            for url in failed:
                outcomes[url] = await self._probe_one(url)
        facts = [o for o in outcomes.values() if isinstance(o, ReplicationFacts)]
        refused = [str(o) for o in outcomes.values() if isinstance(o, ProbeRefused)]
        errors = [
            str(o)
            for o in outcomes.values()
            if isinstance(o, DirectoryError) and not isinstance(o, ProbeRefused)
        ]
        if not facts and not refused:
            raise DirectoryUnavailable(
                "replication check: no directory server answered: " + "; ".join(errors)
            )
        evidence = multi_provider_evidence(facts)
        if refused:  # a server that answered without showing its replication: fail closed
            evidence = "; ".join(
                [*([evidence] if evidence else []), "could not be checked: " + "; ".join(refused)]
            )
        if evidence is not None and previous is None:
            log.error(
                "OpenLDAP multi-provider replication and no [directory] write_url: every OTP "
                "login is refused until OTP state is pinned ({evidence}); {fix}",
                evidence=evidence,
                fix=PIN_FIX,
            )
        elif evidence is None and previous is not None:
            log.warn("replication check: no multi-provider replication seen now; OTP logins resume")
        elif evidence is None and first and not readable(facts):
            log.warn(
                "replication check: no server showed a naming context for {base}",
                base=self.config.base_dn,
            )
        return evidence

    async def _probe_one(self, url: LdapUrl) -> ReplicationFacts | DirectoryError:
        """One server's facts, or why it could not show them (``ProbeRefused`` when it
        answered with an error)."""
        try:
            conn = await self.pool.open_to(url)
        except DirectoryError as exc:
            return exc
        try:
            return await server_facts(conn, url.url, self.config.base_dn)
        except ProbeRefused as exc:
            return exc
        except DirectoryError as exc:
            return DirectoryError(f"{url.url}: {exc}", exc.result_code)
        finally:
            conn.close()
