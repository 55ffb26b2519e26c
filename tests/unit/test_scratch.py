"""Tests for otpgate.otp.scratch: printed single-use backup codes."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otpgate.otp.scratch import (
    HASH_BYTES,
    KDF_ID,
    LOW_SCRATCH_THRESHOLD,
    SALT_BYTES,
    ScratchList,
    format_for_print,
    generate_scratch_list,
    is_low,
    remaining,
    verify_scratch,
)


@pytest.fixture(scope="module")
def default_list() -> tuple[list[str], ScratchList]:
    return generate_scratch_list()


FULLWIDTH_DIGITS = "".join(chr(0xFF10 + d) for d in range(10))


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# --- generation ------------------------------------------------------------------------


def test_defaults(default_list: tuple[list[str], ScratchList]) -> None:
    codes, scratch = default_list
    assert len(codes) == 10
    assert len(scratch.hashes) == 10
    assert scratch.length == 8
    assert len(scratch.salt) == SALT_BYTES
    assert all(len(h) == HASH_BYTES for h in scratch.hashes)
    for code in codes:
        assert len(code) == 8
        assert code.isascii()
        assert code.isdigit()
    assert len(set(codes)) == 10
    assert len(set(scratch.hashes)) == 10
    assert LOW_SCRATCH_THRESHOLD == 10


@pytest.mark.parametrize(("count", "length"), [(1, 6), (1, 12), (100, 6), (3, 9)])
def test_generation_bounds(count: int, length: int) -> None:
    codes, scratch = generate_scratch_list(count, length)
    assert len(codes) == count == len(set(codes)) == len(scratch.hashes)
    assert all(len(c) == length and c.isdigit() for c in codes)
    assert scratch.length == length
    assert verify_scratch(scratch, codes[-1], frozenset()) == count - 1


@pytest.mark.parametrize(
    ("count", "length", "message"),
    [
        (0, 8, "count must be from 1 to 100"),
        (101, 8, "count must be from 1 to 100"),
        (-1, 8, "count must be from 1 to 100"),
        (10, 5, "length must be from 6 to 12"),
        (10, 13, "length must be from 6 to 12"),
        (True, 8, "count must be an integer from 1 to 100"),
        (10, 8.0, "length must be an integer from 6 to 12"),
        ("10", 8, "count must be an integer from 1 to 100"),
    ],
)
def test_generation_errors(count: Any, length: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate_scratch_list(count, length)


def test_salts_differ_between_lists() -> None:
    _, first = generate_scratch_list(1, 6)
    _, second = generate_scratch_list(1, 6)
    assert first.salt != second.salt


def test_duplicate_draws_are_redrawn(monkeypatch: pytest.MonkeyPatch) -> None:
    # Force the CSPRNG to repeat: "000000" twice, then "111111" and "222222".
    digits: Iterator[str] = iter("000000" + "000000" + "111111" + "000000" + "222222")
    monkeypatch.setattr(secrets, "choice", lambda _seq: next(digits))
    codes, scratch = generate_scratch_list(3, 6)
    assert codes == ["000000", "111111", "222222"]
    monkeypatch.undo()
    assert [verify_scratch(scratch, c, frozenset()) for c in codes] == [0, 1, 2]


def test_codes_use_every_digit() -> None:
    codes, _ = generate_scratch_list(100, 12)
    assert set("".join(codes)) == set("0123456789")


# --- verification ----------------------------------------------------------------------


def test_each_code_verifies_exactly_once(default_list: tuple[list[str], ScratchList]) -> None:
    codes, scratch = default_list
    used: frozenset[int] = frozenset()
    for expected_index, code in enumerate(codes):
        index = verify_scratch(scratch, code, used)
        assert index == expected_index
        used = used | {index}
        assert verify_scratch(scratch, code, used) is None
    assert used == frozenset(range(10))
    for code in codes:
        assert verify_scratch(scratch, code, used) is None


def test_order_of_use_does_not_matter(default_list: tuple[list[str], ScratchList]) -> None:
    codes, scratch = default_list
    used = frozenset({0, 1, 2})
    assert verify_scratch(scratch, codes[7], used) == 7
    assert verify_scratch(scratch, codes[2], used) is None
    # indices outside the list in `used` are harmless
    assert verify_scratch(scratch, codes[3], frozenset({99, -1})) == 3


def test_wrong_codes_rejected(default_list: tuple[list[str], ScratchList]) -> None:
    codes, scratch = default_list
    wrong = next(f"{n:08d}" for n in range(10**8) if f"{n:08d}" not in codes)
    assert verify_scratch(scratch, wrong, frozenset()) is None
    for bad in [
        "",
        codes[0][:-1],
        codes[0] + "0",
        codes[0][::-1] if codes[0][::-1] not in codes else "x",
        "abcdefgh",
        codes[0][:-1] + "x",
        "+" + codes[0][1:],
        # Arabic-Indic digits and full-width digits are not ASCII digits
        codes[0].translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")),
        codes[0].translate(str.maketrans("0123456789", FULLWIDTH_DIGITS)),
    ]:
        assert verify_scratch(scratch, bad, frozenset()) is None


def test_normalises_spaces_and_dashes(default_list: tuple[list[str], ScratchList]) -> None:
    codes, scratch = default_list
    code = codes[4]
    for typed in [
        f"{code[:4]}-{code[4:]}",
        f"{code[:4]} {code[4:]}",
        f"  {code[:4]} - {code[4:]}\n",
        f"{code[:2]}-{code[2:4]}-{code[4:6]}-{code[6:]}",
        f"{code[:4]}\u00a0{code[4:]}",
        format_for_print([code])[0],
    ]:
        assert verify_scratch(scratch, typed, frozenset()) == 4
    assert verify_scratch(scratch, f"{code[:4]} {code[4:]}", frozenset({4})) is None


_FIXED = generate_scratch_list(5, 6)


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=20))
def test_arbitrary_input_never_raises(text: str) -> None:
    codes, scratch = _FIXED
    result = verify_scratch(scratch, text, frozenset())
    normalised = "".join(text.split()).replace("-", "")
    assert result == (codes.index(normalised) if normalised in codes else None)


def test_known_answer_pins_the_kdf() -> None:
    # The stored hash is scrypt(code, salt, N=2**11, r=8, p=1, 32 bytes), no index mixed in.
    salt = bytes(range(16))
    digest = hashlib.scrypt(b"12345678", salt=salt, n=2**11, r=8, p=1, dklen=32)
    other = hashlib.scrypt(b"87654321", salt=salt, n=2**11, r=8, p=1, dklen=32)
    scratch = ScratchList(salt=salt, hashes=(other, digest), length=8)
    assert KDF_ID == "scrypt-n2048-r8-p1"
    assert verify_scratch(scratch, "1234 5678", frozenset()) == 1
    assert verify_scratch(scratch, "8765-4321", frozenset()) == 0
    assert verify_scratch(scratch, "1234 5679", frozenset()) is None


def test_hashes_do_not_contain_the_codes(default_list: tuple[list[str], ScratchList]) -> None:
    codes, scratch = default_list
    stored = json.dumps(scratch.to_dict())
    for code in codes:
        assert code not in stored
        assert code not in repr(scratch)
        for digest in scratch.hashes:
            assert code.encode() not in digest
            assert digest != hashlib.sha256(code.encode()).digest()
            assert digest != hashlib.sha256(scratch.salt + code.encode()).digest()
    assert scratch.salt.hex() not in repr(scratch)


# --- remaining / is_low ----------------------------------------------------------------


def test_remaining_and_is_low(default_list: tuple[list[str], ScratchList]) -> None:
    _, scratch = default_list
    assert remaining(scratch, frozenset()) == 10
    assert remaining(scratch, frozenset({0, 5})) == 8
    assert remaining(scratch, frozenset({0, 5, 10, 99, -1})) == 8
    assert remaining(scratch, frozenset(range(10))) == 0
    # default threshold 10: fewer than 10 left is low
    assert not is_low(scratch, frozenset())
    assert is_low(scratch, frozenset({3}))
    assert not is_low(scratch, frozenset({0, 1, 2}), threshold=3)
    assert is_low(scratch, frozenset({0, 1, 2, 3, 4, 5, 6, 7}), threshold=3)
    assert not is_low(scratch, frozenset(range(10)), threshold=0)


@pytest.mark.parametrize("threshold", [-1, True, 2.5, "3"])
def test_is_low_rejects_bad_threshold(
    default_list: tuple[list[str], ScratchList], threshold: Any
) -> None:
    with pytest.raises(ValueError, match="threshold"):
        is_low(default_list[1], frozenset(), threshold)


# --- to_dict / from_dict ---------------------------------------------------------------


def test_dict_round_trip(default_list: tuple[list[str], ScratchList]) -> None:
    codes, scratch = default_list
    data = scratch.to_dict()
    assert data["kdf"] == KDF_ID
    assert data["length"] == 8
    assert isinstance(data["salt"], str)
    assert isinstance(data["hashes"], list)
    assert len(data["hashes"]) == 10
    text = json.dumps(data)
    for forbidden in "=+/$\\":
        assert forbidden not in text
    restored = ScratchList.from_dict(json.loads(text))
    assert restored == scratch
    assert verify_scratch(restored, codes[9], frozenset()) == 9


def _valid() -> dict[str, Any]:
    return {
        "kdf": KDF_ID,
        "salt": b64(bytes(16)),
        "hashes": [b64(bytes([i]) * 32) for i in range(3)],
        "length": 8,
    }


def test_from_dict_accepts_valid() -> None:
    scratch = ScratchList.from_dict(_valid())
    assert scratch.hashes == tuple(bytes([i]) * 32 for i in range(3))


@pytest.mark.parametrize(
    ("key", "value", "field"),
    [
        ("kdf", None, "kdf"),
        ("kdf", "scrypt-n16384-r8-p1", "kdf"),
        ("salt", None, "salt"),
        ("salt", 12, "salt"),
        ("salt", b64(bytes(15)), "salt"),
        ("salt", b64(bytes(17)), "salt"),
        ("salt", b64(bytes(16)) + "==", "salt"),
        ("salt", "+" + b64(bytes(16))[1:], "salt"),
        ("salt", "/" + b64(bytes(16))[1:], "salt"),
        ("salt", b64(bytes(16))[:-1] + "B", "salt"),  # non-canonical trailing bits
        ("salt", b64(bytes(16))[:-1], "salt"),
        ("salt", b64(bytes(16)) + "A", "salt"),  # impossible length
        ("hashes", None, "hashes"),
        ("hashes", "AAAA", "hashes"),
        ("hashes", [], "hashes"),
        ("hashes", [b64(bytes(31))], "hashes"),
        ("hashes", [b64(bytes(33))], "hashes"),
        ("hashes", [b64(bytes(32)), 5], "hashes"),
        ("hashes", [b64(bytes([i % 256]) * 32) for i in range(101)], "hashes"),
        ("length", None, "length"),
        ("length", "8", "length"),
        ("length", True, "length"),
        ("length", 5, "length"),
        ("length", 13, "length"),
    ],
)
def test_from_dict_rejects(key: str, value: Any, field: str) -> None:
    data = _valid()
    if value is None:
        del data[key]
    else:
        data[key] = value
    with pytest.raises(ValueError, match=f"^{field}"):
        ScratchList.from_dict(data)


def test_from_dict_rejects_non_mapping() -> None:
    with pytest.raises(ValueError, match="mapping"):
        ScratchList.from_dict([])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"salt": bytes(8)}, "salt"),
        ({"salt": "x" * 16}, "salt"),
        ({"hashes": [bytes(32)]}, "hashes"),
        ({"hashes": ()}, "hashes"),
        ({"hashes": (bytes(31),)}, "hashes"),
        ({"length": 20}, "length"),
    ],
)
def test_constructor_validates(kwargs: dict[str, Any], field: str) -> None:
    args: dict[str, Any] = {"salt": bytes(16), "hashes": (bytes(32),), "length": 8}
    args.update(kwargs)
    with pytest.raises(ValueError, match=f"^{field}"):
        ScratchList(**args)


# --- format_for_print ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "printed"),
    [
        ("123456", "123 456"),
        ("1234567", "1234 567"),
        ("12345678", "1234 5678"),
        ("123456789", "123 456 789"),
        ("1234567890", "1234 567 890"),
        ("12345678901", "1234 5678 901"),
        ("123456789012", "1234 5678 9012"),
    ],
)
def test_format_for_print(code: str, printed: str) -> None:
    assert format_for_print([code]) == [printed]


def test_format_for_print_list(default_list: tuple[list[str], ScratchList]) -> None:
    codes, scratch = default_list
    printed = format_for_print(codes)
    assert len(printed) == len(codes)
    for index, line in enumerate(printed):
        assert line.replace(" ", "") == codes[index]
        assert verify_scratch(scratch, line, frozenset()) == index
    assert format_for_print([]) == []


@pytest.mark.parametrize("bad", ["", "1234-5678", "abcd", FULLWIDTH_DIGITS[1:7]])
def test_format_for_print_rejects_non_digits(bad: str) -> None:
    with pytest.raises(ValueError, match="decimal digits"):
        format_for_print([bad])
