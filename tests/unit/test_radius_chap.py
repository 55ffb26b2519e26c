"""CHAP and MS-CHAPv2 math: RFC 1320 (MD4), RFC 2759 §9.2 and RFC 3079 §3.5.3 vectors."""

import hashlib
import os

import pytest

from otpgate.radius.chap import (
    MsChapV2Response,
    authenticator_response,
    challenge_hash,
    chap_proof,
    chap_response,
    generate_nt_response,
    md4,
    mppe_keys,
    mschap2_proof,
    mschap2_user_names,
    nt_password_hash,
)

MD4_VECTORS = [
    (b"", "31d6cfe0d16ae931b73c59d7e0c089c0"),
    (b"a", "bde52cb31de33e46245e05fbdbd6fb24"),
    (b"abc", "a448017aaf21d8525fc10ae87aa6729d"),
    (b"message digest", "d9130a8164549fe818874806e1c7014b"),
    (b"abcdefghijklmnopqrstuvwxyz", "d79e1c308aa5bbcdeea8ed63df412da9"),
    (b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
     "043f8582f241db351ce627e153e7f0e4"),
    (b"1234567890" * 8, "e33b4ddc9c38f2199c3e7b164fcc0536"),
]


@pytest.mark.parametrize("data,digest", MD4_VECTORS)
def test_md4_rfc1320(data, digest):
    assert md4(data).hex() == digest


def test_md4_lengths_around_the_padding_boundary():
    # 55, 56, 63, 64 and 119 octets exercise one and two block paddings; check consistency
    # with the block structure: same prefix, different length -> different digest.
    digests = {md4(b"x" * n) for n in (55, 56, 63, 64, 119, 120)}
    assert len(digests) == 6


# RFC 2759 §9.2 / RFC 3079 §3.5.3
USER = b"User"
PASSWORD = "clientPass"
AUTH_CHALLENGE = bytes.fromhex("5B5D7C7D7B3F2F3E3C2C602132262628")
PEER_CHALLENGE = bytes.fromhex("21402324255E262A28295F2B3A337C7E")
NT_RESPONSE = bytes.fromhex("82309ECD8D708B5EA08FAA3981CD83544233114A3D85D6DF")


def test_rfc2759_vectors():
    assert challenge_hash(PEER_CHALLENGE, AUTH_CHALLENGE, USER).hex().upper() == "D02E4386BCE91226"
    assert nt_password_hash(PASSWORD).hex().upper() == "44EBBA8D5312B8D611474411F56989AE"
    assert md4(nt_password_hash(PASSWORD)).hex().upper() == "41C00C584BD2D91C4017A2A12FA59F3F"
    assert generate_nt_response(AUTH_CHALLENGE, PEER_CHALLENGE, USER, PASSWORD) == NT_RESPONSE
    challenge = challenge_hash(PEER_CHALLENGE, AUTH_CHALLENGE, USER)
    assert (authenticator_response(nt_password_hash(PASSWORD), NT_RESPONSE, challenge)
            == b"S=407A5589115FD0D6209F510FE9C04566932CDA56")


def test_rfc3079_mppe_send_key():
    send, recv = mppe_keys(nt_password_hash(PASSWORD), NT_RESPONSE)
    # RFC 3079 §3.5.3 gives the 128-bit send start key (the server's send key, Magic3).
    assert send.hex().upper() == "8B7CDC149B993A1BA118CB153F56DCCB"
    assert len(recv) == 16 and recv != send


def ms_response(ident, peer, nt):
    return bytes((ident, 0)) + peer + b"\x00" * 8 + nt


def test_mschap2_proof_accepts_the_code_and_returns_success_and_keys():
    proof = mschap2_proof(USER, AUTH_CHALLENGE, MsChapV2Response.parse(ms_response(7, PEER_CHALLENGE, NT_RESPONSE)))
    assert proof("wrongPass") is None
    success = proof(PASSWORD)
    assert success is not None
    assert success.success == b"\x07S=407A5589115FD0D6209F510FE9C04566932CDA56"
    assert (success.send_key, success.recv_key) == mppe_keys(nt_password_hash(PASSWORD), NT_RESPONSE)


def test_mschap2_domain_user_name_hashed_with_or_without_domain():
    assert mschap2_user_names(b"EXAMPLE\\alice") == (b"EXAMPLE\\alice", b"alice")
    assert mschap2_user_names(b"alice") == (b"alice",)
    auth, peer = os.urandom(16), os.urandom(16)
    for hashed in (b"alice", b"EXAMPLE\\alice"):
        nt = generate_nt_response(auth, peer, hashed, "123456")
        proof = mschap2_proof(b"EXAMPLE\\alice", auth, MsChapV2Response.parse(ms_response(1, peer, nt)))
        assert proof("123456") is not None
        assert proof("123457") is None


def test_mschap2_rejects_bad_lengths():
    with pytest.raises(ValueError):
        MsChapV2Response.parse(b"\x00" * 49)
    with pytest.raises(ValueError):
        mschap2_proof(USER, b"\x00" * 15, MsChapV2Response.parse(b"\x00" * 50))


def test_chap_proof():
    challenge = os.urandom(16)
    response = bytes((42,)) + hashlib.md5(bytes((42,)) + b"654321" + challenge).digest()
    assert chap_response(42, b"654321", challenge) == response[1:]
    proof = chap_proof(response, challenge)
    assert proof("654321") is True
    assert proof("654320") is None
    with pytest.raises(ValueError):
        chap_proof(response[:16], challenge)
