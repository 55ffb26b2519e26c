"""A user's PIN: what is stored, how a typed PIN is checked (pure, no I/O).

The PIN guards the logins that carry no password (RADIUS otp-only, CHAP, MS-CHAPv2): the
user types the PIN followed by the code, so a stolen phone alone is not enough.  It is kept
in two places of the encrypted state, each an authenticated envelope bound to the entry,
the attribute and the purpose (``codec.py``):

* ``PinRecord``, inside the seed's document: the PIN itself and a random 256-bit key.  The
  PIN is kept in clear inside that encrypted document only because CHAP and MS-CHAPv2 send
  a proof computed from PIN + code, which can be checked only by computing it again;
* ``PinVerifier``, inside the use state: HMAC-SHA256 of the PIN under that key, and when
  it was set.  It says that a PIN is set without decrypting a seed (listings), and it ties
  the seed's PIN to the use state: a seed written back from before the PIN was set or
  changed no longer matches, and the state is refused as tampered.

Why a keyed HMAC and not a slow hash (scrypt, PBKDF2): a slow hash helps only someone
who has the hash but not the cleartext; here the cleartext sits beside it under the same
keyring, and a 4-16 digit PIN falls to an offline search at any cost per guess.  What a
slow hash would cost is real: the pipeline runs on the reactor thread, and scrypt
(n=2^14, r=8) takes about 40 ms there (PBKDF2-SHA256 with 600,000 rounds about 155 ms),
against about 2 microseconds for the HMAC (docs/DECISIONS.md, "PIN").
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

PIN_FORM = re.compile(r"[0-9]{4,16}")
"""4 to 16 ASCII digits (a NAS keypad, a VPN client's password field)."""
MIN_PIN, MAX_PIN = 4, 16
KEY_BYTES = 32
_LABEL = b"otpgate pin v1\x00"


def check_pin(text: str) -> str:
    """``text`` if it is a PIN otpgate stores; ValueError (without the PIN) otherwise."""
    if not PIN_FORM.fullmatch(text):
        raise ValueError(f"a PIN is {MIN_PIN} to {MAX_PIN} digits (0-9), nothing else")
    if len(set(text)) == 1:
        raise ValueError("a PIN of one digit repeated is refused; choose another")
    return text


def looks_like_pin(text: str) -> bool:
    """Whether ``text`` could be a PIN (the leading part of what a user typed)."""
    return bool(PIN_FORM.fullmatch(text))


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64d(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise ValueError(f"{what}: expected text")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"{what}: not base64url") from exc


@dataclass(frozen=True)
class PinRecord:
    """The PIN and its key, kept inside the seed's encrypted document."""

    pin: str = field(repr=False)
    key: bytes = field(repr=False)

    def __repr__(self) -> str:  # never print the PIN
        return "PinRecord(<redacted>)"

    def to_dict(self) -> dict[str, Any]:
        return {"p": self.pin, "k": _b64e(self.key)}

    @classmethod
    def from_dict(cls, doc: Any) -> PinRecord:
        what = "seed.pin"
        if not isinstance(doc, Mapping):
            raise ValueError(f"{what}: expected an object")
        pin = doc.get("p")
        if not isinstance(pin, str) or not looks_like_pin(pin):
            raise ValueError(f"{what}.p: not a PIN")
        key = _b64d(doc.get("k"), f"{what}.k")
        if len(key) != KEY_BYTES:
            raise ValueError(f"{what}.k: {len(key)} bytes")
        return cls(pin, key)


NO_PIN = PinRecord("", b"")
"""In a ``StateChange``: remove the PIN (None there leaves it as it is)."""


@dataclass(frozen=True)
class PinVerifier:
    """A PIN's keyed digest and when it was set, kept in the use state."""

    digest: bytes = field(repr=False)
    set_at: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"h": _b64e(self.digest), "t": self.set_at}

    @classmethod
    def from_dict(cls, doc: Any) -> PinVerifier:
        what = "used.pn"
        if not isinstance(doc, Mapping):
            raise ValueError(f"{what}: expected an object")
        digest = _b64d(doc.get("h"), f"{what}.h")
        if len(digest) != 32:
            raise ValueError(f"{what}.h: {len(digest)} bytes")
        set_at = doc.get("t", 0)
        if not isinstance(set_at, int) or isinstance(set_at, bool):
            raise ValueError(f"{what}.t: expected an integer time")
        return cls(digest, set_at)


def _digest(key: bytes, pin: str) -> bytes:
    return hmac.digest(key, _LABEL + pin.encode("ascii", "replace"), "sha256")


def new_pin(pin: str, now: float, key: bytes | None = None) -> tuple[PinRecord, PinVerifier]:
    """The two stored parts of a new PIN (a fresh key each time it is set)."""
    check_pin(pin)
    key = key if key is not None else os.urandom(KEY_BYTES)
    return PinRecord(pin, key), PinVerifier(_digest(key, pin), int(now))


def pin_matches(record: PinRecord | None, verifier: PinVerifier | None, typed: str) -> bool:
    """Whether ``typed`` is the user's PIN: its keyed digest against the use state's, in
    constant time (False when no PIN is set)."""
    if record is None or verifier is None or not record.key:
        return False
    return hmac.compare_digest(_digest(record.key, typed), verifier.digest)


def consistent(record: PinRecord | None, verifier: PinVerifier | None) -> bool:
    """The seed's PIN and the use state's verifier belong together (both absent, or the
    verifier is the digest of that PIN under that key)."""
    if record is None or verifier is None:
        return record is None and verifier is None
    return pin_matches(record, verifier, record.pin)
