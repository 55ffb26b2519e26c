"""Assigning inventory tokens to users."""

from __future__ import annotations

from otpgate.admin.enrollment import enroll_change
from otpgate.directory.inventory import InventoryError
from otpgate.directory.store import InventoryStore
from otpgate.tokens import Token


async def assign_token(
    inventory: InventoryStore, serial: str, user_name: str, max_tokens: int
) -> Token:
    """Move the token ``serial`` from the inventory to ``user_name``'s tokens, exactly once."""
    store = inventory.store
    user = await store.resolve(user_name)  # before claiming: a typo costs nothing
    item = await inventory.claim(serial)
    token, secret = item.token, item.secret
    if token is None or secret is None:
        await inventory.release(item)
        raise InventoryError(f"serial {serial}: inventory entry holds no token")
    try:
        await store.update(
            user, lambda state: enroll_change(state, token, secret, max_tokens, False)
        )
    except BaseException:
        await inventory.release(item)
        raise
    await inventory.remove(item)
    return token
