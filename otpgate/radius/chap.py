"""CHAP (RFC 1994 / RFC 2865 §2.2) and MS-CHAPv2 (RFC 2759, MPPE keys RFC 3079) math.

Pure: no I/O, no state.  The server never learns a cleartext secret from these
protocols, only a proof computed from it, so otpgate can check them only
against secrets it can enumerate: the OTP codes currently valid for a user's
HOTP/TOTP tokens (``candidate_codes`` in ``otpgate.auth.verify``).  Each
``*_proof`` function builds a checker that is called once per candidate code
and compares in constant time.

MD4 (for the NT password hash) is written out here because OpenSSL 3 no longer
offers it through ``hashlib`` by default; DES comes from ``cryptography``.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.ciphers import Cipher, modes

try:  # cryptography >= 43 moved single/triple DES to "decrepit"
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
except ImportError:  # pragma: no cover - older cryptography
    from cryptography.hazmat.primitives.ciphers.algorithms import TripleDES

CHAP_RESPONSE_LENGTH = 17
"""CHAP-Password: one octet CHAP ident + 16 octets MD5 response."""
MSCHAP2_RESPONSE_LENGTH = 50
"""MS-CHAP2-Response: ident, flags, peer challenge (16), reserved (8), NT-Response (24)."""
MSCHAP_CHALLENGE_LENGTH = 16


# -- CHAP -------------------------------------------------------------------------------------


def chap_response(ident: int, secret: bytes, challenge: bytes) -> bytes:
    """RFC 1994: MD5(ident || secret || challenge)."""
    return hashlib.md5(bytes((ident,)) + secret + challenge, usedforsecurity=False).digest()


def chap_proof(chap_password: bytes, challenge: bytes) -> Callable[[str], bool | None]:
    """A checker: True for the code the client's CHAP-Password was computed from.

    ``challenge`` is the CHAP-Challenge attribute, or the Request Authenticator
    when the request has none (RFC 2865 §2.2).
    """
    if len(chap_password) != CHAP_RESPONSE_LENGTH:
        raise ValueError(f"CHAP-Password must be {CHAP_RESPONSE_LENGTH} octets")
    ident, response = chap_password[0], chap_password[1:]

    def check(code: str) -> bool | None:
        ok = hmac.compare_digest(chap_response(ident, code.encode("utf-8"), challenge), response)
        return True if ok else None

    return check


# -- MD4 (RFC 1320) ------------------------------------------------------------------------------

_MASK = 0xFFFFFFFF


def _rotl(x: int, n: int) -> int:
    x &= _MASK
    return ((x << n) | (x >> (32 - n))) & _MASK


def md4(data: bytes) -> bytes:
    """RFC 1320 MD4 (only for the NT password hash, which MS-CHAPv2 fixes to MD4)."""
    message = bytearray(data)
    bit_length = (8 * len(data)) & 0xFFFFFFFFFFFFFFFF
    message.append(0x80)
    message.extend(b"\x00" * ((56 - len(message)) % 64))
    message.extend(struct.pack("<Q", bit_length))
    a, b, c, d = 0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476
    for offset in range(0, len(message), 64):
        x = struct.unpack("<16I", message[offset : offset + 64])
        aa, bb, cc, dd = a, b, c, d
        for i in (0, 4, 8, 12):
            a = _rotl(a + ((b & c) | (~b & d)) + x[i], 3)
            d = _rotl(d + ((a & b) | (~a & c)) + x[i + 1], 7)
            c = _rotl(c + ((d & a) | (~d & b)) + x[i + 2], 11)
            b = _rotl(b + ((c & d) | (~c & a)) + x[i + 3], 19)
        for i in (0, 1, 2, 3):
            a = _rotl(a + ((b & c) | (b & d) | (c & d)) + x[i] + 0x5A827999, 3)
            d = _rotl(d + ((a & b) | (a & c) | (b & c)) + x[i + 4] + 0x5A827999, 5)
            c = _rotl(c + ((d & a) | (d & b) | (a & b)) + x[i + 8] + 0x5A827999, 9)
            b = _rotl(b + ((c & d) | (c & a) | (d & a)) + x[i + 12] + 0x5A827999, 13)
        for i in (0, 2, 1, 3):
            a = _rotl(a + (b ^ c ^ d) + x[i] + 0x6ED9EBA1, 3)
            d = _rotl(d + (a ^ b ^ c) + x[i + 8] + 0x6ED9EBA1, 9)
            c = _rotl(c + (d ^ a ^ b) + x[i + 4] + 0x6ED9EBA1, 11)
            b = _rotl(b + (c ^ d ^ a) + x[i + 12] + 0x6ED9EBA1, 15)
        a, b, c, d = (a + aa) & _MASK, (b + bb) & _MASK, (c + cc) & _MASK, (d + dd) & _MASK
    return struct.pack("<4I", a, b, c, d)


# -- MS-CHAPv2 (RFC 2759) ----------------------------------------------------------------------

_MAGIC1 = b"Magic server to client signing constant"
_MAGIC2 = b"Pad to make it do more than one iteration"
_MPPE_MASTER = b"This is the MPPE Master Key"
_MPPE_CLIENT_SEND = (
    b"On the client side, this is the send key; on the server side, it is the receive key."
)
_MPPE_CLIENT_RECEIVE = (
    b"On the client side, this is the receive key; on the server side, it is the send key."
)
_SHS_PAD1 = b"\x00" * 40
_SHS_PAD2 = b"\xf2" * 40


def _sha1(data: bytes) -> bytes:
    return hashlib.sha1(data).digest()  # noqa: S324 - SHA-1 is fixed by RFC 2759 and RFC 3079


def nt_password_hash(password: str) -> bytes:
    return md4(password.encode("utf-16-le"))


def challenge_hash(
    peer_challenge: bytes, authenticator_challenge: bytes, user_name: bytes
) -> bytes:
    return _sha1(peer_challenge + authenticator_challenge + user_name)[:8]


def _des_key(seven: bytes) -> bytes:
    """Spread 56 key bits over 8 octets (the parity bits are ignored by DES)."""
    bits = int.from_bytes(seven, "big")
    return bytes(((bits >> (49 - 7 * i)) & 0x7F) << 1 for i in range(8))


def _des_encrypt(clear: bytes, seven: bytes) -> bytes:
    key = _des_key(seven)
    encryptor = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()  # noqa: S305 - DES is the protocol
    return encryptor.update(clear) + encryptor.finalize()


def challenge_response(challenge: bytes, password_hash: bytes) -> bytes:
    z = password_hash + b"\x00" * 5
    return b"".join(_des_encrypt(challenge, z[i : i + 7]) for i in (0, 7, 14))


def generate_nt_response(
    authenticator_challenge: bytes, peer_challenge: bytes, user_name: bytes, password: str
) -> bytes:
    """The 24-octet NT-Response a client sends (RFC 2759 §8.1)."""
    challenge = challenge_hash(peer_challenge, authenticator_challenge, user_name)
    return challenge_response(challenge, nt_password_hash(password))


def authenticator_response(password_hash: bytes, nt_response: bytes, challenge: bytes) -> bytes:
    """``S=<40 hex digits>`` (RFC 2759 §8.7), from the password hash and the 8-octet challenge."""
    digest = _sha1(md4(password_hash) + nt_response + _MAGIC1)
    digest = _sha1(digest + challenge + _MAGIC2)
    return b"S=" + digest.hex().upper().encode("ascii")


def mppe_keys(password_hash: bytes, nt_response: bytes) -> tuple[bytes, bytes]:
    """(server send key, server receive key), 128-bit (RFC 3079 §3.4).

    They go into MS-MPPE-Send-Key and MS-MPPE-Recv-Key, as FreeRADIUS's rlm_mschap does.
    """
    master = _sha1(md4(password_hash) + nt_response + _MPPE_MASTER)[:16]

    def start_key(magic: bytes) -> bytes:
        return _sha1(master + _SHS_PAD1 + magic + _SHS_PAD2)[:16]

    return start_key(_MPPE_CLIENT_RECEIVE), start_key(_MPPE_CLIENT_SEND)


@dataclass(frozen=True)
class MsChapV2Response:
    ident: int
    peer_challenge: bytes
    nt_response: bytes

    @classmethod
    def parse(cls, value: bytes) -> MsChapV2Response:
        """An MS-CHAP2-Response attribute value (RFC 2548 §2.3.2)."""
        if len(value) != MSCHAP2_RESPONSE_LENGTH:
            raise ValueError(f"MS-CHAP2-Response must be {MSCHAP2_RESPONSE_LENGTH} octets")
        return cls(value[0], value[2:18], value[26:50])


@dataclass(frozen=True)
class MsChapV2Success:
    """What an Access-Accept carries after a good MS-CHAPv2 response."""

    success: bytes
    """MS-CHAP2-Success value: ident + ``S=...`` authenticator response."""
    send_key: bytes = field(repr=False)
    recv_key: bytes = field(repr=False)


def mschap2_user_names(user_name: bytes) -> tuple[bytes, ...]:
    """The names a client may have hashed into the challenge: as sent, and without DOMAIN\\.

    Windows hashes the bare account name while the NAS forwards ``DOMAIN\\user``
    (FreeRADIUS's ``with_ntdomain_hack``).
    """
    _, sep, bare = user_name.rpartition(b"\\")
    return (user_name, bare) if sep and bare else (user_name,)


def mschap2_proof(
    user_name: bytes, authenticator_challenge: bytes, response: MsChapV2Response
) -> Callable[[str], MsChapV2Success | None]:
    """A checker: the Accept's MS-CHAPv2 data for the code the NT-Response was computed from."""
    if len(authenticator_challenge) != MSCHAP_CHALLENGE_LENGTH:
        raise ValueError(f"MS-CHAP-Challenge must be {MSCHAP_CHALLENGE_LENGTH} octets")
    challenges = [
        challenge_hash(response.peer_challenge, authenticator_challenge, name)
        for name in mschap2_user_names(user_name)
    ]

    def check(code: str) -> MsChapV2Success | None:
        password_hash = nt_password_hash(code)
        found: bytes | None = None
        for challenge in challenges:
            expected = challenge_response(challenge, password_hash)
            if hmac.compare_digest(expected, response.nt_response) and found is None:
                found = challenge
        if found is None:
            return None
        send_key, recv_key = mppe_keys(password_hash, response.nt_response)
        success = bytes((response.ident,)) + authenticator_response(
            password_hash, response.nt_response, found
        )
        return MsChapV2Success(success, send_key, recv_key)

    return check
