"""The thief who signed in to the portal with a stolen device before the help desk reacted:
the session must end whatever the help desk did (reset, a lost device, a suspension) and
whatever the thief did first (revoking the device he signed in with, so that nothing names
it any more).  The real Portal over the in-memory directory and a Clock."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import pytest_twisted

from otpgate.admin.manage import reset_change
from otpgate.admin.suspend import lost_change, suspend_change
from otpgate.otp.oath import hotp
from otpgate.otp.scratch import generate_scratch_list
from otpgate.tokens import TokenType
from otpgate.web.metrics import Metrics
from otpgate.web.portal import Portal
from tests.unit.test_pipeline import PW, World, config

THIEF = "192.0.2.9"


def portal_for(world: World) -> Portal:
    gateway: Any = SimpleNamespace(
        authenticator=world.auth, store=world.store, read_pool=object(), code_sender=None,
        reactor=world.clock, check_password=world.directory.check_password,
        config=world.config, audit=world.auth.audit, replication_guard=None,
        state_acl_guard=None,
    )  # fmt: skip
    gateway.write_pool = gateway.read_pool
    return Portal(gateway, world.config, world.clock, Metrics(), https=True)


async def change(world: World, fn: Any) -> None:
    user = await world.store.resolve("alice", fresh=True)
    await world.store.update(user, fn)


@pytest.mark.parametrize("revoked_first", [True, False])
@pytest.mark.parametrize("helpdesk", ["reset", "lost-other", "suspend-other"])
@pytest_twisted.ensureDeferred
async def test_the_help_desk_ends_a_session_opened_with_the_stolen_device(
    helpdesk: str, revoked_first: bool
) -> None:
    world = World(config("container"))
    world.directory.add_user("alice", PW)
    portal = portal_for(world)
    stolen = await world.oath("alice")
    await world.oath("alice", TokenType.TOTP)  # the victim's other device
    session = await portal._sign_in("alice", PW, hotp(stolen, 0), THIEF, None)
    assert session is not None and session.otp_verified
    state = world.store.decode(await world.store.resolve("alice", fresh=True))
    other = next(t.id for t in state.tokens if t.id != session.token)
    if revoked_first:
        assert (await portal.post_revoke({"token": session.token}, session, THIEF)).status == 200
    now = world.clock.seconds()
    if helpdesk == "reset":
        await change(world, reset_change)
    elif helpdesk == "lost-other":
        _codes, scratch = generate_scratch_list()
        await change(world, lambda s: lost_change(s, other, scratch, int(now) + 86400, now))
    else:
        await change(world, lambda s: suspend_change(s, other, 0, now))
    world.clock.advance(5)
    ended = await portal.session_check(session, THIEF)
    assert ended is not None and ended.status == 403


def test_failed_proofs_are_capped_per_day_whatever_the_logins() -> None:
    """An insider guessing at a TOTP token she does not hold (41 codes accepted per claim)
    and logging in with her own device between tries to clear the lockout: the daily cap
    of failed proofs, which a login does not clear, stops her."""
    from otpgate.admin.claim import MAX_PROOF_FAILURES_PER_DAY, failure_change, proofs_capped
    from otpgate.auth.config import LockoutConfig
    from otpgate.auth.lockout import record_success
    from otpgate.directory.records import OtpState
    from otpgate.tokens import TokenUse, UsedState

    rules = LockoutConfig(max_failures=5, duration_minutes=15)
    state, now = OtpState(), 1_000_000.0
    for _ in range(MAX_PROOF_FAILURES_PER_DAY):
        change = failure_change(now, rules)(state)
        assert change.used is not None
        used = record_success(change.used, "mine", TokenUse(last=1))  # her own login
        state = OtpState(used=used)
        now += 60
    assert proofs_capped(state.used, now)
    assert UsedState.from_dict(state.used.to_dict()) == state.used
    assert not proofs_capped(state.used, now + 86400)


def test_a_bind_cache_longer_than_five_minutes_is_refused() -> None:
    from otpgate.errors import ConfigError

    with pytest.raises(ConfigError, match="bind_cache_seconds"):
        config(ldap_proxy={"bind_cache_seconds": 3600})
    assert config(ldap_proxy={"bind_cache_seconds": 300}).ldap_proxy.bind_cache_seconds == 300


@pytest_twisted.ensureDeferred
async def test_suspend_and_lost_never_find_a_token_by_its_label() -> None:
    """The thief renamed the stolen device "old phone" and her own "phone"."""
    from dataclasses import replace

    from otpgate.errors import OtpgateError

    world = World(config("container"))
    world.directory.add_user("alice", PW)
    await world.oath("alice")
    state = world.store.decode(await world.store.resolve("alice", fresh=True))
    (token,) = state.tokens
    labelled = replace(state, tokens=(replace(token, label="phone"),))
    with pytest.raises(OtpgateError):
        suspend_change(labelled, "phone", 0, world.clock.seconds())
    assert suspend_change(labelled, token.id, 0, world.clock.seconds()).used is not None
