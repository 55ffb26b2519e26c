"""Trust roots for the delivery connections: the configured CA file, or the system's CAs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from twisted.internet import ssl

from otpgate.errors import ConfigError

_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.DOTALL)


def trust_root(ca_file: Path | None) -> Any:
    """An ``IOpenSSLTrustRoot``: the certificates of ``ca_file``, or None (platform CAs)."""
    if ca_file is None:
        return None
    try:
        data = ca_file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read CA file {ca_file}: {exc.strerror}") from exc
    blocks = _PEM.findall(data)
    if not blocks:
        raise ConfigError(f"CA file {ca_file} holds no PEM certificate")
    return ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(b) for b in blocks])


def client_tls(host: str, ca_file: Path | None) -> Any:
    """Client TLS options that verify the certificate chain and the host name."""
    return ssl.optionsForClientTLS(host, trustRoot=trust_root(ca_file))


def tls_reason(failure_value: BaseException) -> str | None:
    """A short reason for a TLS failure (OpenSSL's own words), or None if it is not one."""
    from OpenSSL import SSL

    if isinstance(failure_value, SSL.Error):
        words = [
            str(part)
            for args in failure_value.args
            for item in (args if isinstance(args, list) else [args])
            for part in (item if isinstance(item, tuple) else (item,))
        ]
        detail = words[-1] if words else "handshake failed"
        return f"TLS: {detail}"
    name = type(failure_value).__name__
    if "VerificationError" in name:
        return "TLS: certificate does not match the host name"
    return None
