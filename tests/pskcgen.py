"""PSKC files (RFC 6030) for the tests: several KeyPackages, their secrets encrypted with
AES-128-CBC under a password (PBKDF2, §6.2) or a pre-shared key (§6.1), MACed with
HMAC-SHA1, as token vendors ship them."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

HOTP = "urn:ietf:params:xml:ns:keyprov:pskc:hotp"
TOTP = "urn:ietf:params:xml:ns:keyprov:pskc:totp"
OCRA = "urn:ietf:params:xml:ns:keyprov:pskc#OCRA-1"
"""Not a one-time-password algorithm otpgate takes: a problem row."""


@dataclass(frozen=True)
class Package:
    serial: str
    key: bytes
    algorithm: str = HOTP
    counter: int = 0


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _encrypt(key: bytes, data: bytes) -> bytes:
    iv = os.urandom(16)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(data) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return iv + encryptor.update(padded) + encryptor.finalize()


def pskc(
    packages: list[Package], *, password: str | None = None, psk: bytes | None = None
) -> bytes:
    """A PSKC container of ``packages``: encrypted under ``password`` (PBKDF2, 1000 rounds)
    or ``psk`` (16 bytes), else with plain secrets."""
    aes = "http://www.w3.org/2001/04/xmlenc#aes128-cbc"
    head = ""
    key: bytes | None = None
    if password is not None:
        salt = os.urandom(8)
        key = hashlib.pbkdf2_hmac("sha1", password.encode(), salt, 1000, 16)
        head = (
            "<pskc:EncryptionKey><xenc11:DerivedKey><xenc11:KeyDerivationMethod Algorithm="
            '"http://www.rsasecurity.com/rsalabs/pkcs/schemas/pkcs-5v2-0#pbkdf2">'
            f"<pkcs5:PBKDF2-params><Salt><Specified>{_b64(salt)}</Specified></Salt>"
            "<IterationCount>1000</IterationCount><KeyLength>16</KeyLength><PRF/>"
            "</pkcs5:PBKDF2-params></xenc11:KeyDerivationMethod>"
            "<xenc11:MasterKeyName>Batch password</xenc11:MasterKeyName>"
            "</xenc11:DerivedKey></pskc:EncryptionKey>"
        )
    elif psk is not None:
        key = psk
        head = "<pskc:EncryptionKey><ds:KeyName>Pre-shared-key</ds:KeyName></pskc:EncryptionKey>"
    mac_key = os.urandom(20)
    if key is not None:
        head += (
            '<pskc:MACMethod Algorithm="http://www.w3.org/2000/09/xmldsig#hmac-sha1">'
            f'<pskc:MACKey><xenc:EncryptionMethod Algorithm="{aes}"/><xenc:CipherData>'
            f"<xenc:CipherValue>{_b64(_encrypt(key, mac_key))}</xenc:CipherValue>"
            "</xenc:CipherData></pskc:MACKey></pskc:MACMethod>"
        )
    body = []
    for p in packages:
        if key is None:
            secret = f"<pskc:PlainValue>{_b64(p.key)}</pskc:PlainValue>"
        else:
            cipher = _encrypt(key, p.key)
            mac = hmac.new(mac_key, cipher, "sha1").digest()
            secret = (
                f'<pskc:EncryptedValue><xenc:EncryptionMethod Algorithm="{aes}"/>'
                f"<xenc:CipherData><xenc:CipherValue>{_b64(cipher)}</xenc:CipherValue>"
                f"</xenc:CipherData></pskc:EncryptedValue><pskc:ValueMAC>{_b64(mac)}"
                "</pskc:ValueMAC>"
            )
        body.append(
            "\n  <pskc:KeyPackage>\n"
            f"    <pskc:DeviceInfo><pskc:Manufacturer>Acme</pskc:Manufacturer>"
            f"<pskc:SerialNo>{p.serial}</pskc:SerialNo></pskc:DeviceInfo>\n"
            f'    <pskc:Key Algorithm="{p.algorithm}" Id="{p.serial}">'
            '<pskc:AlgorithmParameters><pskc:ResponseFormat Length="6" Encoding="DECIMAL"/>'
            f"</pskc:AlgorithmParameters><pskc:Data><pskc:Secret>{secret}</pskc:Secret>"
            f"<pskc:Counter><pskc:PlainValue>{p.counter}</pskc:PlainValue></pskc:Counter>"
            "</pskc:Data></pskc:Key>\n  </pskc:KeyPackage>"
        )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<pskc:KeyContainer xmlns:pskc="urn:ietf:params:xml:ns:keyprov:pskc" '
        'xmlns:xenc11="http://www.w3.org/2009/xmlenc11#" '
        'xmlns:pkcs5="http://www.rsasecurity.com/rsalabs/pkcs/schemas/pkcs-5v2-0#" '
        'xmlns:xenc="http://www.w3.org/2001/04/xmlenc#" '
        'xmlns:ds="http://www.w3.org/2000/09/xmldsig#" Version="1.0">'
        f"{head}{''.join(body)}\n</pskc:KeyContainer>\n"
    ).encode()
