"""The gateway's driver of the state engine: its steps over the async LDAP client.

All logic is in ``engine.py`` (steps), ``state.py`` and ``inventory.py`` (mapping); this
module performs the requests a step yields, keeps the entry cache and counts conflicts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from ldaptor import ldapfilter

from otpgate import ber
from otpgate.directory import engine
from otpgate.directory import inventory as inv
from otpgate.directory.config import DirectoryConfig
from otpgate.directory.connection import LdapConnection
from otpgate.directory.drive import run_steps_async
from otpgate.directory.engine import Add, Delete, Modify, Op, Outcome, Search, Step
from otpgate.directory.entrycache import EntryCache
from otpgate.directory.guard import PeriodicGuard
from otpgate.directory.inventory import InventoryItem, InventoryMapper
from otpgate.directory.ldapdata import SearchEntry
from otpgate.directory.pool import ServerPool
from otpgate.directory.records import Lookup, OtpState, StateChange, UserEntry
from otpgate.directory.replication_guard import ReplicationGuard
from otpgate.directory.state import StateMapper
from otpgate.directory.state_acl_guard import StateAclGuard
from otpgate.errors import ConcurrentUpdate
from otpgate.tokens import Secret, Token
from otpgate.vault import Keyring

T = TypeVar("T")


class OtpStore:
    def __init__(
        self,
        config: DirectoryConfig,
        keyring: Keyring,
        read_pool: ServerPool,
        write_pool: ServerPool,
        clock: Any = None,
        groups: tuple[str, ...] = (),
        cautious: tuple[str, ...] = (),
        guard: ReplicationGuard | None = None,
        acl_guard: StateAclGuard | None = None,
        *,
        attributes: tuple[str, ...] = (),
    ) -> None:
        """``groups``: the groups the policy and the portal ask about (required, admin and
        help-desk groups): each resolved entry carries which of them it belongs to.  Where a
        membership cannot be read, the user counts as a member of the ``cautious`` ones
        (those that add a requirement: required and admin groups) and of no other.
        ``attributes``: further attributes read with every user entry (RADIUS reply
        rules), in ``UserEntry.attributes``: no second lookup per login."""
        self.config = config
        self.groups = tuple(dict.fromkeys(groups))
        self.cautious = frozenset(g.lower() for g in cautious)
        self._group_facts: dict[str, bytes] = {}
        self.mapper = StateMapper(config, keyring, attributes)
        self.clock = clock
        self.cache = EntryCache(config.state_cache_seconds if clock is not None else 0)
        self.read_pool = read_pool
        self.write_pool = write_pool
        self._user_filter: bytes = ldapfilter.parseFilter(config.user_filter).toWire()
        self._any = ber.filter_present(b"objectClass")
        self.guard = guard
        self.acl_guard = acl_guard
        self._guards: tuple[PeriodicGuard, ...] = tuple(
            g for g in (guard, acl_guard) if g is not None
        )

    # -- the driver -------------------------------------------------------------------------

    def _filter(self, lookup: Lookup) -> bytes:
        """BER of the lookup's filter: the configured user filter, parsed once, and the
        (attribute=value) assertion built directly (no text escaping round trip)."""
        if lookup.filter_ber is not None:
            return lookup.filter_ber
        if not lookup.user_filter:
            return self._any
        if lookup.attribute is None:
            return self._user_filter
        return ber.filter_and(
            self._user_filter, ber.filter_equal(lookup.attribute.encode(), lookup.value.encode())
        )

    async def _perform(self, conn: LdapConnection, op: Op) -> Any:
        if isinstance(op, Modify):
            return await conn.modify(op.dn, op.changes)
        if isinstance(op, Search):
            lookup = op.lookup
            return await conn.search(
                lookup.base,
                self._filter(lookup),
                op.attributes,
                scope=lookup.scope,
                size_limit=op.size_limit,
            )
        if isinstance(op, Add):
            return await conn.add(op.dn, op.attributes)
        if isinstance(op, Delete):
            return await conn.delete(op.dn)
        raise TypeError(f"not a directory operation: {op!r}")

    async def check_replication(self) -> None:
        """Before any write of OTP state or the inventory: refused (UnpinnedMultiProvider)
        while unpinned on multi-provider replication (``replication_guard.py``)."""
        if self.guard is not None and self.guard.active:
            await self.guard.check()

    async def _run(self, step: Step[T], conn: LdapConnection | None = None) -> T:
        """Run an engine step on the OTP-state server (the write pool).  Private: writes go
        through ``update`` and ``InventoryStore``, which pass the replication guard and keep
        the entry cache true."""
        on = conn or await self.write_pool.connection()
        return await run_steps_async(step, lambda op: self._perform(on, op))

    # -- users ----------------------------------------------------------------------------------

    def _now(self) -> float:
        return float(self.clock.seconds()) if self.clock is not None else 0.0

    async def resolve(self, name: str, fresh: bool = False) -> UserEntry:
        """The one entry ``name`` (DN, UPN, DOMAIN\\user or bare name) refers to.

        Served from the entry cache unless ``fresh``; see ``entrycache.py``.
        """
        if not fresh:
            cached = self.cache.get(name, self._now())
            if cached is not None:
                return cached
        entry = await self._run(
            engine.resolve_member(self.mapper, name, self.groups, self._group_facts, self.cautious)
        )
        self.cache.put(name, entry, self._now())
        return entry

    def forget(self, name: str) -> None:
        """Drop ``name``'s cached entry (its state was changed by a flow that has no new
        entry to hand the cache)."""
        cached = self.cache.get(name, self._now())
        if cached is not None:
            self.cache.drop(cached)

    def decode(self, user: UserEntry, with_secrets: bool = True) -> OtpState:
        return self.mapper.decode(user, with_secrets)

    async def update(
        self,
        user: UserEntry,
        change: Callable[[OtpState], StateChange[T]],
        *,
        unreadable_as_empty: bool = False,
    ) -> tuple[T, UserEntry]:
        """Apply ``change`` with compare-and-swap (``engine.update``); keeps the cache true."""
        for guard in self._guards:  # inline: an inactive guard costs no coroutine per login
            if guard.active:
                await guard.check()
        step = engine.update(
            self.mapper,
            user,
            change,
            self.config.cas_retries,
            unreadable_as_empty=unreadable_as_empty,
        )
        try:
            done: Outcome = await self._run(step)
        except ConcurrentUpdate as exc:
            self.write_pool.stats.cas_conflicts += exc.conflicts
            self.cache.drop(user)
            raise
        except Exception:
            self.cache.drop(user)
            raise
        self.write_pool.stats.cas_conflicts += done.conflicts
        # The new values, under the time of the last full read: a retry or a decision that
        # writes nothing re-reads only the values, not the user's groups, expiry or status,
        # so it must not make the cached entry look fresh (else a stream of replayed codes
        # would keep a disabled account's entry alive forever).
        self.cache.written(done.user)
        return done.result, done.user


class InventoryStore:
    """Unassigned hardware tokens in the directory: ``inventory.py``'s steps over the
    gateway's client."""

    def __init__(self, config: DirectoryConfig, keyring: Keyring, store: OtpStore) -> None:
        self.mapper = InventoryMapper(config, keyring)
        self.store = store

    async def add(self, token: Token, secret: Secret, last: int = -1) -> InventoryItem:
        await self.store.check_replication()
        return await self.store._run(inv.add_item(self.mapper, token, secret, last))

    async def get(self, serial: str) -> InventoryItem:
        return await self.store._run(inv.read_item(self.mapper, serial))

    async def list(self) -> list[InventoryItem]:
        return await self.store._run(inv.list_items(self.mapper))

    async def claim(self, serial: str) -> InventoryItem:
        await self.store.check_replication()  # two claims on two providers: one token twice
        return await self.store._run(inv.claim(self.mapper, serial))

    async def release(self, item: InventoryItem) -> None:
        await self.store.check_replication()
        await self.store._run(inv.release(self.mapper, item))

    async def delete(self, serial: str) -> None:
        await self.store.check_replication()
        await self.store._run(inv.delete(self.mapper, serial))

    async def rewrite(self, serial: str, change: inv.Rewrite) -> InventoryItem | None:
        """Rewrite ``serial``'s stored token with compare-and-swap (``inventory.rewrite``)."""
        await self.store.check_replication()
        return await self.store._run(inv.rewrite(self.mapper, serial, change))

    async def check(self, step: Step[T]) -> T:
        """A step that only reads (an import's checks of its users)."""
        return await self.store._run(step)

    async def read_entries(self, serials: Sequence[str]) -> Sequence[SearchEntry]:
        """The entries of ``serials`` still there, in one search (not decrypted)."""
        return await self.store._run(inv.read_entries(self.mapper, serials))

    async def flow(self, step: Step[T], *user_names: str) -> T:
        """A flow that writes the inventory and users' state in one step (the assignment,
        ``admin.inventory.assign``; a self-service claim, ``admin.claim``; the import's
        ``admin.imports`` steps), through every guard of OTP-state writes, as
        ``OtpStore.update`` (the replication guard, and the one that refuses state users may
        write themselves); the users' cached entries are dropped afterwards (their state
        changed under the cache)."""
        store = self.store
        for guard in store._guards:
            if guard.active:
                await guard.check()
        try:
            return await store._run(step)
        finally:
            for name in user_names:
                store.forget(name)
