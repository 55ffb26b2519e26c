"""Assigning inventory tokens to users, and giving them back: one flow each, as
state-engine steps.

``assign``: claim (delete the exact stored value: exactly one admin wins) -> enroll into the
user's state (compare-and-swap) -> remove the inventory entry; if the enrollment fails the
token goes back (release).

``unassign``: reserve ``cn=<serial>`` in the inventory (an entry without a token: nobody can
claim it, and of two admins returning one token the second gets entryAlreadyExists) ->
take the token out of the user's state (compare-and-swap: its secret and last used counter
as they are at that write, so no code used before can be used again) -> store it in the
reserved entry.  If taking fails the reservation is removed; if storing fails the token is
given back to the user.

Both are run by either driver: ``InventoryStore.flow`` (the gateway's portal: replication
guard, entry cache) or ``SyncStore.run`` (the CLI).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from otpgate.admin.enrollment import enroll_change
from otpgate.admin.manage import find_token, revoke_change
from otpgate.directory import engine
from otpgate.directory import inventory as inv
from otpgate.directory.engine import Step
from otpgate.directory.inventory import InventoryItem, InventoryMapper
from otpgate.directory.records import OtpState, StateChange
from otpgate.directory.state import StateMapper
from otpgate.directory.store import InventoryStore
from otpgate.errors import InventoryError, NoSuchToken, PolicyError
from otpgate.tokens import Secret, Token, TokenType, check_label

HARDWARE = (TokenType.HOTP, TokenType.TOTP, TokenType.YUBICO)
"""What can go back to the inventory: a device with a serial (not an app, a list or a
phone number)."""


def claimed_token(item: InventoryItem) -> tuple[Token, Secret]:
    """What a claimed inventory entry holds; InventoryError if it holds nothing usable."""
    if item.token is None or item.secret is None:
        raise InventoryError(f"serial {item.serial}: inventory entry holds no token")
    return item.token, item.secret


def relabel(label: str) -> inv.Rewrite:
    """The rewrite of ``otpgate rename`` and the portal's rename: the same token under a
    new label (ValueError at once for a label that may not be stored)."""
    check_label(label)
    if len(label) > 64:
        raise ValueError("label: at most 64 characters")

    def change(item: InventoryItem) -> tuple[Token, Secret, int] | None:
        if item.token is None or item.secret is None:
            return None  # being assigned: nothing to rename
        return dataclasses.replace(item.token, label=label), item.secret, item.last

    return change


def assign_change(item: InventoryItem, max_tokens: int) -> Callable[[OtpState], StateChange[Token]]:
    """The state change that gives the claimed token to the user (kept beside software
    tokens: hardware never replaces a phone app)."""
    token, secret = claimed_token(item)
    return lambda state: enroll_change(state, token, secret, max_tokens, False, item.last)


def assign(
    mapper: StateMapper,
    inventory: InventoryMapper,
    serial: str,
    user_name: str,
    max_tokens: int,
    retries: int,
) -> Step[Token]:
    """Move the token ``serial`` from the inventory to ``user_name``'s tokens, exactly once."""
    user = yield from engine.resolve(mapper, user_name)  # before claiming: a typo costs nothing
    item = yield from inv.claim(inventory, serial)
    try:
        done = yield from engine.update(mapper, user, assign_change(item, max_tokens), retries)
    except Exception:
        yield from inv.release(inventory, item)
        raise
    yield from inv.delete(inventory, item.serial)
    token: Token = done.result
    return token


async def assign_token(
    inventory: InventoryStore, serial: str, user_name: str, max_tokens: int
) -> Token:
    """``assign`` run by the gateway's driver (the portal)."""
    store = inventory.store
    step = assign(
        store.mapper, inventory.mapper, serial, user_name, max_tokens, store.config.cas_retries
    )
    return await inventory.flow(step, user_name)


def not_returnable(token: Token) -> str | None:
    """Why ``token`` cannot go back to the inventory; None if it can."""
    if token.type not in HARDWARE:
        return f"a {token.type.value} token is not a hardware token"
    if not token.serial:
        return "a token without a serial is no inventory token (an app, enrolled directly)"
    return None


Taken = tuple[Token, Secret, int]
"""A token taken out of a user's state: its record, its secret, its last used counter."""


def take_change(token_id: str) -> Callable[[OtpState], StateChange[Taken]]:
    """Remove the token ``token_id`` from the freshly read state, keeping what the
    inventory needs (secret, last used counter as of this very write)."""

    def change(state: OtpState) -> StateChange[Taken]:
        token = next((t for t in state.tokens if t.id == token_id), None)
        if token is None:
            raise NoSuchToken(f"token {token_id} is no longer the user's")
        secret = state.secrets.get(token.id)
        if secret is None:
            raise PolicyError(f"token {token_id} has no stored secret")
        gone = revoke_change(state, token.id)
        last = state.used.use_of(token.id).last
        return StateChange(  # the app passwords made with it go too
            (token, secret, last), gone.used, gone.tokens, gone.secrets,
            apps=gone.apps, app_key=gone.app_key,
        )  # fmt: skip

    return change


def unassign(
    mapper: StateMapper,
    inventory: InventoryMapper,
    user_name: str,
    ref: str,
    retries: int,
) -> Step[Taken]:
    """Return ``user_name``'s hardware token ``ref`` (id, serial or label) to the inventory
    with its counter, exactly once."""
    user = yield from engine.resolve(mapper, user_name)
    token = find_token(mapper.decode(user, with_secrets=False), ref)
    why = not_returnable(token)
    if why is not None:
        raise PolicyError(f"token {token.id}: {why}")
    dn = yield from inv.reserve(inventory, token.serial)
    try:
        done = yield from engine.update(mapper, user, take_change(token.id), retries)
    except Exception:
        yield engine.Delete(dn)
        raise
    taken: Taken = done.result
    returned, secret, last = taken
    try:
        yield from inv.fill(inventory, returned, secret, last)
    except Exception:
        # Never lose a token: it goes back to the user as it was.
        def give_back(state: OtpState) -> StateChange[Token]:
            return enroll_change(state, returned, secret, len(state.tokens) + 1, False, last)

        yield from engine.update(mapper, done.user, give_back, retries)
        yield engine.Delete(dn)
        raise
    return taken


async def unassign_token(inventory: InventoryStore, user_name: str, ref: str) -> Taken:
    """``unassign`` run by the gateway's driver (the portal)."""
    store = inventory.store
    step = unassign(store.mapper, inventory.mapper, user_name, ref, store.config.cas_retries)
    return await inventory.flow(step, user_name)
