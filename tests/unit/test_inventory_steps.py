"""The inventory's steps (pure, over the in-memory directory): a claim and a rewrite that
meet a concurrent change read again and retry instead of failing; two claims of one serial
still give it to exactly one."""

from __future__ import annotations

import dataclasses

import pytest
import pytest_twisted

from otpgate.directory import inventory as inv
from otpgate.directory.inventory import InventoryMapper
from otpgate.directory.store import InventoryStore
from otpgate.errors import InventoryError
from otpgate.admin.enrollment import new_oath_token
from otpgate.auth.config import OtpConfig
from otpgate.tokens import Secret, Token, TokenType
from tests.unit.test_pipeline import KEYRING, World, config

INVENTORY = "ou=inventory,dc=x"


def world() -> tuple[World, InventoryStore]:
    w = World(config(directory={"inventory_dn": INVENTORY}))
    w.directory.entries[INVENTORY] = (INVENTORY, {"objectclass": [b"organizationalUnit"]})
    return w, InventoryStore(w.config.directory, KEYRING, w.store)


def token(serial: str) -> tuple[Token, Secret]:
    made, secret = new_oath_token(OtpConfig(), TokenType.HOTP, label="old")
    return dataclasses.replace(made, serial=serial), secret


async def drive(w: World, step, between=None):
    """Run ``step`` over the in-memory directory; ``between`` runs once, after its first
    answer (another admin acting in the middle)."""
    answer, first = None, True
    try:
        while True:
            op = step.send(answer)
            answer = await w.store._perform(None, op)
            if first and between is not None:
                first = False
                await between()
    except StopIteration as done:
        return done.value


@pytest_twisted.ensureDeferred
async def test_a_claim_that_meets_a_rename_reads_again_and_claims():
    w, store = world()
    await store.add(*token("SN1"))
    mapper: InventoryMapper = store.mapper

    async def rename():
        await drive(w, inv.rewrite(mapper, "SN1", lambda it: (
            dataclasses.replace(it.token, label="new"), it.secret, it.last)))

    item = await drive(w, inv.claim(mapper, "SN1"), between=rename)
    assert item.token is not None and item.token.label == "new"
    with pytest.raises(InventoryError, match="just taken"):
        await drive(w, inv.claim(mapper, "SN1"))


@pytest_twisted.ensureDeferred
async def test_a_rewrite_that_meets_another_rewrite_applies_to_the_new_value():
    w, store = world()
    await store.add(*token("SN2"))
    mapper = store.mapper

    async def other():
        await drive(w, inv.rewrite(mapper, "SN2", lambda it: (
            dataclasses.replace(it.token, label="theirs"), it.secret, it.last)))

    seen: list[str] = []

    def mine(it):
        seen.append(it.token.label)
        return dataclasses.replace(it.token, label=it.token.label + "+mine"), it.secret, it.last

    await drive(w, inv.rewrite(mapper, "SN2", mine), between=other)
    final = await store.get("SN2")
    assert seen == ["old", "theirs"] and final.token.label == "theirs+mine"


@pytest_twisted.ensureDeferred
async def test_a_claimed_token_is_not_rewritten():
    w, store = world()
    await store.add(*token("SN3"))
    await store.claim("SN3")
    assert await drive(w, inv.rewrite(store.mapper, "SN3", lambda it: pytest.fail("asked"))) is None
