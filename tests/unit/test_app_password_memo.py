"""The entry a write returns (and the gateway caches) remembers the app passwords it wrote:
a later change made on that entry, such as enrolling a token, must keep them and their key."""

from __future__ import annotations

import pytest_twisted

from otpgate.admin.apppasswords import create_change, scope_for
from otpgate.admin.enrollment import enroll_change, new_oath_token
from otpgate.tokens import TokenType
from tests.unit.test_app_passwords import MAIL, ldap, login, world
from tests.unit.test_pipeline import START


@pytest_twisted.ensureDeferred
async def test_a_change_on_the_written_entry_keeps_the_app_passwords() -> None:
    w = world()
    scope = scope_for(w.config.app_passwords, listeners=[MAIL], now=START)
    secret, change = create_change("mail", scope, START, 5)
    user = await w.store.resolve("alice", fresh=True)
    created, written = await w.store.update(user, change)
    assert w.store.decode(written).apps == (created.app,)  # the memo of what was written
    token, key = new_oath_token(w.config.otp, TokenType.HOTP, now=START)
    await w.store.update(written, lambda s: enroll_change(s, token, key, 5))
    again = w.store.decode(await w.store.resolve("alice", fresh=True))
    assert again.apps == (created.app,) and again.app_key and again.tokens == (token,)
    assert (await login(w, secret, ldap(MAIL))).ok
    cached = await w.store.resolve("alice")  # the cached entry, as an admin tool reads it
    token2, key2 = new_oath_token(w.config.otp, TokenType.TOTP, now=START)
    await w.store.update(cached, lambda s: enroll_change(s, token2, key2, 5))
    assert (await login(w, secret, ldap(MAIL))).ok
