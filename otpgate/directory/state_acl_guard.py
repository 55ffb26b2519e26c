"""The gateway refuses OTP logins while users may write their own OTP state (OpenLDAP).

With the state in the users' own entries (OpenLDAP without ``[directory] state_dn``), a
user allowed to write her own state attributes could write an old genuine value back and
replay a spent code.  As the gateway starts, before the first OTP-state write, and again
every ``RECHECK_SECONDS`` (``guard.PeriodicGuard``), the guard reads every configured
server as the service account (``state_acl.probe``) and evaluates its access rules; unless
every server proves that nobody but the service account and the rootdn can write the
state attributes of a user entry, every OTP-state write is refused
(:class:`SelfWritableState`, an "unavailable": fail closed) until the rules are fixed or
the state moves to a container, or ``allow_self_writable_state = true`` accepts the risk.
A server that cannot be evaluated (cn=config not readable, rules that cannot be read with
certainty) counts as writable.  A server that does not answer keeps its last verdict (one
never judged is judged once it answers: nobody writes to it meanwhile); if none answers,
the check fails closed and is tried again at the next login.  Exempt and no-OTP logins
write no state and go on.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from otpgate.directory.config import DirectoryConfig
from otpgate.directory.connection import LdapConnection
from otpgate.directory.drive import run_steps_async
from otpgate.directory.guard import GuardRefusal, PeriodicGuard
from otpgate.directory.ldapdata import LdapUrl
from otpgate.directory.pool import ServerPool
from otpgate.directory.state_acl import ACL_FIX, AclVerdict, evidence, judge, probe
from otpgate.errors import DirectoryError, DirectoryUnavailable

log = Logger()


class SelfWritableState(GuardRefusal):
    """OTP state would be written where users may write it themselves."""


def guard_needed(config: DirectoryConfig) -> bool:
    return (
        config.profile.server != "ad"
        and config.state_dn is None
        and not config.allow_self_writable_state
    )


def configured_urls(config: DirectoryConfig) -> list[str]:
    """Every server otpgate is given (a user could write on any that accepts writes)."""
    urls = list(config.urls)
    if config.write_url is not None and config.write_url != "discover":
        urls.append(config.write_url)
    return list(dict.fromkeys(urls))


async def server_verdict(conn: LdapConnection, url: str, config: DirectoryConfig) -> AclVerdict:
    """Run ``state_acl.probe`` over one of the gateway's connections and judge it."""
    facts = await run_steps_async(
        probe(url), lambda q: conn.search(q.base, q.filter_ber, q.attributes, scope=q.scope)
    )
    return judge(facts, config)


class StateAclGuard(PeriodicGuard):
    name = "state ACL check"
    health_name = "state access guard"

    def __init__(self, config: DirectoryConfig, pool: ServerPool, clock: Any) -> None:
        super().__init__(clock, guard_needed(config))
        self.config = config
        self.pool = pool
        self.urls = [LdapUrl.parse(u) for u in configured_urls(config)]
        self._known: dict[str, AclVerdict] = {}

    def refusal(self, evidence: str) -> SelfWritableState:
        return SelfWritableState(
            f"OTP state refused: users may write their own OTP state ({evidence}); {ACL_FIX}"
        )

    async def _probe(self, previous: str | None, first: bool) -> str | None:
        errors: list[str] = []
        answered = False
        for url in self.urls:
            try:
                conn = await self.pool.open_to(url)
            except DirectoryError as exc:
                errors.append(str(exc))
                continue
            try:
                self._known[url.url] = await server_verdict(conn, url.url, self.config)
                answered = True
            except DirectoryError as exc:
                errors.append(f"{url.url}: {exc}")
            finally:
                conn.close()
        if not answered:
            raise DirectoryUnavailable(
                "state ACL check: no directory server answered: " + "; ".join(errors)
            )
        # A server that does not answer now keeps its last verdict.  One never judged
        # refuses: users may reach it when the gateway cannot (another network path, a
        # certificate the gateway refuses), and a value rolled back there replicates.
        verdicts = [
            self._known.get(u.url)
            or AclVerdict(u.url, unproven="never answered the check: " + _why(u.url, errors))
            for u in self.urls
        ]
        found = evidence(verdicts)
        if found is not None and previous is None:
            log.error(
                "users may write their own OTP state: every OTP login is refused until "
                "only the service account can ({evidence}); {fix}",
                evidence=found,
                fix=ACL_FIX,
            )
        elif found is None and previous is not None:
            log.warn(
                "state ACL check: users cannot write their own OTP state now; OTP logins resume"
            )
        return found


def _why(url: str, errors: list[str]) -> str:
    return next((e for e in errors if url in e), "no answer")
