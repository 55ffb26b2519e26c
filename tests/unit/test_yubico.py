"""Tests for otpgate.otp.yubico: modhex, OTP decryption and verification.

Cross-checked against the reference C implementation through Debian's `ykgenerate`
(package libyubikey-dev), which prints the 32 character modhex token (no public id)
for the given AES key and token fields.  The test fails (does not skip) without it.
"""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
import subprocess
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from otpgate.errors import InvalidYubicoOtp
from otpgate.otp.yubico import (
    MODHEX_ALPHABET,
    YubicoOtp,
    decrypt_otp,
    looks_like_yubico_otp,
    modhex_decode,
    modhex_encode,
    verify_yubico,
)

# --- known vectors -------------------------------------------------------------------

# The libyubikey README example; fields confirmed with Debian's `ykparse`.
README_KEY = bytes.fromhex("ecde18dbe76fbd0c33330f1c354871db")
README_OTP = "dteffujehknhfjbrjnlnldnhcujvddbikngjrtgh"
README_FIELDS = YubicoOtp(
    public_id="dteffuje",
    private_id=bytes.fromhex("8792ebfe26cc"),
    use_counter=0x0013,
    session_counter=0x11,
    timestamp=0x00C230,
    random=0x9FC8,
)

# `ykgenerate ecde18dbe76fbd0c33330f1c354871db 8792ebfe26cc 0013 c0a8 00 10`
# (rnd confirmed with `ykparse`).
YKGENERATE_TOKEN = "hfggnvdebueknlifhugblekelbthkurn"
YKGENERATE_FIELDS = YubicoOtp(
    public_id="",
    private_id=bytes.fromhex("8792ebfe26cc"),
    use_counter=0x0013,
    session_counter=0x10,
    timestamp=0x00C0A8,
    random=0x71DD,
)


# --- ykgenerate ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ykgenerate() -> str:
    path = shutil.which("ykgenerate") or "/usr/bin/ykgenerate"
    if not os.access(path, os.X_OK):
        pytest.fail(
            "ykgenerate is required for the Yubico OTP cross-checks: "
            "install it with `apt-get install libyubikey-dev`"
        )
    return path


@dataclass(frozen=True)
class Generated:
    key: bytes
    public_id: str
    private_id: bytes
    use_counter: int
    session_counter: int
    timestamp: int
    otp: str

    @property
    def counters(self) -> tuple[int, int]:
        return (self.use_counter, self.session_counter)


def run_ykgenerate(
    path: str, key: bytes, uid: bytes, counter: int, low: int, high: int, use: int
) -> str:
    result = subprocess.run(
        [path, key.hex(), uid.hex(), f"{counter:04x}", f"{low:04x}", f"{high:02x}", f"{use:02x}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    )
    token = result.stdout.strip()
    assert len(token) == 32
    assert set(token) <= set(MODHEX_ALPHABET)
    return token


def generate(
    path: str,
    rng: random.Random,
    *,
    key: bytes | None = None,
    public_id: str | None = None,
    private_id: bytes | None = None,
    use_counter: int | None = None,
    session_counter: int | None = None,
) -> Generated:
    key = rng.randbytes(16) if key is None else key
    if public_id is None:
        public_id = modhex_encode(rng.randbytes(6))
    private_id = rng.randbytes(6) if private_id is None else private_id
    use_counter = rng.randrange(0x8000) if use_counter is None else use_counter
    session_counter = rng.randrange(0x100) if session_counter is None else session_counter
    timestamp = rng.randrange(1 << 24)
    token = run_ykgenerate(
        path,
        key,
        private_id,
        use_counter,
        timestamp & 0xFFFF,
        timestamp >> 16,
        session_counter,
    )
    return Generated(
        key, public_id, private_id, use_counter, session_counter, timestamp, public_id + token
    )


def flip(text: str, index: int) -> str:
    """Replace the character at index with a different modhex character."""
    old = text[index]
    new = MODHEX_ALPHABET[(MODHEX_ALPHABET.index(old) + 1) % 16]
    return text[:index] + new + text[index + 1 :]


# --- modhex ----------------------------------------------------------------------------


@given(st.binary(max_size=64))
def test_modhex_round_trip(data: bytes) -> None:
    text = modhex_encode(data)
    assert len(text) == 2 * len(data)
    assert set(text) <= set(MODHEX_ALPHABET)
    assert modhex_decode(text) == data
    assert modhex_decode(text.upper()) == data


def test_modhex_known_values() -> None:
    assert modhex_encode(bytes.fromhex("0123456789abcdef")) == "cbdefghijklnrtuv"
    assert modhex_encode(bytes.fromhex("8792ebfe26cc")) == "jikdunvudhrr"  # ykparse
    assert modhex_decode("jikdunvudhrr") == bytes.fromhex("8792ebfe26cc")
    assert modhex_decode("JIKDUNVUDHRR") == bytes.fromhex("8792ebfe26cc")
    assert modhex_encode(b"") == ""
    assert modhex_decode("") == b""


@pytest.mark.parametrize("text", ["cbc", "ca", "cbda", "0123", "cb cb", "cb\n", "éé", "\u212ab"])
def test_modhex_decode_rejects(text: str) -> None:
    # "\u212a" (KELVIN SIGN) lower-cases to the modhex letter "k": must still be rejected.
    with pytest.raises(InvalidYubicoOtp):
        modhex_decode(text)


def test_invalid_yubico_otp_is_a_value_error() -> None:
    assert issubclass(InvalidYubicoOtp, ValueError)


# --- looks_like_yubico_otp -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (README_OTP, True),
        (README_OTP.upper(), True),
        (YKGENERATE_TOKEN, True),
        ("c" * 44, True),
        ("c" * 64, True),
        ("c" * 30, False),
        ("c" * 33, False),
        ("c" * 43, False),
        ("c" * 66, False),
        ("c" * 43 + "a", False),
        ("", False),
        ("hunter2" + README_OTP, False),
        (README_OTP[:-1] + "\u212a", False),
    ],
)
def test_looks_like_yubico_otp(text: str, expected: bool) -> None:
    assert looks_like_yubico_otp(text) is expected


@given(st.text(alphabet=MODHEX_ALPHABET + MODHEX_ALPHABET.upper(), min_size=32, max_size=64))
def test_looks_like_agrees_with_decoding(text: str) -> None:
    if not looks_like_yubico_otp(text):
        assert len(text) % 2 == 1
        return
    # The shape is accepted: decryption may only fail on the CRC, never on parsing.
    try:
        decrypt_otp(text, README_KEY)
    except InvalidYubicoOtp as exc:
        assert "CRC" in str(exc)


# --- decrypt_otp -----------------------------------------------------------------------


def test_decrypt_readme_vector() -> None:
    assert decrypt_otp(README_OTP, README_KEY) == README_FIELDS
    assert decrypt_otp(README_OTP.upper(), README_KEY) == README_FIELDS


def test_decrypt_ykgenerate_vector() -> None:
    assert decrypt_otp(YKGENERATE_TOKEN, README_KEY) == YKGENERATE_FIELDS


def test_ykgenerate_known_fields(ykgenerate: str) -> None:
    # ykgenerate fills rnd itself (not reproducibly), so compare every other field.
    uid = bytes.fromhex("8792ebfe26cc")
    token = run_ykgenerate(ykgenerate, README_KEY, uid, 0x13, 0xC0A8, 0, 0x10)
    parsed = decrypt_otp(token, README_KEY)
    assert dataclasses.replace(parsed, random=YKGENERATE_FIELDS.random) == YKGENERATE_FIELDS


def test_decrypt_matches_ykgenerate(ykgenerate: str) -> None:
    rng = random.Random(20240611)
    for _ in range(150):
        public_id = modhex_encode(rng.randbytes(rng.choice([0, 1, 6, 6, 6, 8, 16])))
        gen = generate(ykgenerate, rng, public_id=public_id)
        assert looks_like_yubico_otp(gen.otp)
        token = decrypt_otp(gen.otp, gen.key)
        assert token.public_id == gen.public_id
        assert token.private_id == gen.private_id
        assert token.use_counter == gen.use_counter
        assert token.session_counter == gen.session_counter
        assert token.timestamp == gen.timestamp
        assert 0 <= token.random <= 0xFFFF
        assert verify_yubico(gen.otp, gen.key, gen.public_id, gen.private_id, None) == (
            gen.counters
        )


def test_caps_lock_flag_is_not_part_of_the_counter(ykgenerate: str) -> None:
    key, uid = README_KEY, bytes.fromhex("8792ebfe26cc")
    token = run_ykgenerate(ykgenerate, key, uid, 0x8000 | 0x0123, 0x1234, 0x56, 7)
    parsed = decrypt_otp(token, key)
    assert parsed.use_counter == 0x0123
    assert parsed.session_counter == 7
    assert parsed.timestamp == 0x561234


@pytest.mark.parametrize(
    "otp",
    [
        "",
        "c" * 31,
        "c" * 65,
        "c" * 33,
        "c" * 32 + "a",
        README_OTP[:-1] + "a",
        README_OTP[:-1] + "\u212a",
        " " + README_OTP[1:],
    ],
)
def test_decrypt_rejects_malformed(otp: str) -> None:
    with pytest.raises(InvalidYubicoOtp):
        decrypt_otp(otp, README_KEY)


def test_decrypt_rejects_wrong_key_without_leaking() -> None:
    wrong_key = bytes.fromhex("00112233445566778899aabbccddeeff")
    with pytest.raises(InvalidYubicoOtp, match="CRC") as info:
        decrypt_otp(README_OTP, wrong_key)
    message = str(info.value)
    for secret in (README_OTP, README_OTP[:8], README_OTP[-32:], wrong_key.hex(), README_KEY.hex()):
        assert secret not in message
        assert secret.upper() not in message


def test_decrypt_error_messages_never_contain_the_otp() -> None:
    for otp in (README_OTP[:-1] + "x", "x" + README_OTP, README_OTP[:-3], flip(README_OTP, 20)):
        with pytest.raises(InvalidYubicoOtp) as info:
            decrypt_otp(otp, README_KEY)
        message = str(info.value)
        assert otp not in message
        assert otp[:8] not in message
        assert otp[-32:] not in message
        assert README_KEY.hex() not in message


@pytest.mark.parametrize("key", [b"", bytes(15), bytes(17), bytes(32), "00" * 16, bytearray(16)])
def test_decrypt_rejects_malformed_key(key: object) -> None:
    with pytest.raises(ValueError, match="aes_key must be 16") as info:
        decrypt_otp(README_OTP, key)  # type: ignore[arg-type]
    assert type(info.value) is ValueError


def test_flipped_character_fails_decryption(ykgenerate: str) -> None:
    rng = random.Random(7)
    gen = generate(ykgenerate, rng)
    for index in range(len(gen.otp) - 32, len(gen.otp)):
        with pytest.raises(InvalidYubicoOtp):
            decrypt_otp(flip(gen.otp, index), gen.key)


# --- verify_yubico ---------------------------------------------------------------------


def test_verify_readme_vector() -> None:
    uid = README_FIELDS.private_id
    assert verify_yubico(README_OTP, README_KEY, "dteffuje", uid, None) == (0x13, 0x11)
    assert verify_yubico(README_OTP, README_KEY, "DTEFFUJE", uid, None) == (0x13, 0x11)
    assert verify_yubico(README_OTP.upper(), README_KEY, "dteffuje", uid, None) == (0x13, 0x11)
    assert verify_yubico(README_OTP, README_KEY, "dteffuje", uid, (0x13, 0x10)) == (0x13, 0x11)
    assert verify_yubico(README_OTP, README_KEY, "dteffuje", uid, (0x13, 0x11)) is None


def test_verify_counters_against_ykgenerate(ykgenerate: str) -> None:
    rng = random.Random(424242)
    for _ in range(60):
        gen = generate(
            ykgenerate,
            rng,
            use_counter=rng.randrange(1, 0x7FFF),
            session_counter=rng.randrange(1, 0xFF),
        )
        use, session = gen.counters

        def check(last: tuple[int, int] | None, gen: Generated = gen) -> tuple[int, int] | None:
            return verify_yubico(gen.otp, gen.key, gen.public_id, gen.private_id, last)

        assert check(None) == (use, session)
        # replay of the same OTP
        assert check((use, session)) is None
        # older than what was accepted
        assert check((use, session + 1)) is None
        assert check((use + 1, 0)) is None
        assert check((use + 1, session)) is None
        assert check((0x7FFF, 0xFF)) is None
        # newer: higher session counter, or higher use counter with any session counter
        assert check((use, session - 1)) == (use, session)
        assert check((use - 1, 0xFF)) == (use, session)
        assert check((use - 1, session + 1)) == (use, session)
        assert check((0, 0)) == (use, session)


def test_verify_session_counter_sequence(ykgenerate: str) -> None:
    """A power-up session: same use counter, increasing session counter; then a new use."""
    rng = random.Random(99)
    key, public_id, uid = rng.randbytes(16), modhex_encode(rng.randbytes(6)), rng.randbytes(6)
    otps = [
        generate(
            ykgenerate,
            rng,
            key=key,
            public_id=public_id,
            private_id=uid,
            use_counter=use,
            session_counter=session,
        ).otp
        for use, session in [(5, 0), (5, 1), (5, 2), (6, 0), (6, 1)]
    ]
    last: tuple[int, int] | None = None
    for otp in otps:
        new = verify_yubico(otp, key, public_id, uid, last)
        assert new is not None
        assert last is None or new > last
        # each OTP is single use
        assert verify_yubico(otp, key, public_id, uid, new) is None
        last = new
    assert last == (6, 1)
    # every earlier OTP is now rejected
    for otp in otps:
        assert verify_yubico(otp, key, public_id, uid, last) is None


def test_verify_rejects_wrong_secrets(ykgenerate: str) -> None:
    rng = random.Random(31337)
    for _ in range(40):
        gen = generate(ykgenerate, rng)
        other_key = bytes(b ^ 0x01 for b in gen.key)
        other_uid = bytes([gen.private_id[0] ^ 0x80]) + gen.private_id[1:]
        other_public = flip(gen.public_id, 0)
        assert verify_yubico(gen.otp, other_key, gen.public_id, gen.private_id, None) is None
        assert (
            verify_yubico(gen.otp, rng.randbytes(16), gen.public_id, gen.private_id, None) is None
        )
        assert verify_yubico(gen.otp, gen.key, gen.public_id, other_uid, None) is None
        assert verify_yubico(gen.otp, gen.key, gen.public_id, rng.randbytes(6), None) is None
        assert verify_yubico(gen.otp, gen.key, other_public, gen.private_id, None) is None
        assert verify_yubico(gen.otp, gen.key, "", gen.private_id, None) is None
        assert verify_yubico(gen.otp, gen.key, gen.public_id + "cc", gen.private_id, None) is None
        # the token alone (public id stripped) does not match a token that has one
        token_only = gen.otp[-32:]
        assert verify_yubico(token_only, gen.key, gen.public_id, gen.private_id, None) is None
        for index in range(len(gen.otp)):
            flipped = flip(gen.otp, index)
            assert verify_yubico(flipped, gen.key, gen.public_id, gen.private_id, None) is None
        # and the untouched OTP still verifies
        assert verify_yubico(gen.otp, gen.key, gen.public_id, gen.private_id, None) == (
            gen.counters
        )


def test_verify_token_without_public_id(ykgenerate: str) -> None:
    rng = random.Random(5)
    gen = generate(ykgenerate, rng, public_id="")
    assert verify_yubico(gen.otp, gen.key, "", gen.private_id, None) == gen.counters
    assert verify_yubico(gen.otp, gen.key, "cccccccccccc", gen.private_id, None) is None


@given(st.text(max_size=80))
def test_verify_never_raises_for_arbitrary_input(text: str) -> None:
    uid = README_FIELDS.private_id
    assert verify_yubico(text, README_KEY, "dteffuje", uid, None) in (None, (0x13, 0x11))
    assert verify_yubico(text, README_KEY, text, uid, (0, 0)) in (None, (0x13, 0x11))


@pytest.mark.parametrize(
    ("key", "uid", "field"),
    [
        (bytes(15), bytes(6), "aes_key"),
        (bytes(17), bytes(6), "aes_key"),
        ("ab" * 16, bytes(6), "aes_key"),
        (README_KEY, bytes(5), "private_id"),
        (README_KEY, bytes(7), "private_id"),
        (README_KEY, "8792ebfe26cc", "private_id"),
    ],
)
def test_verify_rejects_malformed_secrets(key: object, uid: object, field: str) -> None:
    with pytest.raises(ValueError, match=field) as info:
        verify_yubico(README_OTP, key, "dteffuje", uid, None)  # type: ignore[arg-type]
    assert type(info.value) is ValueError
    # malformed secrets are reported even when the OTP itself is garbage
    with pytest.raises(ValueError, match=field):
        verify_yubico("garbage", key, "dteffuje", uid, None)  # type: ignore[arg-type]
