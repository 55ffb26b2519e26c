"""RADIUS codec: strict layout, Message-Authenticator, User-Password, signed replies (pyrad as peer)."""

import hashlib
import hmac
import os
import struct

import pytest
from pyrad import packet as pp
from pyrad.dictionary import Dictionary

from otpgate.errors import MalformedPacket
from otpgate.radius.packet import (
    ACCESS_ACCEPT,
    ACCESS_CHALLENGE,
    ACCESS_REJECT,
    MS_CHAP2_SUCCESS,
    PROXY_STATE,
    REPLY_MESSAGE,
    STATE,
    check_layout,
    decode_request,
    decrypt_password,
    encode_reply,
    hide_password,
    salt_encrypt,
    text,
    verify_message_authenticator,
)

SECRET = b"0123456789abcdef-secret"


def client_request(*, secret=SECRET, ma=True, attrs=(), password=None, ident=7):
    pkt = pp.AuthPacket(id=ident, secret=secret, dict=Dictionary())
    pkt.authenticator = os.urandom(16)
    pkt[1] = [b"alice"]
    if password is not None:
        pkt[2] = [pkt.PwCrypt(password)]
    for key, value in attrs:
        pkt.setdefault(key, []).append(value)
    if ma:
        pkt.add_message_authenticator()
    return pkt, pkt.RequestPacket()


def test_decode_and_verify_message_authenticator():
    pkt, raw = client_request(password="pw123456")
    request = decode_request(raw, SECRET, 255)
    assert (request.code, request.id, request.authenticator) == (1, 7, pkt.authenticator)
    assert request.has_message_authenticator and verify_message_authenticator(request)
    assert request.one(1) == b"alice"
    assert decode_request(raw, b"wrong-secret-0123456", 255).has_message_authenticator
    assert not verify_message_authenticator(decode_request(raw, b"wrong-secret-0123456", 255))


def test_tampered_packet_fails_message_authenticator():
    _, raw = client_request(password="pw")
    tampered = raw[:-1] + bytes((raw[-1] ^ 1,))
    assert not verify_message_authenticator(decode_request(tampered, SECRET, 255))


def test_without_message_authenticator():
    _, raw = client_request(ma=False, password="pw")
    request = decode_request(raw, SECRET, 255)
    assert not request.has_message_authenticator
    assert not verify_message_authenticator(request)


@pytest.mark.parametrize("password", ["", "a", "x" * 15, "x" * 16, "x" * 17, "päss wörd", "y" * 128])
def test_password_round_trip_with_pyrad(password):
    pkt, raw = client_request(password=password)
    request = decode_request(raw, SECRET, 255)
    assert decrypt_password(request.one(2), SECRET, request.authenticator) == password.encode()
    assert hide_password(password.encode(), SECRET, pkt.authenticator) == pkt.PwCrypt(password)


def test_password_keeps_bytes_pyrad_would_drop():
    auth = os.urandom(16)
    hidden = hide_password(b"ab\xffcd", SECRET, auth)
    assert decrypt_password(hidden, SECRET, auth) == b"ab\xffcd"


@pytest.mark.parametrize("length", [0, 15, 17, 144])
def test_password_bad_lengths(length):
    with pytest.raises(MalformedPacket):
        decrypt_password(b"\x00" * length, SECRET, b"\x00" * 16)


def header(code=1, ident=1, length=20):
    return struct.pack("!BBH", code, ident, length) + b"\x00" * 16


@pytest.mark.parametrize(
    "data,why",
    [
        (b"", "shorter"),
        (b"\x01" * 19, "shorter"),
        (header(length=19), "outside"),
        (header(length=4097), "outside"),
        (header(length=30), "only"),
        (header(length=21) + b"\x01", "truncated attribute"),
        (header(length=22) + b"\x01\x01", "bad length"),
        (header(length=23) + b"\x01\x05\x00", "bad length"),
        (header(length=36) + b"\x50\x10" + b"\x00" * 14, "not 16"),
        (header(length=56) + (b"\x50\x12" + b"\x00" * 16) * 2, "more than one"),
    ],
)
def test_layout_errors(data, why):
    with pytest.raises(MalformedPacket, match=why):
        decode_request(data, SECRET, 255)


def test_max_attributes_and_padding():
    body = b"\x12\x03x" * 10
    raw = header(length=20 + len(body)) + body
    assert check_layout(raw, 10)[1] == 10
    with pytest.raises(MalformedPacket, match="more than 9"):
        check_layout(raw, 9)
    padded, count, has_ma = check_layout(raw + b"garbage", 10)
    assert padded == raw and count == 10 and not has_ma


def reply_for(request_pkt, raw_request, code, attributes=()):
    request = decode_request(raw_request, SECRET, 255)
    raw = encode_reply(request, code, attributes)
    reply = pp.AuthPacket(packet=raw, secret=SECRET, dict=Dictionary())
    return raw, reply


@pytest.mark.parametrize("code", [ACCESS_ACCEPT, ACCESS_REJECT, ACCESS_CHALLENGE])
def test_reply_message_authenticator_first_and_verified_by_pyrad(code):
    proxy_states = [b"ps-one", b"ps-two"]
    pkt, raw = client_request(password="pw", attrs=[(PROXY_STATE, s) for s in proxy_states])
    attrs = [(REPLY_MESSAGE, b"hello"), (STATE, b"s" * 16)]
    out, reply = reply_for(pkt, raw, code, attrs)
    assert out[0] == code and out[1] == pkt.id
    assert out[20] == 80 and out[21] == 18  # Message-Authenticator is the first attribute
    assert pkt.VerifyReply(reply, out, enforce_ma=True)
    assert reply.get(PROXY_STATE) == proxy_states  # copied, in order
    assert reply.get(REPLY_MESSAGE) == [b"hello"] and reply.get(STATE) == [b"s" * 16]
    # independent check of the Response Authenticator (RFC 2865 §3)
    expect = hashlib.md5(out[:4] + pkt.authenticator + out[20:] + SECRET).digest()
    assert hmac.compare_digest(expect, out[4:20])


def test_reply_with_vendor_attributes_and_salt_encryption():
    pkt, raw = client_request(password="pw")
    key = os.urandom(16)
    encrypted = salt_encrypt(key, SECRET, pkt.authenticator)
    assert encrypted[0] & 0x80 and len(encrypted) == 34
    out, reply = reply_for(pkt, raw, ACCESS_ACCEPT, [(MS_CHAP2_SUCCESS, b"\x01S=" + b"A" * 40)])
    assert pkt.VerifyReply(reply, out, enforce_ma=True)
    assert reply.get(MS_CHAP2_SUCCESS) == [b"\x01S=" + b"A" * 40]
    # pyrad decrypts it with the request authenticator
    holder = pp.Packet(code=ACCESS_ACCEPT, id=1, secret=SECRET, authenticator=pkt.authenticator)
    assert holder.SaltDecrypt(encrypted) == key


def test_reply_to_wrong_secret_fails_pyrad_verification():
    pkt, raw = client_request(password="pw")
    request = decode_request(raw, b"another-secret-012345", 255)
    out = encode_reply(request, ACCESS_ACCEPT)
    reply = pp.AuthPacket(packet=out, secret=SECRET, dict=Dictionary())
    assert not pkt.VerifyReply(reply, out, enforce_ma=True)


def test_text_is_cut_at_a_character_boundary():
    assert text("Code sent by SMS to +\u2022\u2022\u2022\u2022\u202289") == (
        "Code sent by SMS to +\u2022\u2022\u2022\u2022\u202289".encode()
    )
    long = "a" * 252 + "\u2022"  # the bullet's three octets would end past 253
    assert text(long) == b"a" * 252
    assert len(text("\u2022" * 100)) == 252
    text("\u2022" * 100).decode("utf-8")


def test_reply_encoding_is_pyrads_byte_for_byte():
    """The reply encoder is written out (pyrad's costs ~2 µs per attribute); pyrad's own
    encoding of the same reply is the reference."""
    pkt, raw = client_request(password="pw", attrs=[(PROXY_STATE, b"ps-1"), (PROXY_STATE, b"2")])
    request = decode_request(raw, SECRET, 255)
    attributes = [(REPLY_MESSAGE, b"hello"), (REPLY_MESSAGE, b"again"), (25, b"otpgate:00"),
                  (64, b"\x01\x00\x00\x0d"), ((9, 1), b"shell:priv-lvl=15"), ((9, 1), b"x"),
                  ((12356, 1), b"staff"), (81, b"\x01" + b"v" * 252), ((311, 28), b"\x0a\x00\x00\x01")]
    for code in (ACCESS_ACCEPT, ACCESS_REJECT, ACCESS_CHALLENGE):
        reference = request.packet.CreateReply()
        reference.code = code
        reference.message_authenticator = True
        for key, value in attributes:
            reference.setdefault(key, []).append(value)
        assert encode_reply(request, code, attributes) == reference.ReplyPacket()
    with pytest.raises(ValueError, match="do not fit"):
        encode_reply(request, ACCESS_ACCEPT, [((9, 1), b"x" * 248)])
    with pytest.raises(ValueError, match="over 4096"):
        encode_reply(request, ACCESS_ACCEPT, [(11, b"x" * 253)] * 17)
