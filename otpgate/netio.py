"""Writing one small PDU to a TCP transport now instead of on the next reactor turn.

Twisted's ``FileDescriptor.write`` only buffers: it registers the socket for writability
(``epoll_ctl``), sends on the next turn of the reactor (``doWrite``) and unregisters it
(``epoll_ctl`` again).  LDAP is request/response with one small PDU per write, so the
gateway paid two ``epoll_ctl`` calls and a reactor turn for each of the ~3 writes of an OTP
login (strace of the gateway under bench/ldap_proxy.py: 5.4 epoll_ctl per login).
``send`` tries the socket first when nothing is waiting in Twisted's buffers, which keeps
the byte order, and hands whatever the kernel did not take to ``transport.write``.

Only a clear-text ``tcp.Connection`` qualifies (a started TLS layer, a TLS wrapper, a closing
or half-closed transport take Twisted's own path unchanged).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp


def send(transport: Any, data: bytes) -> None:
    """Write ``data`` to ``transport``: at once where the socket takes it, else buffered."""
    if (
        isinstance(transport, tcp.Connection)
        and not transport.TLS
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnected
        and not transport.dataBuffer
        and not transport._tempDataBuffer
    ):
        sent = transport.writeSomeData(data)
        if isinstance(sent, int):  # else the connection is lost: Twisted's write drops it
            if sent == len(data):
                return
            data = data[sent:]
    transport.write(data)
