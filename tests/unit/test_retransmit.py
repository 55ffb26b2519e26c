"""`[radius] failover_replay_seconds`: a NAS's identical retransmission that fails over to
another gateway, on the in-memory directory (two gateways, one directory, one clock).

The attack side: a *different* request carrying the same code (another Request
Authenticator or NAS), the same request after the window, a changed password, a revoked
token, a locked user: all still refused.  The integration test with two twistd gateways
and a NAS-like client is tests/integration/test_radius_failover.py.
"""

from __future__ import annotations

import hmac
import os
from typing import Any

import pytest
import pytest_twisted

from otpgate.auth.retransmit import MAX_WINDOW_SECONDS
from otpgate.errors import ConfigError
from otpgate.otp.oath import hotp
from otpgate.otp.scratch import generate_scratch_list
from otpgate.radius.config import MAX_FAILOVER_REPLAY_SECONDS
from otpgate.tokens import MAX_ACCEPTED_REQUESTS, AcceptedRequest, Token, TokenType, UsedState
from tests.logins import appended, code_only
from tests.unit.test_pipeline import PW, START, World, config

NAS = "192.0.2.10"


def identity() -> bytes:
    """What the RADIUS front end hands the pipeline for one request (any keyed value)."""
    return hmac.digest(b"nas secret", os.urandom(16), "sha256")


def gateways(window: float, layout: str = "user") -> tuple[World, World]:
    a = World(config(layout, radius={"failover_replay_seconds": window}))
    a.directory.add_user("alice", PW)
    return a, a.other_gateway()


async def login(world: World, secret: str, request_id: bytes | None, **kw: Any) -> Any:
    if kw.pop("otp_only", False):
        request: Any = code_only("alice", secret, NAS, "radius", retransmission=request_id)
    else:
        request = appended("alice", secret, NAS, "radius", retransmission=request_id)
    return await world.auth.login(request, world.directory.check_password)


def used_value(world: World) -> list[bytes]:
    (_dn, attrs), = [e for e in world.directory.entries.values() if b"alice" in e[1].get("uid", [])]
    return attrs.get("homepostaladdress", [])


async def stored(world: World) -> UsedState:
    user = await world.store.resolve("alice", fresh=True)
    return world.store.decode(user).used


@pytest.mark.parametrize("layout", ["user", "container"])
@pytest_twisted.ensureDeferred
async def test_off_by_default_the_failover_copy_is_refused_and_nothing_is_stored(
    layout: str,
) -> None:
    a, b = gateways(0, layout)
    key = await a.oath("alice")
    request_id = identity()
    assert (await login(a, PW + hotp(key, 0), request_id)).ok
    again = await login(b, PW + hotp(key, 0), request_id)  # the NAS failed over to b
    assert not again.ok and again.reason == "OTP already used"
    assert (await stored(a)).accepted == ()


@pytest.mark.parametrize("layout", ["user", "container"])
@pytest_twisted.ensureDeferred
async def test_the_identical_request_on_another_gateway_is_accepted_without_a_write(
    layout: str,
) -> None:
    a, b = gateways(10, layout)
    key = await a.oath("alice")
    request_id = identity()
    first = await login(a, PW + hotp(key, 0), request_id)
    assert first.ok and not first.retransmission
    assert len((await stored(a)).accepted) == 1
    writes = b.directory.operations.count("Modify")
    a.clock.advance(3)
    again = await login(b, PW + hotp(key, 0), request_id)
    assert again.ok and again.retransmission and again.token_id == first.token_id
    assert "retransmission" in again.reason
    assert b.directory.operations.count("Modify") == writes  # nothing spent, nothing written
    # a third gateway (or b again, past its duplicate cache) within the window: the same
    assert (await login(a.other_gateway(), PW + hotp(key, 0), request_id)).ok
    # the next code still works, and the spent one is still spent for any other request
    assert (await login(b, PW + hotp(key, 1), identity())).ok


@pytest_twisted.ensureDeferred
async def test_another_request_with_the_same_code_is_refused_as_a_replay() -> None:
    """The attack: the code seen on the wire (or typed again), in a request of its own."""
    a, b = gateways(30)
    key = await a.oath("alice")
    assert (await login(a, PW + hotp(key, 0), identity())).ok
    for world, request_id in ((b, identity()), (a, identity()), (b, None)):
        replay = await login(world, PW + hotp(key, 0), request_id)
        assert not replay.ok and replay.reason == "OTP already used"
    # through a front end that gives no request identity (LDAP, the portal): refused too
    ldap = await b.auth.login(
        appended("alice", PW + hotp(key, 0), NAS, "ldap"), b.directory.check_password
    )
    assert not ldap.ok and ldap.reason == "OTP already used"
    assert (await stored(a)).failures == 0  # a spent code is no guess


@pytest_twisted.ensureDeferred
async def test_the_same_request_after_the_window_is_refused() -> None:
    a, b = gateways(5)
    key = await a.oath("alice")
    request_id = identity()
    a.clock.advance(0.95)  # not on a whole second: the window is kept to the millisecond
    assert (await login(a, PW + hotp(key, 0), request_id)).ok
    a.clock.advance(4.9)
    assert (await login(b, PW + hotp(key, 0), request_id)).ok
    a.clock.advance(0.2)
    late = await login(a.other_gateway(), PW + hotp(key, 0), request_id)
    assert not late.ok and late.reason == "OTP already used"


@pytest_twisted.ensureDeferred
async def test_a_gateway_with_the_option_off_refuses_what_another_recorded() -> None:
    a, _ = gateways(10)
    off = World(config(radius={"failover_replay_seconds": 0}), a.directory)
    off.clock = off.store.clock = off.auth.clock = a.clock
    key = await a.oath("alice")
    request_id = identity()
    assert (await login(a, PW + hotp(key, 0), request_id)).ok
    assert not (await login(off, PW + hotp(key, 0), request_id)).ok


@pytest_twisted.ensureDeferred
async def test_the_password_is_still_checked_and_refusals_still_apply() -> None:
    a, b = gateways(30)
    key = await a.oath("alice")
    request_id = identity()
    assert (await login(a, PW + hotp(key, 0), request_id)).ok
    dn = next(iter(a.directory.passwords))
    a.directory.passwords[dn] = "changed in the meantime"
    changed = await login(b, PW + hotp(key, 0), request_id)
    assert not changed.ok and changed.reason.startswith("wrong password")
    a.directory.passwords[dn] = PW
    # otp-only: the code alone, the same rule
    assert (await login(a, hotp(key, 1), request_id, otp_only=True)).ok
    assert (await login(b, hotp(key, 1), request_id, otp_only=True)).ok
    # a token revoked in the meantime: its request is no longer answered
    user = await a.store.resolve("alice", fresh=True)
    await a.store.update(user, lambda s: _revoke_all(s))
    gone = await login(b, PW + hotp(key, 0), request_id)
    assert not gone.ok


def _revoke_all(state: Any) -> Any:
    from otpgate.directory.records import StateChange

    return StateChange(None, used=state.used.without({t.id for t in state.tokens}), tokens=(),
                       secrets={})


@pytest_twisted.ensureDeferred
async def test_a_locked_user_gets_no_retransmitted_accept() -> None:
    a, b = gateways(30)
    key = await a.oath("alice")
    request_id = identity()
    assert (await login(a, PW + hotp(key, 0), request_id)).ok
    for _ in range(a.config.lockout.max_failures):
        await login(a, PW + "000000" if hotp(key, 5) != "000000" else PW + "111111", None)
    locked = await login(b, PW + hotp(key, 0), request_id)
    assert not locked.ok and locked.reason == "locked out"


@pytest_twisted.ensureDeferred
async def test_scratch_code_retransmission_reports_what_is_left() -> None:
    a, b = gateways(30)
    codes, scratch = generate_scratch_list(5, 8)
    token = Token("s1", TokenType.SCRATCH, int(START), scratch=scratch)
    await a.enroll("alice", token, None)
    request_id = identity()
    first = await login(a, PW + codes[0], request_id)
    again = await login(b, PW + codes[0], request_id)
    assert first.ok and again.ok and again.scratch_remaining == first.scratch_remaining == 4


@pytest_twisted.ensureDeferred
async def test_bounded_expired_dropped_on_write_and_encrypted() -> None:
    a, _ = gateways(30)
    key = await a.oath("alice")
    ids = [identity() for _ in range(MAX_ACCEPTED_REQUESTS + 2)]
    for counter, request_id in enumerate(ids):
        assert (await login(a, PW + hotp(key, counter), request_id)).ok
        a.clock.advance(1)
    kept = (await stored(a)).accepted
    assert len(kept) == MAX_ACCEPTED_REQUESTS
    # the newest are kept: the last request is still answered, the first no longer
    b = a.other_gateway()
    assert (await login(b, PW + hotp(key, len(ids) - 1), ids[-1])).ok
    assert not (await login(b, PW + hotp(key, 0), ids[0])).ok
    # stored only inside the encrypted use state: no digest, no token id in clear
    raw = b"".join(used_value(a))
    assert raw.startswith(b"v1.") and b'"r"' not in raw
    for entry in kept:
        assert entry.digest not in raw and entry.token.encode() not in raw
    # older than any window: dropped by the next write, even one without the option
    a.clock.advance(MAX_WINDOW_SECONDS + 1)
    off = World(config(radius={"failover_replay_seconds": 0}), a.directory)
    off.clock = off.store.clock = off.auth.clock = a.clock
    assert (await login(off, PW + hotp(key, len(ids)), None)).ok
    assert (await stored(a)).accepted == ()


@pytest_twisted.ensureDeferred
async def test_a_miss_keeps_the_recent_accepts() -> None:
    a, b = gateways(30)
    key = await a.oath("alice")
    request_id = identity()
    assert (await login(a, PW + hotp(key, 0), request_id)).ok
    wrong = "000000" if hotp(key, 1) != "000000" else "111111"
    assert not (await login(a, PW + wrong, identity())).ok  # a failure is written
    assert (await stored(a)).failures == 1
    assert (await login(b, PW + hotp(key, 0), request_id)).ok


def test_use_state_round_trip_and_refusals() -> None:
    entry = AcceptedRequest(bytes(range(16)), "t1", 1_700_000_000)
    used = UsedState(accepted=(entry,))
    assert UsedState.from_dict(used.to_dict()) == used
    assert "r" not in UsedState().to_dict()  # nothing new in a state without them
    too_many = {"u": {}, "v": 1, "r": [entry.to_list()] * (MAX_ACCEPTED_REQUESTS + 1)}
    bad_digest = {"u": {}, "v": 1, "r": [["AAAA", "t1", 1]]}
    bad_shape = {"u": {}, "v": 1, "r": [["x", 1]]}
    for doc in (too_many, bad_digest, bad_shape):
        with pytest.raises(ValueError, match="used.r"):
            UsedState.from_dict(doc)


def test_config_bounds_name_the_key() -> None:
    assert MAX_FAILOVER_REPLAY_SECONDS == MAX_WINDOW_SECONDS
    assert config().radius.failover_replay_seconds == 0
    for bad in (-1, 31):
        with pytest.raises(ConfigError, match=r"\[radius\]\.failover_replay_seconds"):
            config(radius={"failover_replay_seconds": bad})
