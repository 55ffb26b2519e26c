"""Yubico OTP: the classic 32..64 character modhex one-time password (AES-128).

An OTP is an optional public id (modhex, usually 12 characters = 6 bytes) followed by
a 32 character modhex token: one AES-128 block holding, little endian,

    uid (private id) 6 | useCtr 2 | tstp 3 | sessionCtr 1 | rnd 2 | crc 2

where the CRC-16 (ISO 13239) over all 16 bytes leaves the residual 0xF0B8.

The module is pure: no I/O, no logging, no global state.  Error messages never contain
the AES key nor the OTP (nor any part of it).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from otpgate.errors import InvalidYubicoOtp

__all__ = [
    "AES_KEY_BYTES",
    "MAX_OTP_CHARS",
    "MODHEX_ALPHABET",
    "PRIVATE_ID_BYTES",
    "TOKEN_CHARS",
    "YubicoOtp",
    "decrypt_otp",
    "looks_like_yubico_otp",
    "modhex_decode",
    "modhex_encode",
    "verify_yubico",
]

MODHEX_ALPHABET: Final = "cbdefghijklnrtuv"
"""Modhex digit for each nibble value 0..15 (keyboard-layout independent characters)."""

AES_KEY_BYTES: Final = 16
PRIVATE_ID_BYTES: Final = 6
TOKEN_CHARS: Final = 32
"""Length of the encrypted token part: 16 bytes as modhex."""
MAX_OTP_CHARS: Final = 64
"""Token plus the longest public id (16 bytes)."""

_HEX_DIGITS: Final = "0123456789abcdef"
# Both cases are listed explicitly (instead of calling str.lower() first) so that
# non-ASCII characters that lower-case to ASCII letters (e.g. U+212A KELVIN SIGN -> "k")
# are rejected.
_MODHEX_CHARS: Final = frozenset(MODHEX_ALPHABET + MODHEX_ALPHABET.upper())
_MODHEX_TO_HEX: Final = str.maketrans(MODHEX_ALPHABET + MODHEX_ALPHABET.upper(), _HEX_DIGITS * 2)
_HEX_TO_MODHEX: Final = str.maketrans(_HEX_DIGITS, MODHEX_ALPHABET)

_CRC_OK_RESIDUAL: Final = 0xF0B8
_USE_COUNTER_MASK: Final = 0x7FFF
"""The high bit of useCtr is a flag (OTP emitted with caps lock on), not part of the count."""


def _crc16_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC16_TABLE: Final = _crc16_table()


@dataclass(frozen=True)
class YubicoOtp:
    """The decrypted content of one Yubico OTP."""

    public_id: str
    """Modhex public id in lower case ("" when the OTP has none)."""
    private_id: bytes
    """The 6 byte secret uid stored inside the encrypted block."""
    use_counter: int
    """Non-volatile counter, 15 bits (the caps-lock flag bit is removed)."""
    session_counter: int
    """Counter within one power-up session, 8 bits."""
    timestamp: int
    """24 bit 8 Hz timer, random start at each power-up."""
    random: int
    """16 bit random field."""


def modhex_encode(data: bytes) -> str:
    """Encode bytes as lower-case modhex (two characters per byte)."""
    return bytes(data).hex().translate(_HEX_TO_MODHEX)


def modhex_decode(text: str) -> bytes:
    """Decode modhex (either case) to bytes.

    Raises InvalidYubicoOtp for characters outside the modhex alphabet or an odd length.
    """
    if len(text) % 2:
        raise InvalidYubicoOtp(f"modhex text must have an even length, got {len(text)}")
    if not _MODHEX_CHARS.issuperset(text):
        raise InvalidYubicoOtp(f"modhex text may only contain the characters {MODHEX_ALPHABET!r}")
    return bytes.fromhex(text.translate(_MODHEX_TO_HEX))


def looks_like_yubico_otp(text: str) -> bool:
    """Cheap shape test: 32..64 modhex characters (either case), even length.

    The last 32 characters are the token, anything before them the public id.  No
    decryption is done: use this to decide whether a password may end in an OTP.
    """
    return (
        TOKEN_CHARS <= len(text) <= MAX_OTP_CHARS
        and len(text) % 2 == 0
        and _MODHEX_CHARS.issuperset(text)
    )


def _crc16(data: bytes) -> int:
    crc = 0xFFFF
    for byte in data:
        crc = (crc >> 8) ^ _CRC16_TABLE[(crc ^ byte) & 0xFF]
    return crc


def _check_aes_key(aes_key: bytes) -> None:
    if not isinstance(aes_key, bytes) or len(aes_key) != AES_KEY_BYTES:
        raise ValueError(f"aes_key must be {AES_KEY_BYTES} raw bytes (AES-128; decode hex first)")


def _check_private_id(private_id: bytes) -> None:
    if not isinstance(private_id, bytes) or len(private_id) != PRIVATE_ID_BYTES:
        raise ValueError(
            f"private_id must be {PRIVATE_ID_BYTES} raw bytes (the token uid; decode hex first)"
        )


def decrypt_otp(otp: str, aes_key: bytes) -> YubicoOtp:
    """Decrypt and parse a Yubico OTP (optional modhex public id + 32 char token).

    Raises ValueError if aes_key is not 16 bytes (a configuration error), and
    InvalidYubicoOtp (a ValueError) if the OTP is malformed or fails the CRC check,
    which is what a wrong key also gives.
    """
    _check_aes_key(aes_key)
    if not TOKEN_CHARS <= len(otp) <= MAX_OTP_CHARS:
        raise InvalidYubicoOtp(
            f"Yubico OTP must be {TOKEN_CHARS} to {MAX_OTP_CHARS} modhex characters, got {len(otp)}"
        )
    public_part, token_part = otp[:-TOKEN_CHARS], otp[-TOKEN_CHARS:]
    public_id = modhex_decode(public_part)  # validates the public id's alphabet and length
    block = modhex_decode(token_part)

    # ECB is what the Yubico OTP format defines: the token is exactly one AES block that
    # already contains a counter and random data, so no IV/mode is involved.
    decryptor = Cipher(algorithms.AES(aes_key), modes.ECB()).decryptor()  # noqa: S305
    plain = decryptor.update(block) + decryptor.finalize()

    if _crc16(plain) != _CRC_OK_RESIDUAL:
        raise InvalidYubicoOtp("Yubico OTP failed the CRC check (wrong key or corrupted OTP)")

    return YubicoOtp(
        public_id=modhex_encode(public_id),
        private_id=plain[0:6],
        use_counter=int.from_bytes(plain[6:8], "little") & _USE_COUNTER_MASK,
        session_counter=plain[11],
        timestamp=int.from_bytes(plain[8:11], "little"),
        random=int.from_bytes(plain[12:14], "little"),
    )


def verify_yubico(
    otp: str,
    aes_key: bytes,
    public_id: str,
    private_id: bytes,
    last: tuple[int, int] | None,
) -> tuple[int, int] | None:
    """Verify a Yubico OTP against one token's secrets and its last accepted counters.

    Returns the new (use_counter, session_counter) to store if the OTP decrypts with
    aes_key, carries public_id (case-insensitive) and private_id, and its counter pair
    is strictly greater than `last` (use counter first, then session counter); None
    otherwise, including for any malformed OTP.  Raises ValueError only when aes_key is
    not 16 bytes or private_id not 6 bytes.
    """
    _check_aes_key(aes_key)
    _check_private_id(private_id)
    try:
        token = decrypt_otp(otp, aes_key)
    except InvalidYubicoOtp:
        return None
    # Evaluate both comparisons (no short circuit), each in constant time.
    public_ok = hmac.compare_digest(
        token.public_id.encode("ascii"), public_id.lower().encode("utf-8")
    )
    private_ok = hmac.compare_digest(token.private_id, private_id)
    if not (public_ok & private_ok):
        return None
    counters = (token.use_counter, token.session_counter)
    if last is not None and counters <= last:
        return None
    return counters
