"""Listening sockets of the LDAP proxy, shareable by several processes (SO_REUSEPORT)."""

from __future__ import annotations

import socket
from typing import Any

from twisted.application import service, strports
from twisted.internet.protocol import Factory
from twisted.protocols.tls import TLSMemoryBIOFactory

from otpgate.configfile import parse_listen


class ReusePortListener(service.Service):
    """Listens on a socket with SO_REUSEPORT: every process that does the same gets a share."""

    def __init__(self, reactor: Any, description: str, factory: Factory, tls_options: Any) -> None:
        self.reactor = reactor
        self.address = parse_listen(description)
        self.factory: Any = (
            TLSMemoryBIOFactory(tls_options, False, factory) if self.address.tls else factory
        )
        self.port: Any = None

    def startService(self) -> None:
        service.Service.startService(self)
        family = socket.AF_INET6 if ":" in self.address.interface else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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
    """One service per configured listener; ``shared`` for several processes."""
    config = gateway.config.ldap_proxy
    services: list[service.Service] = []
    for description in config.listen:
        factory = gateway.ldap_proxy_factory(tls_listener=description.startswith("ssl:"))
        if shared:
            services.append(ReusePortListener(reactor, description, factory, factory.tls_options))
        else:
            services.append(strports.service(description, factory, reactor=reactor))
    return services
