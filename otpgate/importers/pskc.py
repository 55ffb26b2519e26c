"""PSKC, the Portable Symmetric Key Container (RFC 6030), read safely (pure).

Supported: plaintext secrets (§4), secrets encrypted with AES-CBC (128/192/256) under a
pre-shared key (§6.1, ``--psk HEX``) or a PBKDF2-derived key (§6.2, ``--password``), the
container's MAC (``MACMethod``: HMAC-SHA1/-SHA256 over IV and ciphertext, keyed with the
encrypted ``MACKey``) which is always checked for encrypted values.  The XML is parsed by
defusedxml (no DTDs, entities or external references) and elements are matched by local
name, as both the RFC's prefixed and default-namespace examples spell them.

Algorithms: HOTP (``urn:ietf:params:xml:ns:keyprov:pskc:hotp``) and TOTP
(``...:pskc:totp``, also ``#totp``), decimal responses of 6-8 digits.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from xml.etree.ElementTree import Element

import defusedxml.ElementTree as SafeET
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from defusedxml import DefusedXmlException

from otpgate.directory.inventory import check_serial
from otpgate.errors import ImportFormatError, InventoryError, PskcKeyError
from otpgate.importers import (
    ImportedToken,
    ImportResult,
    RowProblem,
    check_key,
    duplicate_problems,
    with_problems,
)
from otpgate.otp.oath import Algorithm, check_counter, check_digits, check_period
from otpgate.tokens import Secret, Token, TokenType, new_token_id

PSKC_NS = "urn:ietf:params:xml:ns:keyprov:pskc"
_CBC = {
    "http://www.w3.org/2001/04/xmlenc#aes128-cbc": 16,
    "http://www.w3.org/2001/04/xmlenc#aes192-cbc": 24,
    "http://www.w3.org/2001/04/xmlenc#aes256-cbc": 32,
}
_MAC = {
    "http://www.w3.org/2000/09/xmldsig#hmac-sha1": "sha1",
    "http://www.w3.org/2001/04/xmldsig-more#hmac-sha256": "sha256",
    "http://www.w3.org/2001/04/xmldsig-more#hmac-sha512": "sha512",
}
_PBKDF2 = "http://www.rsasecurity.com/rsalabs/pkcs/schemas/pkcs-5v2-0#pbkdf2"
_PRF = {
    "": "sha1",
    "http://www.w3.org/2000/09/xmldsig#hmac-sha1": "sha1",
    "http://www.w3.org/2001/04/xmldsig-more#hmac-sha256": "sha256",
    "http://www.w3.org/2001/04/xmldsig-more#hmac-sha512": "sha512",
}
_ALGORITHMS = {
    "urn:ietf:params:xml:ns:keyprov:pskc:hotp": TokenType.HOTP,
    "urn:ietf:params:xml:ns:keyprov:pskc#hotp": TokenType.HOTP,
    "urn:ietf:params:xml:ns:keyprov:pskc:totp": TokenType.TOTP,
    "urn:ietf:params:xml:ns:keyprov:pskc#totp": TokenType.TOTP,
}
_SUITES = {
    "hmac-sha1": Algorithm.SHA1,
    "hmac-sha256": Algorithm.SHA256,
    "hmac-sha512": Algorithm.SHA512,
    "sha1": Algorithm.SHA1,
    "sha256": Algorithm.SHA256,
    "sha512": Algorithm.SHA512,
}
MAX_PBKDF2_ITERATIONS = 10_000_000


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _children(elem: Element, name: str) -> Iterator[Element]:
    return (c for c in elem if isinstance(c.tag, str) and _local(c.tag) == name)


def _child(elem: Element | None, *path: str) -> Element | None:
    for name in path:
        if elem is None:
            return None
        elem = next(_children(elem, name), None)
    return elem


def _text(elem: Element | None, *path: str) -> str | None:
    found = _child(elem, *path) if path else elem
    if found is None or found.text is None:
        return None
    return found.text.strip()


def _b64(text: str | None, what: str) -> bytes:
    if not text:
        raise ValueError(f"{what} is empty")
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"{what} is not base64") from exc


@dataclass(frozen=True)
class _Encryption:
    key: bytes | None
    """The AES key for EncryptedValue elements (None: the file has no encrypted values)."""
    mac_key: bytes | None
    mac_hash: str | None


def _decrypt_cbc(key: bytes, method: Element | None, data: bytes, what: str) -> bytes:
    algorithm = method.get("Algorithm", "") if method is not None else ""
    size = _CBC.get(algorithm)
    if size is None:
        raise ValueError(f"{what}: encryption {algorithm or '(none)'} is not supported (AES-CBC)")
    if len(key) != size:
        raise PskcKeyError(f"{what}: {algorithm} needs a {size}-byte key, got {len(key)} bytes")
    if len(data) < 32 or len(data) % 16:
        raise ValueError(f"{what}: ciphertext is not IV + whole AES blocks")
    decryptor = Cipher(algorithms.AES(key), modes.CBC(data[:16])).decryptor()
    padded = decryptor.update(data[16:]) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError as exc:
        raise PskcKeyError(f"{what}: does not decrypt (wrong key or password)") from exc


def _encryption(root: Element, psk: bytes | None, password: str | None) -> _Encryption:
    enc = _child(root, "EncryptionKey")
    if enc is None:
        return _Encryption(None, None, None)
    derived = _child(enc, "DerivedKey")
    if derived is not None:
        if password is None:
            raise PskcKeyError("the file is password-encrypted: give --password")
        key = _pbkdf2(derived, password)
    else:
        if psk is None:
            name = _text(enc, "KeyName") or "a pre-shared key"
            raise PskcKeyError(f"the file is encrypted with {name!r}: give --psk HEX")
        key = psk
    method = _child(root, "MACMethod")
    if method is None:
        raise ImportFormatError(
            "the file has encrypted values but no MACMethod: refusing unauthenticated ciphertext"
        )
    mac_hash = _MAC.get(method.get("Algorithm", ""))
    if mac_hash is None:
        raise ImportFormatError(f"MAC algorithm {method.get('Algorithm')!r} is not supported")
    mac_key_elem = _child(method, "MACKey")
    cipher = _text(mac_key_elem, "CipherData", "CipherValue")
    if mac_key_elem is None or cipher is None:
        raise ImportFormatError("MACMethod has no encrypted MACKey")
    try:
        mac_key = _decrypt_cbc(
            key, _child(mac_key_elem, "EncryptionMethod"), _b64(cipher, "MACKey"), "MACKey"
        )
    except ValueError as exc:
        if isinstance(exc, ImportFormatError):
            raise
        raise ImportFormatError(str(exc)) from exc
    return _Encryption(key, mac_key, mac_hash)


def _pbkdf2(derived: Element, password: str) -> bytes:
    method = _child(derived, "KeyDerivationMethod")
    if method is None or method.get("Algorithm") != _PBKDF2:
        raise ImportFormatError("only PBKDF2 key derivation is supported")
    params = _child(method, "PBKDF2-params")
    try:
        salt = _b64(_text(params, "Salt", "Specified"), "PBKDF2 salt")
        iterations = int(_text(params, "IterationCount") or "")
        length = int(_text(params, "KeyLength") or "16")
    except ValueError as exc:
        raise ImportFormatError(f"PBKDF2 parameters: {exc}") from exc
    if not 1 <= iterations <= MAX_PBKDF2_ITERATIONS:
        raise ImportFormatError(f"PBKDF2 iteration count {iterations} is out of range")
    if length not in (16, 24, 32):
        raise ImportFormatError(f"PBKDF2 key length {length} is not 16, 24 or 32")
    prf_elem = _child(params, "PRF")
    prf = _PRF.get(prf_elem.get("Algorithm", "") if prf_elem is not None else "")
    if prf is None:
        raise ImportFormatError("PBKDF2 PRF is not HMAC-SHA1/256/512")
    return hashlib.pbkdf2_hmac(prf, password.encode("utf-8"), salt, iterations, length)


def _value(
    elem: Element | None, enc: _Encryption, what: str, must_encrypt: bool = False
) -> bytes | None:
    """The bytes of a PSKC value element (PlainValue base64 / EncryptedValue + ValueMAC).

    ``must_encrypt``: in an encrypted container (an EncryptionKey is named) refuse a
    PlainValue: nothing authenticates it, so whoever altered the file in transit would
    plant a value they know.
    """
    if elem is None:
        return None
    plain = _child(elem, "PlainValue")
    if plain is not None:
        if must_encrypt and enc.key is not None:
            raise ValueError(
                f"{what} is a PlainValue in an encrypted file: refusing an unauthenticated "
                "key (the file may have been altered; ask the vendor for the original)"
            )
        return _b64(plain.text, what)
    encrypted = _child(elem, "EncryptedValue")
    if encrypted is None:
        raise ValueError(f"{what} has neither PlainValue nor EncryptedValue")
    if enc.key is None or enc.mac_key is None or enc.mac_hash is None:
        raise ValueError(f"{what} is encrypted but the file names no EncryptionKey")
    data = _b64(_text(encrypted, "CipherData", "CipherValue"), f"{what} CipherValue")
    mac_text = _text(elem, "ValueMAC")
    if mac_text is None:
        raise ValueError(f"{what} is encrypted without a ValueMAC: refusing it")
    expected = hmac.new(enc.mac_key, data, enc.mac_hash).digest()
    if not hmac.compare_digest(expected, _b64(mac_text, f"{what} ValueMAC")):
        raise ValueError(f"{what}: MAC check failed (altered file, or wrong key/password)")
    return _decrypt_cbc(enc.key, _child(encrypted, "EncryptionMethod"), data, what)


def _number(elem: Element | None, enc: _Encryption, what: str) -> int | None:
    """A PSKC integer value: PlainValue as decimal text; encrypted as big-endian bytes."""
    if elem is None:
        return None
    plain = _child(elem, "PlainValue")
    if plain is not None:
        try:
            return int((plain.text or "").strip())
        except ValueError as exc:
            raise ValueError(f"{what} is not a number") from exc
    raw = _value(elem, enc, what)
    return int.from_bytes(raw or b"", "big")


def parse_pskc(
    data: bytes, psk: bytes | None = None, password: str | None = None, now: float | None = None
) -> ImportResult:
    """Read a PSKC file.  Raises ImportFormatError if the container itself is unusable."""
    created = int(time.time() if now is None else now)
    try:
        root: Any = SafeET.fromstring(data)
    except DefusedXmlException as exc:
        raise ImportFormatError(f"refusing unsafe XML ({type(exc).__name__})") from exc
    except SafeET.ParseError as exc:
        raise ImportFormatError(f"not well-formed XML: {exc}") from exc
    if root.tag != f"{{{PSKC_NS}}}KeyContainer":
        raise ImportFormatError(
            f"not a PSKC file: the root element is not {{{PSKC_NS}}}KeyContainer"
        )
    if root.get("Version") not in ("1.0", None):
        raise ImportFormatError(f"PSKC version {root.get('Version')!r} is not 1.0")
    enc = _encryption(root, psk, password)
    tokens: list[ImportedToken] = []
    problems: list[RowProblem] = []
    packages = list(_children(root, "KeyPackage"))
    for number, package in enumerate(packages, start=1):
        try:
            tokens.append(_package(number, package, enc, created))
        except PskcKeyError:
            raise
        except ValueError as exc:
            problems.append(RowProblem(number, str(exc)))
    result = ImportResult(tuple(tokens), tuple(problems), len(packages), "xml")
    return with_problems(result, duplicate_problems(result.tokens))


def _package(number: int, package: Element, enc: _Encryption, created: int) -> ImportedToken:
    keys = list(_children(package, "Key"))
    if len(keys) != 1:
        raise ValueError(f"expected one Key, found {len(keys)}")
    key = keys[0]
    algorithm = key.get("Algorithm", "")
    kind = _ALGORITHMS.get(algorithm)
    if kind is None:
        raise ValueError(f"algorithm {algorithm or '(none)'} is not supported (HOTP, TOTP)")
    serial_text = _text(package, "DeviceInfo", "SerialNo") or key.get("Id") or ""
    try:
        serial = check_serial(serial_text)
    except InventoryError as exc:
        raise ValueError(str(exc)) from exc
    params = _child(key, "AlgorithmParameters")
    response = _child(params, "ResponseFormat")
    digits = 6
    if response is not None:
        encoding = response.get("Encoding", "DECIMAL")
        if encoding.upper() != "DECIMAL":
            raise ValueError(f"response encoding {encoding} is not DECIMAL")
        try:
            digits = check_digits(int(response.get("Length", "6")))
        except ValueError as exc:
            raise ValueError(f"ResponseFormat: {exc}") from exc
    suite = (_text(params, "Suite") or "hmac-sha1").lower()
    hash_alg = _SUITES.get(suite)
    if hash_alg is None:
        raise ValueError(f"suite {suite!r} is not HMAC-SHA1/256/512")
    data = _child(key, "Data")
    secret = _value(_child(data, "Secret"), enc, f"KeyPackage {number} ({serial}) Secret", True)
    if secret is None:
        raise ValueError("the key has no Secret")
    check_key(secret, "Secret")
    counter = check_counter(_number(_child(data, "Counter"), enc, "Counter") or 0, "Counter")
    period = _number(_child(data, "TimeInterval"), enc, "TimeInterval") or 30
    start = _number(_child(data, "Time"), enc, "Time") or 0
    if kind is TokenType.TOTP:
        check_period(period)
        if start:
            raise ValueError("a TOTP start time other than 0 (T0) is not supported")
    label = (
        _text(key, "FriendlyName")
        or " ".join(t for t in (_text(package, "DeviceInfo", "Manufacturer"), serial) if t)
        or serial
    )
    token = Token(
        id=new_token_id(),
        type=kind,
        created=created,
        label=label[:64],
        serial=serial,
        digits=digits,
        algorithm=hash_alg,
        period=period if kind is TokenType.TOTP else 30,
    )
    last = counter - 1 if kind is TokenType.HOTP else -1
    return ImportedToken(number, token, Secret(secret), last)
