"""Listening sockets of the LDAP proxy, shareable by several processes (SO_REUSEPORT)."""

from __future__ import annotations

import socket
from typing import Any

from twisted.application import service, strports
from twisted.internet.protocol import Factory
from twisted.protocols.tls import TLSMemoryBIOFactory

from otpgate.configfile import parse_listen
from otpgate.ldapproxy.proxyheader import ProxyHeaderFactory


class _TLSFactory(TLSMemoryBIOFactory):
    """TLS around the proxy; no connection when the proxy refuses one (a connection limit)
    instead of a TLS layer around nothing."""

    def buildProtocol(self, addr: Any) -> Any:
        inner = self.wrappedFactory.buildProtocol(addr)
        return None if inner is None else self.protocol(self, inner)


class ReusePortListener(service.Service):
    """Listens on a socket of its own (``reuse_port``: SO_REUSEPORT, so that every process
    that does the same gets a share), with TLS added above the PROXY header if any."""

    def __init__(
        self,
        reactor: Any,
        description: str,
        factory: Factory,
        tls_options: Any,
        reuse_port: bool = True,
    ) -> None:
        self.reactor = reactor
        self.address = parse_listen(description)
        tls = self.address.tls
        self.factory: Any = _TLSFactory(tls_options, False, factory) if tls else factory
        self.reuse_port = reuse_port
        self.port: Any = None

    def read_proxy_header(self, balancers: tuple[Any, ...], count: Any) -> None:
        """The PROXY header from ``balancers``, outside TLS (it comes first on the wire)."""
        self.factory = ProxyHeaderFactory(self.factory, balancers, self.reactor, count)

    def startService(self) -> None:
        service.Service.startService(self)
        family = socket.AF_INET6 if ":" in self.address.interface else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((self.address.interface, self.address.port))
            sock.listen(1024)
            sock.setblocking(False)
            self.port = self.reactor.adoptStreamPort(sock.fileno(), family, self.factory)
        finally:
            sock.close()  # the reactor holds its own duplicate of the descriptor

    def stopService(self) -> Any:
        service.Service.stopService(self)
        return self.port.stopListening() if self.port is not None else None


def proxy_listeners(gateway: Any, reactor: Any, shared: bool) -> list[service.Service]:
    """One service per configured listener; ``shared`` for several processes.  With
    ``proxy_protocol_from`` every listener reads the PROXY header of the listed balancers."""
    config = gateway.config.ldap_proxy
    balancers = config.proxy_protocol_from
    services: list[service.Service] = []
    for description in config.listen:
        factory = gateway.ldap_proxy_factory(
            tls_listener=description.startswith("ssl:"), listener=description
        )
        if shared or balancers:
            listener = ReusePortListener(
                reactor, description, factory, factory.tls_options, reuse_port=shared
            )
            if balancers:
                listener.read_proxy_header(balancers, factory.count)
            services.append(listener)
        else:
            services.append(strports.service(description, factory, reactor=reactor))
    return services
