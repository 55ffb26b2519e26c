"""Returning a user's hardware token to the inventory (``admin.inventory.unassign``) and the
import's user checks and assignments (``admin.imports``), over the in-memory directory:
the counter goes back with the token, exactly once, and nothing is lost when a step fails."""

from __future__ import annotations

import dataclasses
import os

import pytest
import pytest_twisted

from otpgate.admin.imports import Assigning, add_rows, assign_rows, user_problems
from otpgate.admin.inventory import assign, unassign
from otpgate.directory.drive import run_steps_async
from otpgate.directory.engine import Modify
from otpgate.directory.records import StateChange
from otpgate.errors import DirectoryUnavailable, InventoryError, NoSuchToken, PolicyError
from otpgate.importers.csvfiles import parse_oath_csv
from otpgate.tokens import Secret, Token, TokenType, TokenUse
from tests.unit.test_inventory_steps import drive, token, world
from tests.unit.test_pipeline import PW


async def assigned(w, store, serial: str, name: str) -> Token:
    await store.add(*token(serial))
    return await drive(w, assign(w.store.mapper, store.mapper, serial, name, 5, 3))


async def used_up_to(w, name: str, token_id: str, last: int) -> None:
    user = await w.store.resolve(name, fresh=True)
    await w.store.update(
        user, lambda s: StateChange(None, used=s.used.with_use(token_id, TokenUse(last=last)))
    )


def unassigning(w, store, name: str, ref: str):
    return unassign(w.store.mapper, store.mapper, name, ref, 3)


@pytest_twisted.ensureDeferred
async def test_a_returned_token_keeps_its_counter_for_the_next_user():
    w, store = world()
    w.directory.add_user("ann", PW)
    w.directory.add_user("ben", PW)
    fob = await assigned(w, store, "RET1", "ann")
    await used_up_to(w, "ann", fob.id, 41)
    taken, secret, last = await drive(w, unassigning(w, store, "ann", "RET1"))
    assert (taken.id, last) == (fob.id, 41)
    assert w.store.decode(await w.store.resolve("ann", fresh=True)).tokens == ()
    item = await store.get("RET1")
    assert item.last == 41 and item.secret == secret and item.token.label == "old"
    again = await drive(w, assign(w.store.mapper, store.mapper, "RET1", "ben", 5, 3))
    state = w.store.decode(await w.store.resolve("ben", fresh=True))
    assert state.used.use_of(again.id).last == 41  # codes up to 41 stay spent
    # Once only: the token is no longer ann's.
    with pytest.raises(NoSuchToken):
        await drive(w, unassigning(w, store, "ann", "RET1"))


@pytest_twisted.ensureDeferred
async def test_only_hardware_tokens_go_back():
    w, store = world()
    w.directory.add_user("cat", PW)
    await w.oath("cat", TokenType.TOTP)  # an app: no serial
    state = w.store.decode(await w.store.resolve("cat", fresh=True))
    with pytest.raises(PolicyError, match="without a serial"):
        await drive(w, unassigning(w, store, "cat", state.tokens[0].id))
    assert (await store.list()) == []


@pytest_twisted.ensureDeferred
async def test_a_serial_in_the_inventory_already_leaves_the_user_her_token():
    w, store = world()
    w.directory.add_user("dan", PW)
    await assigned(w, store, "DUP1", "dan")
    await store.add(*token("DUP1"))  # someone imported the same serial again
    with pytest.raises(InventoryError, match="already in the inventory"):
        await drive(w, unassigning(w, store, "dan", "DUP1"))
    state = w.store.decode(await w.store.resolve("dan", fresh=True))
    assert [t.serial for t in state.tokens] == ["DUP1"]


@pytest_twisted.ensureDeferred
async def test_a_token_revoked_meanwhile_removes_the_reservation():
    w, store = world()
    w.directory.add_user("eve", PW)
    fob = await assigned(w, store, "GONE1", "eve")

    async def revoke_it():
        user = await w.store.resolve("eve", fresh=True)
        from otpgate.admin.manage import revoke_change

        await w.store.update(user, lambda s: revoke_change(s, fob.id))

    with pytest.raises(NoSuchToken):
        await drive(w, unassigning(w, store, "eve", fob.id), between=revoke_it)
    with pytest.raises(InventoryError, match="not in the inventory"):
        await store.get("GONE1")


@pytest_twisted.ensureDeferred
async def test_a_failure_to_store_gives_the_token_back_to_the_user():
    w, store = world()
    w.directory.add_user("fay", PW)
    fob = await assigned(w, store, "BACK1", "fay")
    await used_up_to(w, "fay", fob.id, 9)
    value = store.mapper.config.inventory.spec.name
    w.directory.cut = lambda op: (
        isinstance(op, Modify) and op.dn.startswith("cn=BACK1")
        and any(c.attribute == value and c.op == 0 for c in op.changes)
    )
    with pytest.raises(DirectoryUnavailable):  # the gateway's driver: errors go into the step
        await run_steps_async(unassigning(w, store, "fay", "BACK1"),
                              lambda op: w.store._perform(None, op))
    w.directory.cut = None
    state = w.store.decode(await w.store.resolve("fay", fresh=True))
    assert [t.id for t in state.tokens] == [fob.id]
    assert state.used.use_of(fob.id).last == 9
    with pytest.raises(InventoryError, match="not in the inventory"):
        await store.get("BACK1")


@pytest_twisted.ensureDeferred
async def test_import_user_checks_and_assignments():
    w, store = world()
    w.directory.add_user("gil", PW)
    w.directory.add_user("hal", PW)
    for _ in range(5):
        await w.oath("hal", TokenType.HOTP)  # hal has the most devices allowed
    keys = [os.urandom(20).hex() for _ in range(4)]
    result = parse_oath_csv(
        f"I1, {keys[0]}, hotp, 6, , gil\nI2, {keys[1]}, hotp, 6, , nobody\n"
        f"I3, {keys[2]}, hotp, 6, , hal\nI4, {keys[3]}\n"
    )
    problems, users = await drive(w, user_problems(w.store.mapper, result, 5))
    assert sorted(users) == ["gil", "hal"]
    assert [(p.row, p.message.split(":")[0]) for p in problems] == [
        (2, "user 'nobody'"), (3, "user 'hal' has 5 device(s); 1 more would pass the maximum of 5 "
                              "([otp].max_tokens_per_user)")]
    added: list[str] = []
    late = await drive(w, add_rows(store.mapper, result, False, added))
    assert late == [] and added == ["I1", "I2", "I3", "I4"]
    assigning = Assigning(w.store.mapper, 5, 3)
    done = await drive(w, assign_rows(assigning, store.mapper, result, set(added)))
    assert [(a.serial, a.user, a.token is not None) for a in done] == [
        ("I1", "gil", True), ("I2", "nobody", False), ("I3", "hal", False)]
    assert "no user" in done[1].error and "maximum" in done[2].error
    in_stock = sorted(i.serial for i in await store.list())
    assert in_stock == ["I2", "I3", "I4"]  # a row not assigned keeps its token in stock
    gil = w.store.decode(await w.store.resolve("gil", fresh=True))
    assert [t.serial for t in gil.tokens] == ["I1"]


def test_secret_never_in_repr():
    taken = (Token(id="x", type=TokenType.HOTP, created=0, serial="S"), Secret(b"k" * 20), 3)
    assert "kkkk" not in repr(dataclasses.replace(taken[0])) + repr(taken[1])
