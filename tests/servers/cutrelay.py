"""A relay on loopback between the gateway and a directory spoken to in plain LDAP, for the
attacker on that path who cuts exactly the writes of failed logins: while ``cutting``, a
connection that carries a Modify request is aborted instead of forwarding it (the outcome
of the write is then unknown to the gateway).  Over TLS the attacker tells these writes by
their record length; in plain LDAP the relay reads the operation itself."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.protocols import portforward

from otpgate import ber


class _Server(portforward.ProxyServer):
    factory: _Factory  # type: ignore[assignment]

    def connectionMade(self) -> None:
        self.pdus = ber.PduBuffer()
        super().connectionMade()

    def dataReceived(self, data: bytes) -> None:
        relay = self.factory.relay
        self.pdus.feed(data)
        while (item := self.pdus.next(1 << 24)) is not None:
            pdu, header = item
            if relay.cutting and header.op_tag == ber.MODIFY_REQUEST:
                relay.cut += 1
                self.transport.abortConnection()
                if self.peer is not None:
                    self.peer.transport.abortConnection()  # type: ignore[attr-defined]
                return
            assert self.peer is not None
            self.peer.transport.write(pdu)


class _Factory(portforward.ProxyFactory):
    protocol = _Server

    def __init__(self, relay: CutRelay, host: str, port: int) -> None:
        super().__init__(host, port)
        self.relay = relay


class CutRelay:
    def __init__(self, host: str, port: int) -> None:
        self.cutting = False
        self.cut = 0
        """Modify requests cut so far."""
        self._listening: Any = reactor.listenTCP(  # type: ignore[attr-defined]
            0, _Factory(self, host, port), interface="127.0.0.1"
        )
        self.url = f"ldap://127.0.0.1:{self._listening.getHost().port}"

    async def stop(self) -> None:
        await self._listening.stopListening()
