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

from twisted.logger import Logger

from otpgate.directory.config import DirectoryConfig
from otpgate.directory.connection import LdapConnection
from otpgate.directory.drive import run_steps_async
from otpgate.directory.guard import RECHECK_SECONDS as RECHECK_SECONDS
from otpgate.directory.guard import GuardRefusal, PeriodicGuard
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
