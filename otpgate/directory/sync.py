"""The CLI's driver of the state engine: its steps (``engine.py``, ``inventory.py``) over
ldap3 connections (``ldap3conn.py``), synchronously.  The gateway runs the same steps over
its own async client (``store.py``); this module only performs the requests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from otpgate.directory import engine
from otpgate.directory import inventory as inv
from otpgate.directory.config import DirectoryConfig
from otpgate.directory.drive import run_steps
from otpgate.directory.engine import Add, Delete, Modify, Op, Search, Step
from otpgate.directory.inventory import InventoryItem, InventoryMapper
from otpgate.directory.ldap3conn import (
    SyncConnection,
    SyncDirectory,
    connect,
    discover_pdc,
)
from otpgate.directory.ldapdata import (
    SearchEntry,
)
from otpgate.directory.records import OtpState, StateChange, UserEntry
from otpgate.directory.state import StateMapper, escape_filter_value
from otpgate.tokens import Secret, Token
from otpgate.vault import Keyring

T = TypeVar("T")


class SyncStore:
    """The CLI's driver of the state engine (``engine.py``): its steps over ldap3."""

    def __init__(self, config: DirectoryConfig, keyring: Keyring, directory: SyncDirectory):
        self.config = config
        self.keyring = keyring
        self.mapper = StateMapper(config, keyring)
        self.directory = directory

    @staticmethod
    def _perform(conn: SyncConnection, op: Op) -> Any:
        if isinstance(op, Search):
            lookup = op.lookup
            return conn.search(
                lookup.base,
                lookup.filter,
                op.attributes,
                scope=lookup.scope,
                size_limit=op.size_limit,
            )
        if isinstance(op, Modify):
            return conn.modify(op.dn, op.changes)
        if isinstance(op, Add):
            return conn.add(op.dn, op.attributes)
        if isinstance(op, Delete):
            return conn.delete(op.dn)
        raise TypeError(f"not a directory operation: {op!r}")

    def run(self, step: Step[T]) -> T:
        """Run an engine step on the OTP-state server."""
        conn = self.directory.write()
        return run_steps(step, lambda op: self._perform(conn, op))

    def resolve(self, name: str) -> UserEntry:
        """The one entry ``name`` (DN, UPN, DOMAIN\\user or bare name) refers to."""
        return self.run(engine.resolve(self.mapper, name))

    def decode(self, user: UserEntry, with_secrets: bool = True) -> OtpState:
        return self.mapper.decode(user, with_secrets)

    def update(
        self,
        user: UserEntry,
        change: Callable[[OtpState], StateChange[T]],
        *,
        unreadable_as_empty: bool = False,
    ) -> tuple[T, UserEntry]:
        """Apply ``change`` with compare-and-swap (``engine.update``)."""
        done = self.run(
            engine.update(
                self.mapper,
                user,
                change,
                self.config.cas_retries,
                unreadable_as_empty=unreadable_as_empty,
            )
        )
        result: T = done.result
        return result, done.user

class SyncInventory:
    """Unassigned hardware tokens: ``inventory.py``'s steps over ldap3 (cf. ``InventoryStore``)."""

    def __init__(self, mapper: InventoryMapper, store: SyncStore) -> None:
        self.mapper = mapper
        self.store = store

    @classmethod
    def open(cls, store: SyncStore) -> SyncInventory:
        return cls(InventoryMapper(store.config, store.keyring), store)

    def add(self, token: Token, secret: Secret, last: int = -1) -> InventoryItem:
        return self.store.run(inv.add_item(self.mapper, token, secret, last))

    def get(self, serial: str, decrypt: bool = True) -> InventoryItem:
        return self.store.run(inv.read_item(self.mapper, serial, decrypt))

    def entries(self) -> list[SearchEntry]:
        """Every inventory entry, sorted by serial: a paged search (a plain one stops at the
        server's size limit, AD's MaxPageSize or OpenLDAP's sizelimit, and ldap3 would hand
        out what came before it as if that were all)."""
        conn = self.store.directory.write()
        container = self.mapper.container.lower()
        found = conn.paged_search(self.mapper.container, "(objectClass=*)", self.mapper.attributes)
        return sorted(
            (e for e in found if e.dn.lower() != container),
            key=lambda e: (e.first("cn") or b"").lower(),
        )

    def run(self, step: Step[T]) -> T:
        """An inventory step (the import's ``admin.imports`` steps) on the OTP-state server."""
        return self.store.run(step)

    def serials(self) -> set[str]:
        return {(e.first("cn") or b"").decode("utf-8", "replace").lower() for e in self.entries()}

    def rewrite(self, serial: str, change: inv.Rewrite) -> InventoryItem | None:
        """Rewrite ``serial``'s stored token with compare-and-swap (``inventory.rewrite``)."""
        return self.store.run(inv.rewrite(self.mapper, serial, change))

    def delete(self, serial: str) -> None:
        self.store.run(inv.delete(self.mapper, serial))

    def unassign(self, user_name: str, ref: str) -> tuple[Token, Secret, int]:
        from otpgate.admin.inventory import unassign

        store = self.store
        return store.run(
            unassign(store.mapper, self.mapper, user_name, ref, store.config.cas_retries)
        )

    def assign(self, serial: str, user_name: str, max_tokens: int) -> Token:
        from otpgate.admin.inventory import assign  # the flow lives with the admin tasks

        store = self.store
        return store.run(
            assign(
                store.mapper, self.mapper, serial, user_name, max_tokens, store.config.cas_retries
            )
        )


def open_store(config: DirectoryConfig, keyring: Keyring) -> SyncStore:
    return SyncStore(config, keyring, SyncDirectory(config))


__all__ = [
    "SyncConnection",
    "SyncDirectory",
    "SyncInventory",
    "SyncStore",
    "connect",
    "discover_pdc",
    "escape_filter_value",
    "open_store",
]
