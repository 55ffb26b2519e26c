"""Claiming an inventory token with proof of possession, resynchronising and renaming, without
a server: the HOTP search (RFC 4226 vectors, the window's edges, consecutive codes only,
forward only, the same work whatever the codes), the proofs of each kind, and the flow over
the in-memory directory (exactly one of two claims, the token back on a failed enrollment,
the proving codes spent, failures counted towards lockout).  The portal over HTTP and in
Chromium against slapd and Samba AD: tests/integration/test_web_claim.py."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer

import otpgate.otp.oath as oath
from otpgate.admin import claim as claim_module
from otpgate.admin.claim import (
    CLAIM_TOTP_SECONDS,
    ClaimKind,
    Proof,
    Unavailable,
    claim_token,
    claimable,
    code_problem,
    failure_change,
    prove,
    totp_claim_window,
)
from otpgate.admin.manage import advance_change, rename_change
from otpgate.auth.config import LockoutConfig
from otpgate.directory.inventory import InventoryItem
from otpgate.directory.records import OtpState
from otpgate.directory.store import InventoryStore
from otpgate.errors import NoSuchToken, PolicyError
from otpgate.otp.oath import (
    MAX_COUNTER,
    RESYNC_WINDOW,
    Algorithm,
    find_consecutive,
    hotp,
    hotp_values,
    resync_hotp,
    totp,
)
from otpgate.otp.yubico import modhex_encode
from otpgate.tokens import Secret, Token, TokenType, TokenUse, UsedState
from tests.unit.test_pipeline import KEYRING, PW, START, World, config
from tests.unit.test_yubico import run_ykgenerate, ykgenerate  # noqa: F401 (fixture)

RFC4226_KEY = b"12345678901234567890"
RFC4226_CODES = [
    "755224", "287082", "359152", "969429", "338314",
    "254676", "287922", "162583", "399871", "520489",
]  # fmt: skip
INVENTORY = "ou=inventory,dc=x"


def codes_at(key: bytes, first: int, count: int = 3, **kw: Any) -> list[str]:
    return [hotp(key, c, **kw) for c in range(first, first + count)]


# -- the search ----------------------------------------------------------------------------------


def test_hotp_values_are_the_rfc4226_codes() -> None:
    assert [str(v).zfill(6) for v in hotp_values(RFC4226_KEY, 0, 10)] == RFC4226_CODES
    for algorithm in Algorithm:
        for key in (os.urandom(10), os.urandom(64), os.urandom(65), os.urandom(200)):
            for digits in (6, 7, 8):
                values = hotp_values(key, 10**9, 20, digits, algorithm)
                expected = [hotp(key, c, digits, algorithm) for c in range(10**9, 10**9 + 20)]
                assert [str(v).zfill(digits) for v in values] == expected


def test_rfc4226_vectors_found_as_consecutive_codes() -> None:
    assert find_consecutive(RFC4226_KEY, RFC4226_CODES[0:3], -1) == 0
    assert find_consecutive(RFC4226_KEY, RFC4226_CODES[4:7], -1) == 4
    assert resync_hotp(RFC4226_KEY, tuple(RFC4226_CODES[7:10]), -1) == 9  # type: ignore[arg-type]


def test_three_consecutive_codes_at_the_window_edge() -> None:
    key = os.urandom(20)
    last = 41
    edge = last + RESYNC_WINDOW  # the first code's counter may be last + 1 ... last + window
    assert find_consecutive(key, codes_at(key, edge), last) == edge
    assert find_consecutive(key, codes_at(key, edge + 1), last) is None
    assert find_consecutive(key, codes_at(key, last + 1), last) == last + 1
    small = 50
    assert find_consecutive(key, codes_at(key, last + small), last, window=small) == last + small
    assert find_consecutive(key, codes_at(key, last + small + 1), last, window=small) is None


def test_codes_that_are_not_consecutive_are_refused() -> None:
    key = os.urandom(20)
    a, b, c, d = codes_at(key, 500, 4)
    assert find_consecutive(key, [a, b, c], -1) == 500
    assert find_consecutive(key, [a, c, d], -1) is None  # one skipped
    assert find_consecutive(key, [b, a, c], -1) is None  # out of order
    assert find_consecutive(key, [a, a, a], -1) is None
    assert find_consecutive(key, [a, b], -1) == 500  # the caller decides how many are needed
    assert find_consecutive(key, [], -1) is None
    assert find_consecutive(key, [a, b, "12345"], -1) is None  # malformed
    assert find_consecutive(key, [a, b, "１２３４５６"], -1) is None  # not ASCII digits


def test_the_counter_only_moves_forward() -> None:
    key = os.urandom(20)
    codes = codes_at(key, 100)
    assert find_consecutive(key, codes, 99) == 100
    assert find_consecutive(key, codes, 100) is None  # the first code is spent
    assert find_consecutive(key, codes, 5_000) is None  # long behind
    # The largest storable counter bounds the third code.
    assert resync_hotp(key, tuple(codes_at(key, MAX_COUNTER - 2)), MAX_COUNTER - 3) == MAX_COUNTER  # type: ignore[arg-type]
    assert resync_hotp(key, tuple(codes_at(key, MAX_COUNTER - 1, 2)) + ("000000",), MAX_COUNTER - 2) is None  # type: ignore[arg-type]


def test_the_search_does_the_same_work_whatever_the_codes(monkeypatch: Any) -> None:
    """Every counter of the window is computed, and every position compared: a match at the
    start, at the end or none at all cost the same (the time tells match or no match at most
    by the few appends of a hit)."""
    calls: list[tuple[int, int]] = []
    real = oath.hotp_values

    def counting(key: bytes, start: int, count: int, *a: Any) -> list[int]:
        calls.append((start, count))
        return real(key, start, count, *a)

    monkeypatch.setattr(oath, "hotp_values", counting)
    key = os.urandom(20)
    for codes in (codes_at(key, 0), codes_at(key, 999), ["000000"] * 3):
        find_consecutive(key, codes, -1, window=1000)
    assert calls == [(0, 1002)] * 3


# -- proofs --------------------------------------------------------------------------------------


def item_of(token: Token, secret: Secret, last: int = -1) -> InventoryItem:
    return InventoryItem(token.serial, f"cn={token.serial},{INVENTORY}", b"id", b"raw", token,
                         secret, last)  # fmt: skip


def hotp_item(last: int = -1, digits: int = 6) -> tuple[InventoryItem, bytes]:
    key = os.urandom(20)
    token = Token(id="f1", type=TokenType.HOTP, created=0, serial="FOB1", digits=digits)
    return item_of(token, Secret(key), last), key


def test_hotp_proof_records_the_third_code() -> None:
    item, key = hotp_item(last=10)
    assert prove(item, ClaimKind.HOTP, codes_at(key, 5000), START) == Proof(5002)
    assert prove(item, ClaimKind.HOTP, codes_at(key, 5), START) is None  # before its last
    assert prove(item, ClaimKind.HOTP, codes_at(key, 5000)[:1], START) is None  # one code
    assert prove(item, ClaimKind.TOTP, codes_at(key, 5000)[:1], START) is None  # wrong kind
    eight, key8 = hotp_item(digits=8)
    assert prove(eight, ClaimKind.HOTP, codes_at(key8, 0, digits=8), START) == Proof(2)
    assert prove(eight, ClaimKind.HOTP, codes_at(key8, 0), START) is None  # 6 digits typed


def test_unknown_and_unusable_items_cost_the_same_search(monkeypatch: Any) -> None:
    """An unknown (None), taken or other-kind item is verified against a random stand-in
    key shaped by the input: the same full HOTP search as a real token."""
    windows: list[int] = []
    real = claim_module.find_consecutive

    def spy(*args: Any, **kw: Any) -> Any:
        windows.append(kw["window"])
        return real(*args, **kw)

    monkeypatch.setattr(claim_module, "find_consecutive", spy)
    item, key = hotp_item()
    wrong = ["123456"] * 3
    assert prove(item, ClaimKind.HOTP, wrong, START) is None
    assert prove(None, ClaimKind.HOTP, wrong, START) is None
    totp_token = Token(id="t1", type=TokenType.TOTP, created=0, serial="T1")
    assert prove(item_of(totp_token, Secret(key)), ClaimKind.HOTP, wrong, START) is None
    assert prove(None, ClaimKind.HOTP, codes_at(key, 0), START) is None  # a real token's codes
    assert windows == [RESYNC_WINDOW] * 4


def test_totp_proof_in_a_wide_window_learns_the_drift() -> None:
    key = os.urandom(20)
    token = Token(id="t1", type=TokenType.TOTP, created=0, serial="T1", period=30)
    item = item_of(token, Secret(key))
    assert totp_claim_window(30) == 20 and totp_claim_window(60) == 10
    assert totp_claim_window(1) == 64  # bounded by the drift the gateway can learn
    now = START
    ahead = prove(item, ClaimKind.TOTP, [totp(key, now + 9 * 60)], now)
    assert ahead is not None and ahead.drift == 18 and ahead.last == int(now // 30) + 18
    behind = prove(item, ClaimKind.TOTP, [totp(key, now - CLAIM_TOTP_SECONDS)], now)
    assert behind is not None and behind.drift == -20
    assert prove(item, ClaimKind.TOTP, [totp(key, now + 11 * 60)], now) is None
    assert prove(item, ClaimKind.HOTP, [totp(key, now)] * 3, now) is None
    spent = item_of(token, Secret(key), last=int(now // 30) + 18)
    assert prove(spent, ClaimKind.TOTP, [totp(key, now + 9 * 60)], now) is None


def test_yubico_proof_needs_the_items_public_id(ykgenerate: str) -> None:  # noqa: F811
    key, uid = os.urandom(16), os.urandom(6)
    public = modhex_encode(os.urandom(6))
    token = Token(id="y1", type=TokenType.YUBICO, created=0, serial="yk1", public_id=public)
    item = item_of(token, Secret(key, uid))
    otp = public + run_ykgenerate(ykgenerate, key, uid, 7, 0x1234, 0x56, 3)
    assert prove(item, ClaimKind.YUBICO, [otp], START) == Proof(7 << 8 | 3)
    other = modhex_encode(os.urandom(6))
    assert prove(item, ClaimKind.YUBICO, [other + otp[len(public):]], START) is None
    assert prove(item_of(token, Secret(key, uid), last=7 << 8 | 3), ClaimKind.YUBICO, [otp],
                 START) is None  # fmt: skip
    assert prove(None, ClaimKind.YUBICO, [otp], START) is None
    assert code_problem(ClaimKind.YUBICO, otp) is None
    assert code_problem(ClaimKind.YUBICO, "123456") is not None
    assert code_problem(ClaimKind.HOTP, "12345") is not None
    assert code_problem(ClaimKind.TOTP, "12345678") is None


# -- what is written -----------------------------------------------------------------------------


def test_failures_count_towards_lockout() -> None:
    rules = LockoutConfig(max_failures=3, duration_minutes=15)
    state = OtpState()
    for expected_locked in (False, False, True):
        change = failure_change(START, rules)(state)
        assert change.result is expected_locked and change.used is not None
        state = dataclasses.replace(state, used=change.used)
    assert state.used.locked_until == int(START) + 15 * 60
    again = failure_change(START + 1, rules)(state)
    assert again.result is True and not again.writes  # locked: nothing more to write


def test_rename_checks_the_label() -> None:
    token = Token(id="a1", type=TokenType.TOTP, created=0, label="phone")
    state = OtpState(tokens=(token,))
    renamed = rename_change(state, "a1", "  work phone ")
    assert renamed.result.label == "work phone" and renamed.tokens == (renamed.result,)
    for bad in ("", "   ", "x" * 65, "evil\x1b]52;c;AAAA\x07", "rtl\u202egnp.exe"):
        with pytest.raises(PolicyError):
            rename_change(state, "a1", bad)
    with pytest.raises(NoSuchToken):
        rename_change(state, "nope", "name")


def test_resync_moves_the_counter_forward_only() -> None:
    key = os.urandom(20)
    token = Token(id="h1", type=TokenType.HOTP, created=0)
    state = OtpState(
        tokens=(token,), secrets={"h1": Secret(key)},
        used=UsedState(tokens={"h1": TokenUse(last=500)}),
    )  # fmt: skip
    forward = advance_change(state, "h1", key, 900, START)
    assert forward.result[1] is True and forward.used is not None
    assert forward.used.use_of("h1").last == 900
    assert not advance_change(state, "h1", key, 500, START).writes  # a login got there first
    assert not advance_change(state, "h1", key, 20, START).writes
    with pytest.raises(PolicyError):
        advance_change(state, "h1", os.urandom(20), 900, START)  # token re-keyed meanwhile
    with pytest.raises(NoSuchToken):
        advance_change(state, "h2", key, 900, START)


# -- the flow over the in-memory directory -------------------------------------------------------


def world() -> tuple[World, InventoryStore]:
    w = World(config(directory={"inventory_dn": INVENTORY}, lockout={"max_failures": 3}))
    w.directory.entries[INVENTORY] = (INVENTORY, {"objectclass": [b"organizationalUnit"]})
    w.directory.add_user("alice", PW)
    w.directory.add_user("bob", PW)
    return w, InventoryStore(w.config.directory, KEYRING, w.store)


async def fob(store: InventoryStore, serial: str = "FOB7", last: int = -1) -> bytes:
    key = os.urandom(20)
    token = Token(id=os.urandom(4).hex(), type=TokenType.HOTP, created=0, serial=serial,
                  label="key fob")  # fmt: skip
    await store.add(token, Secret(key), last)
    return key


@pytest_twisted.ensureDeferred
async def test_claim_enrolls_with_the_proving_codes_spent() -> None:
    w, store = world()
    key = await fob(store, last=3)
    item = await claimable(store, "FOB7")
    assert item is not None
    proof = prove(item, ClaimKind.HOTP, codes_at(key, 20), w.clock.seconds())
    assert proof == Proof(22)
    token = await claim_token(store, item, "alice", proof, 5, w.clock.seconds())
    assert token.serial == "FOB7"
    assert await claimable(store, "FOB7") is None  # gone from the inventory
    state = w.store.decode(await w.store.resolve("alice", fresh=True))
    assert state.used.use_of(token.id).last == 22
    for spent in codes_at(key, 20):  # the proving codes never log in
        assert not (await w.login("alice", PW + spent)).ok
    assert (await w.login("alice", PW + hotp(key, 23))).ok


@pytest_twisted.ensureDeferred
async def test_two_claims_of_one_serial_give_it_to_exactly_one() -> None:
    w, store = world()
    key = await fob(store)
    first = await claimable(store, "FOB7")
    second = await claimable(store, "FOB7")
    assert first is not None and second is not None
    now = w.clock.seconds()
    proof = prove(first, ClaimKind.HOTP, codes_at(key, 0), now)
    assert proof is not None
    won = await claim_token(store, first, "alice", proof, 5, now)
    with pytest.raises(Unavailable):
        await claim_token(store, second, "bob", proof, 5, now)
    alice = w.store.decode(await w.store.resolve("alice", fresh=True))
    bob = w.store.decode(await w.store.resolve("bob", fresh=True))
    assert [t.id for t in alice.tokens] == [won.id] and not bob.tokens


@pytest_twisted.ensureDeferred
async def test_a_claim_whose_enrollment_fails_puts_the_token_back() -> None:
    w, store = world()
    key = await fob(store)
    item = await claimable(store, "FOB7")
    assert item is not None
    now = w.clock.seconds()
    proof = prove(item, ClaimKind.HOTP, codes_at(key, 0), now)
    assert proof is not None
    with pytest.raises(PolicyError, match="maximum"):
        await claim_token(store, item, "alice", proof, 0, now)  # no device allowed
    back = await claimable(store, "FOB7")
    assert back is not None and back.secret is not None and back.secret.key == key
    # Locked out meanwhile: refused, and the token is back too.
    user = await w.store.resolve("alice", fresh=True)
    rules = w.config.lockout
    for _ in range(rules.max_failures):
        await w.store.update(user, failure_change(now, rules))
    with pytest.raises(PolicyError, match="locked out"):
        await claim_token(store, back, "alice", proof, 5, now)
    assert await claimable(store, "FOB7") is not None


class Refusing:
    """A guard of OTP-state writes that refuses (state the users may write themselves)."""

    active = True

    async def check(self) -> None:
        from otpgate.errors import DirectoryUnavailable

        raise DirectoryUnavailable("refused by the guard")


@pytest_twisted.ensureDeferred
async def test_claims_and_assignments_pass_every_guard_of_state_writes() -> None:
    """The flows that write a user's state beside the inventory pass the same guards as
    ``OtpStore.update``: where the self-writable-state guard refuses, nothing is claimed."""
    from otpgate.admin.inventory import assign_token
    from otpgate.errors import DirectoryUnavailable

    w, store = world()
    key = await fob(store)
    item = await claimable(store, "FOB7")
    assert item is not None
    now = w.clock.seconds()
    proof = prove(item, ClaimKind.HOTP, codes_at(key, 0), now)
    assert proof is not None
    w.store._guards = (Refusing(),)  # type: ignore[assignment]
    with pytest.raises(DirectoryUnavailable):
        await claim_token(store, item, "alice", proof, 5, now)
    with pytest.raises(DirectoryUnavailable):
        await assign_token(store, "FOB7", "alice", 5)
    assert await claimable(store, "FOB7") is not None
    w.store._guards = ()
    assert not w.store.decode(await w.store.resolve("alice", fresh=True)).tokens


@pytest_twisted.ensureDeferred
async def test_proofs_run_one_at_a_time_and_a_full_queue_is_busy() -> None:
    from otpgate.web.tokenpages import MAX_WAITING, Busy, ProofRunner

    runner = ProofRunner(reactor=None)  # no thread pool: the proof runs inline
    assert await runner.run(lambda a, b=0: a + b, 1, b=2) == 3
    await runner.lock.acquire()  # a proof running
    waiting = [defer.ensureDeferred(runner.run(lambda: "done")) for _ in range(MAX_WAITING)]
    with pytest.raises(Busy):
        await runner.run(lambda: "one too many")
    runner.lock.release()
    assert [await d for d in waiting] == ["done"] * MAX_WAITING
