"""Assigning inventory tokens to users: one flow, two drivers.

claim (delete the exact stored value: exactly one admin wins) -> enroll into the user's
state (compare-and-swap) -> remove the inventory entry; if the enrollment fails the token
goes back (release).  The decisions are the pure functions below; ``assign_token`` (the
gateway's async store) and ``assign_token_sync`` (the CLI's ldap3 store) only sequence
the I/O.
"""

from __future__ import annotations

from collections.abc import Callable

from otpgate.admin.enrollment import enroll_change
from otpgate.directory.inventory import InventoryError, InventoryItem
from otpgate.directory.state import OtpState, StateChange
from otpgate.directory.store import InventoryStore
from otpgate.directory.sync import SyncInventory
from otpgate.tokens import Secret, Token


def claimed_token(item: InventoryItem) -> tuple[Token, Secret]:
    """What a claimed inventory entry holds; InventoryError if it holds nothing usable."""
    if item.token is None or item.secret is None:
        raise InventoryError(f"serial {item.serial}: inventory entry holds no token")
    return item.token, item.secret


def assign_change(item: InventoryItem, max_tokens: int) -> Callable[[OtpState], StateChange[Token]]:
    """The state change that gives the claimed token to the user (kept beside software
    tokens: hardware never replaces a phone app)."""
    token, secret = claimed_token(item)
    return lambda state: enroll_change(state, token, secret, max_tokens, False, item.last)


async def assign_token(
    inventory: InventoryStore, serial: str, user_name: str, max_tokens: int
) -> Token:
    """Move the token ``serial`` from the inventory to ``user_name``'s tokens, exactly once."""
    store = inventory.store
    user = await store.resolve(user_name)  # before claiming: a typo costs nothing
    item = await inventory.claim(serial)
    try:
        token, _user = await store.update(user, assign_change(item, max_tokens))
    except BaseException:
        await inventory.release(item)
        raise
    await inventory.remove(item)
    return token


def assign_token_sync(
    inventory: SyncInventory, serial: str, user_name: str, max_tokens: int
) -> Token:
    """The same flow over ldap3 (the CLI)."""
    store = inventory.store
    user = store.resolve(user_name)
    item = inventory.claim(serial)
    try:
        token, _user = store.update(user, assign_change(item, max_tokens))
    except BaseException:
        inventory.release(item)
        raise
    inventory.remove(item)
    return token
