import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from otpgate.codec import (
    AttributeCodec,
    AttributeSpec,
    CodecError,
    Format,
    Purpose,
    Syntax,
    postal_escape,
    postal_unescape,
)
from otpgate.vault import Keyring

KR = Keyring({"k1": os.urandom(32)}, "k1")
GUID = os.urandom(16)
AD_POSTAL = AttributeSpec("postalAddress", Syntax.UNICODE, 4096)
AD_REGISTERED = AttributeSpec("registeredAddress", Syntax.OCTET, 4096)
AD_WWW = AttributeSpec("wWWHomePage", Syntax.UNICODE, 2048)
OL_POSTAL = AttributeSpec("postalAddress", Syntax.POSTAL, None)


@given(st.text())
def test_postal_escaping_round_trips(text):
    escaped = postal_escape(text)
    assert "$" not in escaped
    assert postal_unescape(escaped) == text


def test_postal_escape_examples():
    assert postal_escape("a$b\\c") == "a\\24b\\5Cc"
    assert postal_unescape("a\\24b\\5cc") == "a$b\\c"
    with pytest.raises(ValueError):
        postal_unescape("line1$line2")
    with pytest.raises(ValueError):
        postal_unescape("bad\\41")


DOC = {"label": "Ann's $phone \\ é", "n": 3}


@pytest.mark.parametrize(
    "spec,fmt",
    [
        (AD_POSTAL, Format.JSON_ENCRYPTED),
        (AD_REGISTERED, Format.BINARY),
        (AD_REGISTERED, Format.JSON),
        (AD_WWW, Format.JSON),
        (OL_POSTAL, Format.JSON),
        (OL_POSTAL, Format.JSON_ENCRYPTED),
    ],
)
def test_round_trip_every_format(spec, fmt):
    codec = AttributeCodec(spec, fmt, Purpose.TOKEN, KR)
    raw = codec.encode(DOC, GUID, "ann")
    if spec.syntax is not Syntax.OCTET or fmt is not Format.BINARY:
        raw.decode("ascii")  # text syntaxes get ASCII only
    if spec.syntax is Syntax.POSTAL:
        assert b"$" not in raw
    assert codec.decode(raw, GUID, "ann") == DOC
    if fmt is not Format.JSON:
        assert b"phone" not in raw


def test_decode_accepts_any_format_after_a_format_change():
    plain = AttributeCodec(AD_REGISTERED, Format.JSON, Purpose.USED, KR).encode(DOC, GUID, "ann")
    binary = AttributeCodec(AD_REGISTERED, Format.BINARY, Purpose.USED, KR)
    assert binary.decode(plain, GUID, "ann") == DOC


def test_seed_never_plain():
    with pytest.raises(CodecError, match="always encrypted"):
        AttributeCodec(AD_POSTAL, Format.JSON, Purpose.SEED, KR)
    codec = AttributeCodec(AD_POSTAL, Format.JSON_ENCRYPTED, Purpose.SEED, KR)
    with pytest.raises(CodecError, match="unencrypted seed"):
        codec.decode(b'{"s":{}}', GUID, "ann")


def test_binary_only_on_octet_strings():
    with pytest.raises(CodecError, match="octet-string"):
        AttributeCodec(AD_POSTAL, Format.BINARY, Purpose.TOKEN, KR)


def test_size_limit_names_user_and_attribute():
    codec = AttributeCodec(AD_WWW, Format.JSON_ENCRYPTED, Purpose.USED, KR)
    with pytest.raises(CodecError, match=r"ann: .*wWWHomePage.*2048"):
        codec.encode({"x": "y" * 2000}, GUID, "ann")
    codec.encode({"x": "y" * 1000}, GUID, "ann")


def test_wrong_entry_ciphertext_rejected():
    codec = AttributeCodec(AD_POSTAL, Format.JSON_ENCRYPTED, Purpose.SEED, KR)
    raw = codec.encode({"s": {}}, GUID, "ann")
    with pytest.raises(CodecError, match="bob: postalAddress"):
        codec.decode(raw, os.urandom(16), "bob")
    assert codec.key_id_of(raw) == "k1"
