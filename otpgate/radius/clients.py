"""Which configured NAS a datagram comes from: the most specific matching network."""

from __future__ import annotations

from collections.abc import Sequence

from otpgate.configfile import client_address
from otpgate.radius.config import RadiusClient

_CACHE_SIZE = 4096


class ClientTable:
    def __init__(self, clients: Sequence[RadiusClient]) -> None:
        # Most specific network first, so a /32 entry wins over the /24 around it.
        self.clients = sorted(clients, key=lambda c: c.network.prefixlen, reverse=True)
        self._cache: dict[str, RadiusClient | None] = {}

    def match(self, address: str) -> RadiusClient | None:
        """The client entry for a source address (IPv4-mapped IPv6 counts as IPv4)."""
        try:
            return self._cache[address]
        except KeyError:
            pass
        found = self._lookup(address)
        if len(self._cache) >= _CACHE_SIZE:
            self._cache.clear()
        self._cache[address] = found
        return found

    def _lookup(self, address: str) -> RadiusClient | None:
        ip = client_address(address, zone=True)
        if ip is None:
            return None
        for client in self.clients:
            if ip.version == client.network.version and ip in client.network:
                return client
        return None
