"""twistd wiring of the RADIUS front end: one UDP service per [radius].listen address."""

from __future__ import annotations

import socket
from typing import Any

from twisted.application import internet, service
from twisted.application.service import IService

from otpgate.config import Config
from otpgate.radius.binds import BindPool
from otpgate.radius.config import parse_radius_listen
from otpgate.radius.handler import GatewayLike
from otpgate.radius.server import RadiusProtocol, RadiusServer

COUNTERS_LOG_INTERVAL = 300.0


def build_server(gateway: GatewayLike, reactor: Any) -> tuple[RadiusServer, BindPool | None]:
    """The RadiusServer for ``gateway``, with its bind pool ([radius].bind_connections)."""
    size = gateway.config.radius.bind_connections
    pool = None
    if size:
        read_pool = gateway.read_pool
        pool = BindPool(lambda: read_pool.open_connection(bind=False), size)
    return RadiusServer(gateway, reactor, pool.check_password if pool else None), pool


def radius_services(
    gateway: GatewayLike, config: Config, reactor: Any, shared: bool = False
) -> list[IService]:
    """The services that answer RADIUS for ``gateway`` ([] when [radius].listen is empty).

    All listeners share one RadiusServer (clients, duplicate cache, challenges,
    counters); the counters are logged every five minutes when they changed.
    ``shared``: bind with SO_REUSEPORT, for several processes on one port.  The kernel
    keeps one NAS address and port on one process, so retransmissions still meet
    their cached reply; a challenge answered from another source port may not (see
    docs/RADIUS.md).
    """
    if not config.radius.listen:
        return []
    server, pool = build_server(gateway, reactor)
    services: list[IService] = []
    for spec in config.radius.listen:
        host, port = parse_radius_listen(spec)
        udp: service.Service
        if shared:
            udp = ReusePortUDPService(reactor, host, port, server.protocol())
        else:
            udp = internet.UDPServer(port, server.protocol(), interface=host, reactor=reactor)
        udp.name = f"radius {spec}"
        services.append(udp)
    services.append(RadiusHousekeeping(server, pool, reactor))
    return services


class RadiusHousekeeping(service.Service):
    """Logs the counters now and then; closes the bind pool when the service stops."""

    def __init__(self, server: RadiusServer, pool: BindPool | None, reactor: Any) -> None:
        self.server = server
        self.pool = pool
        self.timer = internet.TimerService(COUNTERS_LOG_INTERVAL, server.log_counters)
        self.timer.clock = reactor

    def startService(self) -> None:
        service.Service.startService(self)
        self.timer.startService()

    def stopService(self) -> Any:
        service.Service.stopService(self)
        self.server.log_counters()
        if self.pool is not None:
            self.pool.close()
        return self.timer.stopService()


class ReusePortUDPService(service.Service):
    """A UDP port bound with SO_REUSEPORT: every process that does the same gets a share."""

    def __init__(self, reactor: Any, host: str, port: int, protocol: RadiusProtocol) -> None:
        self.reactor = reactor
        self.host = host
        self.port_number = port
        self.protocol = protocol
        self.port: Any = None

    def startService(self) -> None:
        service.Service.startService(self)
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((self.host, self.port_number))
            sock.setblocking(False)
            self.port = self.reactor.adoptDatagramPort(sock.fileno(), family, self.protocol)
        finally:
            sock.close()  # the reactor holds its own duplicate of the descriptor

    def stopService(self) -> Any:
        service.Service.stopService(self)
        return self.port.stopListening() if self.port is not None else None
