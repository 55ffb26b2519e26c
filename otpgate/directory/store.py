"""The gateway's OTP-state store: StateMapper's plans carried out over ldaptor.

See ``state.py`` for the compare-and-swap rule; this module only does I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from ldaptor import ldapfilter
from twisted.logger import Logger

from otpgate import ber
from otpgate.config import DirectoryConfig
from otpgate.directory.connection import LdapConnection
from otpgate.directory.entrycache import EntryCache
from otpgate.directory.inventory import InventoryError, InventoryItem, InventoryMapper
from otpgate.directory.ldapdata import (
    ENTRY_ALREADY_EXISTS,
    NO_SUCH_ATTRIBUTE,
    SCOPE_BASE,
    SCOPE_SUBTREE,
    SUCCESS,
    DirectoryError,
    Modification,
)
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
from otpgate.tokens import Secret, Token
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
        clock: Any = None,
    ) -> None:
        self.config = config
        self.mapper = StateMapper(config, keyring)
        self.clock = clock
        self.cache = EntryCache(config.state_cache_seconds if clock is not None else 0)
        self.read_pool = read_pool
        self.write_pool = write_pool
        self._user_filter: bytes = ldapfilter.parseFilter(config.user_filter).toWire()

    def _filter(self, lookup: Lookup) -> bytes:
        """BER of the lookup's filter: the configured user filter, parsed once, and the
        (attribute=value) assertion built directly (no text escaping round trip)."""
        if lookup.attribute is None:
            return self._user_filter
        return ber.filter_and(
            self._user_filter, ber.filter_equal(lookup.attribute.encode(), lookup.value.encode())
        )

    async def _search(self, conn: LdapConnection, lookup: Lookup) -> Any:
        return await conn.search(
            lookup.base,
            self._filter(lookup),
            self.mapper.attributes,
            scope=lookup.scope,
            size_limit=2,
        )

    def _now(self) -> float:
        return float(self.clock.seconds()) if self.clock is not None else 0.0

    async def resolve(
        self, name: str, conn: LdapConnection | None = None, fresh: bool = False
    ) -> UserEntry:
        """The one entry ``name`` (DN, UPN, DOMAIN\\user or bare name) refers to.

        Served from the entry cache unless ``fresh``; see ``entrycache.py``.
        """
        cached = None if fresh else self.cache.get(name, self._now())
        if cached is not None:
            return cached
        conn = conn or await self.write_pool.connection()
        entry = self.mapper.one_entry(name, await self._search(conn, self.mapper.lookup(name)))
        self.cache.put(name, entry, self._now())
        return entry

    async def reread(self, user: UserEntry, conn: LdapConnection) -> UserEntry:
        self.cache.drop(user)
        entry = self.mapper.same_entry(
            user, await self._search(conn, self.mapper.reread_lookup(user))
        )
        self.cache.put(entry.dn, entry, self._now())
        return entry

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
        read_here = False  # whether ``user`` was read from the directory during this call
        for _attempt in range(self.config.cas_retries):
            if not user.used:
                code, message = await conn.modify(user.dn, self.mapper.initialise(user))
                if code != SUCCESS and code not in CAS_CONFLICTS:
                    raise DirectoryError(f"{user.dn}: cannot initialise OTP state: {message}", code)
                user, read_here = await self.reread(user, conn), True
                continue
            state = self.mapper.decode(user)
            planned = change(state)
            if not planned.writes:
                if read_here or self.cache.ttl <= 0:
                    return planned.result, user
                # A decision without a write (e.g. "locked out") is checked by no CAS:
                # make it on a fresh read, not on a cached entry.
                user, read_here = await self.reread(user, conn), True
                continue
            changes = self.mapper.plan(user, state, planned)
            code, message = await conn.modify(user.dn, changes)
            if code == SUCCESS:
                user = self.mapper.after(user, changes)
                self.cache.written(user)
                return planned.result, user
            if code not in CAS_CONFLICTS:
                self.cache.drop(user)
                self.write_pool.stats.error("write refused")
                raise DirectoryError(f"{user.dn}: write refused: {code} {message}", code)
            log.debug("CAS conflict on {dn} ({code}); re-reading", dn=user.dn, code=code)
            self.write_pool.stats.cas_conflicts += 1
            user, read_here = await self.reread(user, conn), True
        raise ConcurrentUpdate(
            f"{user.dn}: OTP state changed under us {self.config.cas_retries} times; giving up"
        )


class InventoryStore:
    """Unassigned hardware tokens in the directory, over ldaptor."""

    def __init__(self, config: DirectoryConfig, keyring: Keyring, store: OtpStore) -> None:
        self.mapper = InventoryMapper(config, keyring)
        self.store = store
        self._any = ber.filter_present(b"cn")

    async def add(self, token: Token, secret: Secret) -> InventoryItem:
        """Create ``cn=<serial>`` and store the token in it (bound to the new entry's id)."""
        if not token.serial:
            raise InventoryError("an inventory token needs a serial")
        conn = await self.store.write_pool.connection()
        dn = self.mapper.dn(token.serial)
        code, message = await conn.add(dn, self.mapper.new_entry(token.serial))
        if code == ENTRY_ALREADY_EXISTS:
            raise InventoryError(f"serial {token.serial} is already in the inventory", code)
        if code != SUCCESS:
            raise InventoryError(f"cannot add {dn}: {code} {message}", code)
        try:
            item = await self._read(conn, token.serial, decrypt=False)
            raw = self.mapper.encode(dn, item.entry_id, token, secret)
            name = self.mapper.config.inventory.spec.name
            code, message = await conn.modify(dn, [Modification(Modification.ADD, name, (raw,))])
            if code != SUCCESS:
                raise InventoryError(f"cannot store token {token.serial}: {code} {message}", code)
        except BaseException:
            await conn.delete(dn)  # leave no empty entry behind
            raise
        return await self._read(conn, token.serial)

    async def _read(self, conn: LdapConnection, serial: str, decrypt: bool = True) -> InventoryItem:
        found = await conn.search(
            self.mapper.dn(serial), self._any, self.mapper.attributes, scope=SCOPE_BASE
        )
        if not found:
            raise InventoryError(f"serial {serial} is not in the inventory")
        return self.mapper.item(found[0], decrypt)

    async def get(self, serial: str) -> InventoryItem:
        return await self._read(await self.store.write_pool.connection(), serial)

    async def list(self) -> list[InventoryItem]:
        conn = await self.store.read_pool.connection()
        found = await conn.search(
            self.mapper.container, self._any, self.mapper.attributes, scope=SCOPE_SUBTREE
        )
        return sorted(
            (self.mapper.item(f) for f in found if f.dn.lower() != self.mapper.container.lower()),
            key=lambda item: item.serial,
        )

    async def claim(self, serial: str) -> InventoryItem:
        """Take a token out of the inventory, exactly once.

        One Modify deletes the stored value's exact bytes: of two admins
        claiming the same serial, the second gets noSuchAttribute.  Follow
        with :meth:`remove` once the token is stored elsewhere, or
        :meth:`release` to put it back.
        """
        conn = await self.store.write_pool.connection()
        item = await self._read(conn, serial)
        if item.raw is None:
            raise InventoryError(f"serial {serial} is being assigned by someone else")
        name = self.mapper.config.inventory.spec.name
        code, message = await conn.modify(
            item.dn, [Modification(Modification.DELETE, name, (item.raw,))]
        )
        if code == NO_SUCH_ATTRIBUTE:
            raise InventoryError(f"serial {serial} was just taken by someone else", code)
        if code != SUCCESS:
            raise InventoryError(f"cannot claim {serial}: {code} {message}", code)
        return item

    async def release(self, item: InventoryItem) -> None:
        if item.raw is None:
            return
        conn = await self.store.write_pool.connection()
        name = self.mapper.config.inventory.spec.name
        code, message = await conn.modify(
            item.dn, [Modification(Modification.ADD, name, (item.raw,))]
        )
        if code != SUCCESS:
            raise InventoryError(f"cannot return {item.serial} to the inventory: {message}", code)

    async def remove(self, item: InventoryItem) -> None:
        await self.delete(item.serial)

    async def delete(self, serial: str) -> None:
        conn = await self.store.write_pool.connection()
        code, message = await conn.delete(self.mapper.dn(serial))
        if code != SUCCESS:
            raise InventoryError(f"cannot delete {serial}: {code} {message}", code)
