"""A user claims an inventory token by its serial and proves that she holds it.

verify the codes against the inventory item (pure: :func:`prove`) -> claim it (delete the
exact value that was verified: of two claims, one wins) -> enroll it into the user's state
with the proving codes recorded as used (compare-and-swap) -> remove the inventory entry;
on any failure after the claim the token goes back (the same order as ``assign``).

The proof of possession depends on the kind of token:

* HOTP: three consecutive codes, searched up to ``RESYNC_WINDOW`` counters after the
  token's last used counter (a fob pressed a few thousand times on a shelf still claims);
* TOTP: one code within ``CLAIM_TOTP_SECONDS`` of now, whose offset is learned as the
  token's drift (a token whose clock ran off while it waited in a drawer);
* Yubico OTP: one OTP of the item's public id, decrypted with its key.

An unknown serial, a serial taken meanwhile and wrong codes give the same answer: the
verification does the same work on a throwaway key when there is nothing to verify
against, and every failure counts towards the user's lockout (``failure_change``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, replace
from enum import StrEnum

from otpgate.admin.enrollment import enroll_change
from otpgate.admin.inventory import claimed_token
from otpgate.auth.config import LockoutConfig
from otpgate.auth.lockout import is_locked, record_failure
from otpgate.auth.verify import _pack_yubico, _unpack_yubico
from otpgate.directory import engine
from otpgate.directory import inventory as inv
from otpgate.directory.engine import Modify, Step
from otpgate.directory.inventory import InventoryItem, InventoryMapper
from otpgate.directory.ldapdata import NO_SUCH_ATTRIBUTE, NO_SUCH_OBJECT, SUCCESS
from otpgate.directory.records import OtpState, StateChange
from otpgate.directory.state import StateMapper
from otpgate.directory.store import InventoryStore
from otpgate.errors import InventoryError, PolicyError
from otpgate.otp.oath import (
    MAX_DIGITS,
    MAX_TOTP_WINDOW,
    MIN_DIGITS,
    RESYNC_WINDOW,
    Algorithm,
    find_consecutive,
    verify_totp,
)
from otpgate.otp.yubico import (
    AES_KEY_BYTES,
    PRIVATE_ID_BYTES,
    TOKEN_CHARS,
    looks_like_yubico_otp,
    verify_yubico,
)
from otpgate.tokens import Token, TokenType, TokenUse, UsedState

CLAIM_TOTP_SECONDS = 600
"""A TOTP token is claimed with a code within 10 minutes of the gateway's clock."""
HOTP_CODES = 3
"""Consecutive HOTP codes that prove a token (one code in 100,000 counters would not)."""
UNAVAILABLE = "unknown serial, taken, or the codes do not match"


class ClaimKind(StrEnum):
    HOTP = "hotp"
    TOTP = "totp"
    YUBICO = "yubico"

    @property
    def codes(self) -> int:
        """How many codes prove a token of this kind."""
        return HOTP_CODES if self is ClaimKind.HOTP else 1

    @property
    def token_type(self) -> TokenType:
        return TokenType(self.value)


@dataclass(frozen=True)
class Proof:
    """What the proving codes spent: recorded as the token's use state when it is enrolled."""

    last: int
    """The last counter (HOTP: the third code's), step (TOTP) or packed Yubico counters."""
    drift: int = 0
    """TOTP: steps between the token's clock and the gateway's."""


class Unavailable(InventoryError):
    """The serial cannot be claimed: unknown, taken, changed since it was verified, or the
    codes do not prove it (one answer for all, so that serials cannot be probed)."""


def totp_claim_window(period: int) -> int:
    """Steps either side of now tried for a TOTP claim: ``CLAIM_TOTP_SECONDS`` (at most
    ``MAX_TOTP_WINDOW`` steps, the drift the gateway can learn)."""
    return min(MAX_TOTP_WINDOW, math.ceil(CLAIM_TOTP_SECONDS / period))


def code_problem(kind: ClaimKind, code: str) -> str | None:
    """Why ``code`` cannot be a code of ``kind`` at all (decided on the input alone, before
    any lookup), or None."""
    if kind is ClaimKind.YUBICO:
        if looks_like_yubico_otp(code):
            return None
        return "touch the YubiKey in this field: it types a code of 32 to 64 letters"
    if code.isascii() and code.isdigit() and MIN_DIGITS <= len(code) <= MAX_DIGITS:
        return None
    return f"type the {MIN_DIGITS} to {MAX_DIGITS} digits the token shows"


def _matches_shape(kind: ClaimKind, token: Token, codes: Sequence[str]) -> bool:
    if token.type is not kind.token_type or len(codes) != kind.codes:
        return False
    if kind is ClaimKind.YUBICO:
        return bool(token.public_id) and len(codes[0]) == TOKEN_CHARS + len(token.public_id)
    return all(len(c) == token.digits for c in codes)


def _verify(
    kind: ClaimKind,
    token: Token,
    key: bytes,
    private_id: bytes,
    last: int,
    codes: Sequence[str],
    now: float,
) -> Proof | None:
    if kind is ClaimKind.HOTP:
        first = find_consecutive(
            key, codes, last, digits=token.digits, algorithm=token.algorithm, window=RESYNC_WINDOW
        )
        return None if first is None else Proof(first + len(codes) - 1)
    if kind is ClaimKind.TOTP:
        found = verify_totp(
            key,
            codes[0],
            now,
            last,
            digits=token.digits,
            algorithm=token.algorithm,
            period=token.period,
            window=totp_claim_window(token.period),
        )
        return None if found is None else Proof(found.step, found.drift)
    counters = verify_yubico(codes[0], key, token.public_id, private_id, _unpack_yubico(last))
    return None if counters is None else Proof(_pack_yubico(counters))


def _stand_in(kind: ClaimKind, codes: Sequence[str]) -> tuple[Token, bytes, bytes]:
    """A throwaway token shaped by what was typed, with a random key: what an unknown or
    unusable serial is verified against, so that it costs the same work as a real one."""
    if kind is ClaimKind.YUBICO:
        public_id = codes[0][:-TOKEN_CHARS].lower() if codes else ""
        token = Token("-", TokenType.YUBICO, 0, public_id=public_id)
        return token, os.urandom(AES_KEY_BYTES), os.urandom(PRIVATE_ID_BYTES)
    digits = len(codes[0]) if codes and MIN_DIGITS <= len(codes[0]) <= MAX_DIGITS else 6
    token = Token("-", kind.token_type, 0, digits=digits, algorithm=Algorithm.SHA1)
    return token, os.urandom(20), b""


def prove(
    item: InventoryItem | None, kind: ClaimKind, codes: Sequence[str], now: float
) -> Proof | None:
    """Whether ``codes`` prove possession of the inventory token ``item`` (of ``kind``):
    the Proof to record, or None.

    Pure (no I/O), and as heavy for an item that cannot match (None: unknown or taken;
    another kind, digits or public id) as for one that can: the same verification runs
    on a random stand-in key shaped by the input, and its result is thrown away.  An HOTP
    search always computes and compares every counter of its window (``find_consecutive``).
    """
    token = item.token if item is not None else None
    secret = item.secret if item is not None else None
    last = item.last if item is not None else -1
    if token is not None and secret is not None and _matches_shape(kind, token, codes):
        try:
            return _verify(kind, token, secret.key, secret.private_id, last, codes, now)
        except (ValueError, OverflowError):  # stored data otpgate would not write
            return None
    stand_in, key, private_id = _stand_in(kind, codes)
    if len(codes) == kind.codes:
        with suppress(ValueError, OverflowError):
            _verify(kind, stand_in, key, private_id, -1, codes, now)
    return None


# -- what is written ----------------------------------------------------------------------------


MAX_PROOF_FAILURES_PER_DAY = 10
"""Failed proofs of possession a user may make in any 24 hours.  The lockout alone does not
bound them: a successful login clears it, so an insider who logs in with her own device
between tries could guess at a token she does not hold for ever (a TOTP claim accepts any
of the 41 codes of its wide window)."""
DAY = 86400


def recent_proof_failures(used: UsedState, now: float) -> tuple[int, ...]:
    return tuple(t for t in used.proof_failures if now - DAY < t <= now + 60)


def proofs_capped(used: UsedState, now: float) -> bool:
    """The user made ``MAX_PROOF_FAILURES_PER_DAY`` failed proofs in the last day."""
    return len(recent_proof_failures(used, now)) >= MAX_PROOF_FAILURES_PER_DAY


def failure_change(now: float, rules: LockoutConfig) -> Callable[[OtpState], StateChange[bool]]:
    """A failed proof (a claim or a resynchronisation with wrong codes, an unknown or taken
    serial) counts towards the user's lockout, as a wrong login code does, and towards the
    daily cap of failed proofs.  The result says whether the user may not try again now
    (locked out, or capped); nothing is written while locked already."""

    def change(state: OtpState) -> StateChange[bool]:
        if is_locked(state.used, now):
            return StateChange(True)
        used = record_failure(state.used, now, rules)
        failures = (*recent_proof_failures(used, now), int(now))[-MAX_PROOF_FAILURES_PER_DAY:]
        used = replace(used, proof_failures=failures)
        return StateChange(bool(used.locked_until) or proofs_capped(used, now), used=used)

    return change


def claim_change(
    item: InventoryItem, proof: Proof, max_tokens: int, now: float
) -> Callable[[OtpState], StateChange[Token]]:
    """Give the claimed token to the user (beside her other devices), with the proving codes
    recorded as used: they can never log in.  Refused while the user is locked out."""
    token, secret = claimed_token(item)

    def change(state: OtpState) -> StateChange[Token]:
        if is_locked(state.used, now) or proofs_capped(state.used, now):
            raise PolicyError("locked out: too many failed codes; try again later")
        planned = enroll_change(state, token, secret, max_tokens, replace_software=False)
        use = TokenUse(last=proof.last, drift=proof.drift, used_at=int(now))
        used = (planned.used or state.used).with_use(token.id, use)
        return replace(planned, used=used)

    return change


def claim_proven(
    mapper: StateMapper,
    inventory: InventoryMapper,
    item: InventoryItem,
    user_name: str,
    proof: Proof,
    max_tokens: int,
    now: float,
    retries: int,
) -> Step[Token]:
    """Move the verified ``item`` to ``user_name``'s tokens, exactly once.

    The claim deletes the exact value that was verified (no read again, no retry): a value
    gone (another claim, an assignment) or rewritten since is ``Unavailable``.  If the
    enrollment fails the value is put back; then the entry is deleted."""
    user = yield from engine.resolve(mapper, user_name)
    code, message = yield Modify(item.dn, tuple(inventory.claim_change(item)))
    if code in (NO_SUCH_ATTRIBUTE, NO_SUCH_OBJECT):
        raise Unavailable(f"serial {item.serial}: taken or changed since it was verified", code)
    if code != SUCCESS:
        raise InventoryError(f"cannot claim {item.serial}: {code} {message}", code)
    try:
        done = yield from engine.update(
            mapper, user, claim_change(item, proof, max_tokens, now), retries
        )
    except Exception:
        yield from inv.release(inventory, item)
        raise
    yield from inv.delete(inventory, item.serial)
    token: Token = done.result
    return token


async def claimable(inventory: InventoryStore, serial: str) -> InventoryItem | None:
    """The inventory item to verify a claim against; None when there is none (unknown, or
    being assigned right now).  Other errors (directory, an undecryptable value) raise."""
    try:
        item = await inventory.get(serial)
    except InventoryError as exc:
        if exc.result_code not in (None, NO_SUCH_OBJECT):
            raise
        return None
    return item if item.raw is not None else None


async def claim_token(
    inventory: InventoryStore,
    item: InventoryItem,
    user_name: str,
    proof: Proof,
    max_tokens: int,
    now: float,
) -> Token:
    """``claim_proven`` run by the gateway's driver (the portal)."""
    store = inventory.store
    step = claim_proven(
        store.mapper,
        inventory.mapper,
        item,
        user_name,
        proof,
        max_tokens,
        now,
        store.config.cas_retries,
    )
    return await inventory.flow(step, user_name)
