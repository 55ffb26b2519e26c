"""A throwaway certificate authority for test servers on loopback.

Usage::

    paths = make_server_tls(workdir / "tls", dns_names=["localhost"])
    paths.ca_file, paths.cert_file, paths.key_file

Every call makes a fresh CA: nothing is cached or reused across runs.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["TLSPaths", "make_server_tls"]

LOOPBACK_IP = ipaddress.IPv4Address("127.0.0.1")


@dataclass(frozen=True)
class TLSPaths:
    """PEM files written by :func:`make_server_tls`."""

    ca_file: Path
    """The CA certificate (give it to clients as the trust anchor)."""
    cert_file: Path
    """The server certificate (leaf only)."""
    key_file: Path
    """The server's unencrypted private key (PKCS#8 PEM, mode 0600)."""
    ca_key_file: Path
    """The CA's private key, in case a test wants to issue more certificates."""


def _key() -> rsa.RSAPrivateKey:
    # RSA rather than EC: both GnuTLS (slapd, Samba) and OpenSSL take it everywhere.
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, mode)  # O_CREAT's mode is filtered by the umask


def make_server_tls(
    directory: Path | str,
    dns_names: Sequence[str] = ("localhost",),
    ip_addresses: Sequence[str] = ("127.0.0.1",),
    common_name: str | None = None,
    days: int = 7,
    ca: TLSPaths | None = None,
) -> TLSPaths:
    """Create a CA and a server certificate valid for ``dns_names`` and ``ip_addresses``.

    ``ca``: issue the certificate from that earlier CA instead of a new one (servers that
    one client must trust with a single CA file, e.g. two domain controllers).

    127.0.0.1 is always in the SubjectAltName. Files ``ca.pem``, ``ca.key``, ``server.pem``
    and ``server.key`` are written into ``directory`` (created if missing); keys get mode 0600
    (Samba refuses a key file readable by others).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ips = {ipaddress.ip_address(ip) for ip in ip_addresses} | {LOOPBACK_IP}
    names = list(dict.fromkeys(dns_names))
    if not names:
        raise ValueError("make_server_tls needs at least one DNS name")
    now = datetime.datetime.now(datetime.UTC)
    not_before = now - datetime.timedelta(minutes=5)
    not_after = now + datetime.timedelta(days=days)

    if ca is not None:
        ca_key = serialization.load_pem_private_key(ca.ca_key_file.read_bytes(), None)
        ca_cert = x509.load_pem_x509_certificate(ca.ca_file.read_bytes())
        assert isinstance(ca_key, rsa.RSAPrivateKey)
        ca_name = ca_cert.subject
        ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    else:
        ca_key = _key()
        ca_name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "otpgate tests"),
                x509.NameAttribute(NameOID.COMMON_NAME, "otpgate throwaway test CA"),
            ]
        )
        ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ca_ski, critical=False)
            .sign(ca_key, hashes.SHA256())
        )

    key = _key()
    san: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    san += [x509.IPAddress(ip) for ip in sorted(ips, key=str)]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name or names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    pem = serialization.Encoding.PEM
    pkcs8 = serialization.PrivateFormat.PKCS8
    nocrypt = serialization.NoEncryption()
    paths = TLSPaths(
        ca_file=directory / "ca.pem",
        cert_file=directory / "server.pem",
        key_file=directory / "server.key",
        ca_key_file=directory / "ca.key",
    )
    _write(paths.ca_file, ca_cert.public_bytes(pem), 0o644)
    _write(paths.cert_file, cert.public_bytes(pem), 0o644)
    _write(paths.key_file, key.private_bytes(pem, pkcs8, nocrypt), 0o600)
    _write(paths.ca_key_file, ca_key.private_bytes(pem, pkcs8, nocrypt), 0o600)
    return paths
