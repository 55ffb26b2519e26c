"""The low-scratch warning (``[delivery] scratch_warning``): claimed once per list inside the
compare-and-swap that spends the code, on an in-memory directory; the use state's ``w``
round trip; the config rule; the message text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from otpgate.auth.pipeline import Authenticator
from otpgate.configfile import Section
from otpgate.errors import ConfigError
from otpgate.otp.scratch import generate_scratch_list
from otpgate.outofband.config import parse_delivery
from otpgate.outofband.lowscratch import low_scratch_mail
from otpgate.tokens import Token, TokenType, TokenUse, UsedState
from tests.logins import code_only
from tests.unit.test_pipeline import PW, World, config

SMTP = {"host": "127.0.0.1", "security": "none", "from": "otpgate@example.org"}


def warning_world(enabled: bool = True, threshold: int = 3, layout: str = "user") -> World:
    delivery: dict[str, Any] = {"smtp": [SMTP], "scratch_warning": enabled}
    world = World(config(layout, otp={"scratch_low_threshold": threshold}, delivery=delivery))
    world.directory.add_user("alice", PW)
    return world


def notified(world: World) -> list[tuple[str, str, int]]:
    calls: list[tuple[str, str, int]] = []
    world.auth.notify_low_scratch = lambda dn, token, left: calls.append((dn, token, left))
    return calls


async def scratch_list(world: World, n: int = 5) -> list[str]:
    codes, scratch = generate_scratch_list(n, 8)
    await world.enroll("alice", Token(id="s1", type=TokenType.SCRATCH, created=0,
                                      scratch=scratch), None)
    return codes


async def scratch_id(world: World) -> str:
    user = await world.store.resolve("alice", fresh=True)
    return next(t.id for t in world.store.decode(user).tokens if t.type is TokenType.SCRATCH)


async def warned(world: World) -> bool:
    user = await world.store.resolve("alice", fresh=True)
    return world.store.decode(user).used.use_of(await scratch_id(world)).warned


def test_token_use_round_trip() -> None:
    plain = TokenUse(3, 0, 17, frozenset({1, 2}))
    assert "w" not in plain.to_dict()  # values written before the field are unchanged
    assert TokenUse.from_dict(plain.to_dict()) == plain
    claimed = TokenUse(-1, 0, 17, frozenset({0}), warned=True)
    assert claimed.to_dict()["w"] is True
    assert TokenUse.from_dict(claimed.to_dict()) == claimed
    assert TokenUse.from_dict({"l": -1, "x": [0]}).warned is False
    used = UsedState({"s1": claimed})
    assert UsedState.from_dict(used.to_dict()) == used
    with pytest.raises(ValueError, match=r"used\.token\.w"):
        TokenUse.from_dict({"l": -1, "w": 1})


@pytest.mark.parametrize("layout", ["user", "container"])
@pytest_twisted.ensureDeferred
async def test_one_warning_per_list_when_it_falls_below_the_threshold(layout: str) -> None:
    world = warning_world(layout=layout)
    calls = notified(world)
    codes = await scratch_list(world)
    dn = (await world.store.resolve("alice")).dn
    results = [await world.login("alice", PW + code) for code in codes[:2]]
    assert [r.scratch_remaining for r in results] == [4, 3]
    assert calls == [] and not await warned(world)
    crossing = await world.auth.login(code_only("alice", codes[2]))  # 2 left < 3
    assert crossing.ok and crossing.low_scratch_warning == 2
    assert calls == [(dn, await scratch_id(world), 2)] and await warned(world)
    for code in codes[3:]:
        later = await world.login("alice", PW + code)
        assert later.ok and later.low_scratch_warning is None
    assert len(calls) == 1
    # A new list starts unwarned.
    fresh = await scratch_list(world, 3)
    first = await world.login("alice", PW + fresh[0])
    assert first.low_scratch_warning == 2 and len(calls) == 2


@pytest_twisted.ensureDeferred
async def test_two_gateways_claim_it_once() -> None:
    """The second gateway decides on a cached entry that predates the claim: its write
    loses, it re-reads, and the list is already claimed."""
    one = warning_world()
    two = one.other_gateway()
    calls = notified(one)
    calls_two = notified(two)
    codes = await scratch_list(one)
    assert (await one.login("alice", PW + codes[0])).ok
    assert (await two.login("alice", PW + codes[1])).ok  # both have the entry cached
    assert (await one.login("alice", PW + codes[2])).low_scratch_warning == 2
    later = await two.login("alice", PW + codes[3])
    assert later.ok and later.scratch_remaining == 1 and later.low_scratch_warning is None
    assert len(calls) + len(calls_two) == 1


@pytest_twisted.ensureDeferred
async def test_a_wrong_password_still_carries_the_claim() -> None:
    """The code was spent and the claim written: the warning goes out, the login fails."""
    world = warning_world(threshold=5)
    calls = notified(world)
    codes = await scratch_list(world)
    result = await world.login("alice", "wrong" + codes[0])
    assert not result.ok and result.low_scratch_warning == 4
    assert len(calls) == 1 and calls[0][1:] == (await scratch_id(world), 4)


@pytest_twisted.ensureDeferred
async def test_off_claims_nothing() -> None:
    world = warning_world(enabled=False)
    calls = notified(world)
    codes = await scratch_list(world)
    for code in codes:
        result = await world.login("alice", PW + code)
        assert result.ok and result.low_scratch_warning is None
    assert calls == [] and not await warned(world)


@pytest_twisted.ensureDeferred
async def test_a_failing_notifier_does_not_change_the_login() -> None:
    world = warning_world(threshold=5)

    def broken(dn: str, token: str, left: int) -> None:
        raise RuntimeError("boom")

    world.auth.notify_low_scratch = broken
    codes = await scratch_list(world)
    assert (await world.login("alice", PW + codes[0])).ok
    assert isinstance(world.auth, Authenticator)


def test_the_warning_needs_mail_servers(tmp_path: Path) -> None:
    doc = {"scratch_warning": True, "sms_http": []}
    with pytest.raises(ConfigError, match=r"\[delivery\]\.scratch_warning"):
        parse_delivery(Section(doc, "delivery"), tmp_path)
    off = parse_delivery(Section({"smtp": [SMTP]}, "delivery"), tmp_path)
    assert off is not None and not off.scratch_warning
    on = parse_delivery(Section({"smtp": [SMTP], "scratch_warning": True}, "delivery"), tmp_path)
    assert on is not None and on.scratch_warning


def test_the_message_says_how_many_and_what_to_do() -> None:
    text = low_scratch_mail(2, "Example").text
    assert "Only 2 backup codes left" in text and "help desk" in text and "portal" in text
    assert "1 backup code left" in low_scratch_mail(1, "Example").text
    assert "No backup codes are left" in low_scratch_mail(0, "Example").text
