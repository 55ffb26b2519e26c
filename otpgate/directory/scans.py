"""Scans over every user holding OTP state (the CLI's ``list``, ``rekey``, ``migrate-state``):
paged searches with ldap3, read-only.  Writes go through the state engine (``SyncStore``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from otpgate.directory.ldapdata import SearchEntry
from otpgate.directory.records import UserEntry
from otpgate.directory.sync import SyncStore
from otpgate.errors import DirectoryError


def state_filter(store: SyncStore) -> str:
    """Entries that hold any otpgate value."""
    names = (
        store.config.seed.spec.name,
        store.config.tokens.spec.name,
        store.config.used.spec.name,
    )
    present = "".join(f"({n}=*)" for n in names)
    if store.mapper.container is not None:
        return f"(|{present})"
    return f"(&{store.config.user_filter}(|{present}))"


def users_with_state(store: SyncStore) -> Iterator[UserEntry | tuple[str, DirectoryError]]:
    """Every user holding otpgate values (paged); unreadable ones as (dn, error).

    In the container layout the state entries are read and joined with the users
    they belong to (one paged scan of each); a state entry whose user is gone is
    yielded under its own DN."""
    conn = store.directory.write()
    container = store.mapper.container
    if container is None:
        for found in conn.paged_search(
            store.config.base_dn, state_filter(store), store.mapper.user_attributes
        ):
            try:
                yield store.mapper.entry(found)
            except DirectoryError as exc:
                yield found.dn, exc
        return
    users: dict[bytes, SearchEntry] = {}
    id_attribute = store.config.profile.id_attribute
    for found in conn.paged_search(
        store.config.base_dn, store.config.user_filter, store.mapper.user_attributes
    ):
        entry_id = found.first(id_attribute)
        if entry_id:
            users[entry_id] = found
    for found in conn.paged_search(
        container, state_filter(store), (*store.mapper.state_attributes, "cn")
    ):
        try:
            state = store.mapper.state_entry(found)
            user_found = users.get(state.entry_id)
            if user_found is None:
                yield state
                continue
            user = store.mapper.entry(user_found)
            yield dataclasses.replace(
                user,
                seed=state.seed,
                tokens=state.tokens,
                used=state.used,
                state_exists=True,
                state_classes=state.state_classes,
            )
        except DirectoryError as exc:
            yield found.dn, exc


def user_entries_with_values(store: SyncStore) -> Iterator[SearchEntry]:
    """Every user entry holding any of the three mapped attributes (paged): what
    ``migrate-state`` looks at, whatever the layout."""
    names = (
        store.config.seed.spec.name,
        store.config.tokens.spec.name,
        store.config.used.spec.name,
    )
    present = "".join(f"({n}=*)" for n in names)
    wanted = f"(&{store.config.user_filter}(|{present}))"
    conn = store.directory.write()
    yield from conn.paged_search(store.config.base_dn, wanted, store.mapper.user_attributes)
