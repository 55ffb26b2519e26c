"""The gateway's OTP-state store: StateMapper's plans carried out over ldaptor.

See ``state.py`` for the compare-and-swap rule; this module only does I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from ldaptor import ldapfilter
from twisted.logger import Logger

from otpgate.config import DirectoryConfig
from otpgate.directory.connection import LdapConnection
from otpgate.directory.ldapdata import SUCCESS, DirectoryError
from otpgate.directory.pool import ServerPool
from otpgate.directory.state import (
    CAS_CONFLICTS,
    ConcurrentUpdate,
    Lookup,
    OtpState,
    StateChange,
    StateMapper,
    UserEntry,
)
from otpgate.vault import Keyring

log = Logger()
T = TypeVar("T")


class OtpStore:
    def __init__(
        self,
        config: DirectoryConfig,
        keyring: Keyring,
        read_pool: ServerPool,
        write_pool: ServerPool,
    ) -> None:
        self.config = config
        self.mapper = StateMapper(config, keyring)
        self.read_pool = read_pool
        self.write_pool = write_pool
        self._filters: dict[str, Any] = {}

    def _filter(self, text: str) -> Any:
        parsed = self._filters.get(text)
        if parsed is None:
            parsed = ldapfilter.parseFilter(text)
            if len(self._filters) < 1024:  # the user filter and its reread form repeat
                self._filters[text] = parsed
        return parsed

    async def _search(self, conn: LdapConnection, lookup: Lookup) -> Any:
        return await conn.search(
            lookup.base,
            self._filter(lookup.filter),
            self.mapper.attributes,
            scope=lookup.scope,
            size_limit=2,
        )

    async def resolve(self, name: str, conn: LdapConnection | None = None) -> UserEntry:
        """The one entry ``name`` (DN, UPN, DOMAIN\\user or bare name) refers to."""
        conn = conn or await self.write_pool.connection()
        return self.mapper.one_entry(name, await self._search(conn, self.mapper.lookup(name)))

    async def reread(self, user: UserEntry, conn: LdapConnection) -> UserEntry:
        return self.mapper.same_entry(
            user, await self._search(conn, self.mapper.reread_lookup(user))
        )

    def decode(self, user: UserEntry) -> OtpState:
        return self.mapper.decode(user)

    async def update(
        self, user: UserEntry, change: Callable[[OtpState], StateChange[T]]
    ) -> tuple[T, UserEntry]:
        """Apply ``change`` to the user's current state with compare-and-swap, retrying races.

        ``change`` sees the freshly decoded state and returns what to write
        (and a result to hand back); it may be called several times.
        """
        conn = await self.write_pool.connection()
        for _attempt in range(self.config.cas_retries):
            if not user.used:
                code, message = await conn.modify(user.dn, self.mapper.initialise(user))
                if code != SUCCESS and code not in CAS_CONFLICTS:
                    raise DirectoryError(f"{user.dn}: cannot initialise OTP state: {message}", code)
                user = await self.reread(user, conn)
                continue
            state = self.mapper.decode(user)
            planned = change(state)
            if not planned.writes:
                return planned.result, user
            code, message = await conn.modify(user.dn, self.mapper.plan(user, state, planned))
            if code == SUCCESS:
                return planned.result, user
            if code not in CAS_CONFLICTS:
                raise DirectoryError(f"{user.dn}: write refused: {code} {message}", code)
            log.debug("CAS conflict on {dn} ({code}); re-reading", dn=user.dn, code=code)
            user = await self.reread(user, conn)
        raise ConcurrentUpdate(
            f"{user.dn}: OTP state changed under us {self.config.cas_retries} times; giving up"
        )
