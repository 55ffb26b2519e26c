"""Listener side of the LDAP proxy: TLS contexts, connection limits, counters."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet import protocol, ssl
from twisted.logger import Logger

from otpgate.auth.requests import Channel
from otpgate.directory.ldapdata import LdapUrl
from otpgate.ldapproxy.config import LdapProxyConfig
from otpgate.ldapproxy.proxy import LdapProxyProtocol
from otpgate.ldapproxy.upstream import UpstreamProtocol, connect_upstream

if TYPE_CHECKING:
    from otpgate.service import Gateway

log = Logger()


def server_tls_options(config: LdapProxyConfig) -> Any:
    """CertificateOptions for LDAPS and StartTLS, or None without a certificate."""
    if config.cert_file is None or config.key_file is None:
        return None
    # cryptography objects (pyOpenSSL deprecates its own); Twisted's hints still name PKey/X509.
    key: Any = serialization.load_pem_private_key(config.key_file.read_bytes(), password=None)
    cert: Any = x509.load_pem_x509_certificate(config.cert_file.read_bytes())
    minimum = ssl.TLSVersion.TLSv1_3 if config.min_tls_version == "1.3" else ssl.TLSVersion.TLSv1_2
    return ssl.CertificateOptions(
        privateKey=key,
        certificate=cert,
        raiseMinimumTo=minimum,
    )


class ProxyFactory(protocol.Factory):
    def __init__(self, gateway: Gateway, *, tls_listener: bool = False, listener: str = "") -> None:
        """``listener``: its listen string (``[ldap_proxy] listen``), which names it in the
        audit and selects its access rules (``listener_rules``)."""
        self.gateway = gateway
        self.clock = gateway.reactor
        self.config = gateway.config.ldap_proxy
        self.tls_options = server_tls_options(self.config)
        self.is_tls_listener = tls_listener
        require = self.config.require_tls_for_binds
        rules = self.config.rules_for(listener)
        self.channels: dict[bool, Channel] = {  # by "the connection is TLS"
            tls: Channel(
                "ldap",
                name=rules.name or listener,
                tls=tls,
                require_tls=require,
                allow_groups=rules.allow_groups,
                deny_groups=rules.deny_groups,
                where=listener,
                enforce=rules.enforce,
            )
            for tls in (False, True)
        }
        directory = gateway.config.directory
        self._urls = [LdapUrl.parse(u) for u in directory.urls]
        self._connections: set[LdapProxyProtocol] = set()
        self._per_client: Counter[str | None] = Counter()
        shared = getattr(gateway, "ldap_proxy_counters", None)
        self.counters: Counter[str] = Counter() if shared is None else shared
        """Refusals and other connection events, shared by the gateway's listeners."""

    def buildProtocol(self, addr: Any) -> LdapProxyProtocol | None:
        """``addr`` is the client's address, the one place it comes from: the TCP peer, or
        the PROXY header's source behind a listed balancer (proxyheader.py)."""
        host = getattr(addr, "host", None)
        if len(self._connections) >= self.config.max_connections:
            self.count("refused_global_limit")
            log.warn("refusing {peer}: {n} connections open", peer=host, n=len(self._connections))
            return None
        if self._per_client[host] >= self.config.max_connections_per_client:
            self.count("refused_client_limit")
            log.warn("refusing {peer}: per-client connection limit", peer=host)
            return None
        proto = LdapProxyProtocol(self, host)
        self._connections.add(proto)
        self._per_client[host] += 1
        return proto

    def forget(self, proto: LdapProxyProtocol) -> None:
        if proto in self._connections:
            self._connections.remove(proto)
            self._per_client[proto.peer_host] -= 1
            if self._per_client[proto.peer_host] <= 0:
                del self._per_client[proto.peer_host]

    def count(self, what: str) -> None:
        self.counters[what] += 1

    def pdu_limit(self, bound: bool) -> int:
        return self.config.max_pdu_after_bind if bound else self.config.max_pdu_before_bind

    async def connect_upstream(self) -> UpstreamProtocol:
        directory = self.gateway.config.directory
        return await connect_upstream(
            self.gateway.reactor, self._urls, self.gateway.tls, directory.timeout
        )
