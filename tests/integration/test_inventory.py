"""The token inventory in the directory, and assignment to users, on all three backends."""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from otpgate.admin.inventory import assign_token
from otpgate.directory.store import InventoryStore
from otpgate.errors import InventoryError
from otpgate.otp.oath import hotp
from otpgate.service import Gateway
from otpgate.tokens import Secret, Token, TokenType
from otpgate.vault import Keyring
from tests.logins import code_only


def inventory_dn(backend) -> str:
    return backend.inventory_dn()


def hardware(serial, key):
    return Token(id=os.urandom(4).hex(), type=TokenType.HOTP, created=0, serial=serial,
                 label=f"key fob {serial}"), Secret(key)


@pytest_twisted.ensureDeferred
async def test_inventory_add_list_assign_delete(backend):
    config = backend.config({"inventory_dn": inventory_dn(backend)})
    gw = Gateway(config, Keyring.load(backend.keyring), reactor)
    inventory = InventoryStore(config.directory, Keyring.load(backend.keyring), gw.store)
    prefix = f"{backend.name}-{os.getpid()}-{os.urandom(2).hex()}"
    try:
        keys = {f"{prefix}-{i}": os.urandom(20) for i in range(3)}
        for serial, key in keys.items():
            item = await inventory.add(*hardware(serial, key))
            assert item.secret.key == key and item.token.serial == serial
        with pytest.raises(InventoryError, match="already in the inventory"):
            await inventory.add(*hardware(f"{prefix}-0", os.urandom(20)))
        with pytest.raises(InventoryError, match="serial"):
            await inventory.add(*hardware("bad,serial", os.urandom(20)))
        listed = [i.serial for i in await inventory.list() if i.serial.startswith(prefix)]
        assert listed == sorted(keys)
        # stored value is ciphertext bound to the inventory entry
        raw = (await inventory.get(f"{prefix}-0")).raw
        assert keys[f"{prefix}-0"] not in raw and keys[f"{prefix}-0"].hex().encode() not in raw

        name, _dn = backend.new_user("inv")
        serial = f"{prefix}-1"
        # two admins assign the same serial at once: exactly one succeeds
        results = await defer.DeferredList(
            [defer.ensureDeferred(assign_token(inventory, serial, name, 5)) for _ in range(2)],
            consumeErrors=True,
        )
        assert sorted(ok for ok, _ in results) == [False, True]
        assert any(not ok and r.check(InventoryError) for ok, r in results)
        state = gw.store.decode(await gw.store.resolve(name))
        assert [t.serial for t in state.tokens] == [serial]
        assert serial not in [i.serial for i in await inventory.list()]
        key = keys[serial]
        result = await gw.authenticator.login(
            code_only(name, hotp(key, 0), None, "test"))
        assert result.ok, result.reason

        # assigning to a user who does not exist leaves the token in the inventory
        with pytest.raises(Exception, match="no user"):
            await assign_token(inventory, f"{prefix}-2", "no-such-user-xyz", 5)
        assert (await inventory.get(f"{prefix}-2")).secret.key == keys[f"{prefix}-2"]

        for serial in (f"{prefix}-0", f"{prefix}-2"):
            await inventory.delete(serial)
        assert not [i for i in await inventory.list() if i.serial.startswith(prefix)]
    finally:
        gw.close()
