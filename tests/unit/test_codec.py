import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from otpgate.codec import (
    AttributeCodec,
    AttributeSpec,
    Format,
    Purpose,
    Syntax,
    postal_escape,
    postal_unescape,
)
from otpgate.errors import CodecError
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
        (AD_REGISTERED, Format.JSON_ENCRYPTED),
        (AD_WWW, Format.JSON_ENCRYPTED),
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
    assert b"phone" not in raw


def test_decode_accepts_either_format_after_a_format_change():
    text = AttributeCodec(AD_REGISTERED, Format.JSON_ENCRYPTED, Purpose.USED, KR)
    binary = AttributeCodec(AD_REGISTERED, Format.BINARY, Purpose.USED, KR)
    assert binary.decode(text.encode(DOC, GUID, "ann"), GUID, "ann") == DOC
    assert text.decode(binary.encode(DOC, GUID, "ann"), GUID, "ann") == DOC


@pytest.mark.parametrize("purpose", list(Purpose))
@pytest.mark.parametrize(
    "raw",
    [
        b'{"s":{}}',
        b'{"id":"t1","type":"scratch","created":1}',
        b'{"u":{},"v":1}',  # the first-writer placeholder is the state layer's business, not ours
        b"v2.k1.AAAA.BBBB",
        b"\xa1",
    ],
)
def test_nothing_but_an_authenticated_envelope_decodes(purpose, raw):
    """A value otpgate did not encrypt (e.g. written by the user on a default AD) is refused."""
    codec = AttributeCodec(AD_REGISTERED, Format.JSON_ENCRYPTED, purpose, KR)
    with pytest.raises(CodecError):
        codec.decode(raw, GUID, "ann")


def test_envelope_of_another_purpose_or_attribute_is_refused():
    used = AttributeCodec(AD_WWW, Format.JSON_ENCRYPTED, Purpose.USED, KR)
    token = AttributeCodec(AD_WWW, Format.JSON_ENCRYPTED, Purpose.TOKEN, KR)
    with pytest.raises(CodecError):
        token.decode(used.encode(DOC, GUID, "ann"), GUID, "ann")
    other_attr = AttributeCodec(AD_POSTAL, Format.JSON_ENCRYPTED, Purpose.USED, KR)
    with pytest.raises(CodecError):
        other_attr.decode(used.encode(DOC, GUID, "ann"), GUID, "ann")


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
