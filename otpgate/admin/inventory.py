"""Assigning inventory tokens to users: one flow, as a state-engine step.

claim (delete the exact stored value: exactly one admin wins) -> enroll into the user's
state (compare-and-swap) -> remove the inventory entry; if the enrollment fails the token
goes back (release).  ``assign`` is run by either driver: ``InventoryStore.flow`` (the
gateway's portal: replication guard, entry cache) or ``SyncStore.run`` (the CLI).
"""

from __future__ import annotations

from collections.abc import Callable

from otpgate.admin.enrollment import enroll_change
from otpgate.directory import engine
from otpgate.directory import inventory as inv
from otpgate.directory.engine import Step
from otpgate.directory.inventory import InventoryItem, InventoryMapper
from otpgate.directory.records import OtpState, StateChange
from otpgate.directory.state import StateMapper
from otpgate.directory.store import InventoryStore
from otpgate.errors import InventoryError
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
