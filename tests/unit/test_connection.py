"""The gateway's LDAP client connection: per-operation timeouts from one timer, and the
immediate-write path (otpgate.netio) keeping the byte order over a real loopback socket."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from otpgate import ber
from otpgate.directory.connection import LdapClientProtocol, LdapConnection
from otpgate.directory.ldapdata import LdapUrl
from otpgate.errors import DirectoryUnavailable
from otpgate.netio import send


def connection(timeout: float = 5.0) -> tuple[LdapConnection, StringTransport, Clock]:
    client = LdapClientProtocol()
    transport = StringTransport()
    client.makeConnection(transport)
    clock = Clock()
    return LdapConnection(client, LdapUrl.parse("ldap://127.0.0.1:389"), clock, timeout), \
        transport, clock


def answer(conn: LdapConnection, message_id: int, code: int = 0) -> None:
    conn.client.dataReceived(
        ber.message(message_id, ber.ldap_result(ber.BIND_RESPONSE, code, b""))
    )


def test_an_unanswered_operation_times_out_and_closes_the_connection() -> None:
    conn, transport, clock = connection(timeout=5)
    d = defer.ensureDeferred(conn.simple_bind("cn=a", b"pw"))
    clock.advance(4.9)
    assert not d.called
    clock.advance(0.2)
    failure = []
    d.addErrback(failure.append)
    assert failure and failure[0].check(DirectoryUnavailable)
    assert "no answer in 5" in str(failure[0].value)
    assert transport.disconnecting


def test_each_operation_gets_its_own_deadline_from_one_timer() -> None:
    conn, _transport, clock = connection(timeout=5)
    first = defer.ensureDeferred(conn.simple_bind("cn=a", b"pw"))
    clock.advance(3)
    second = defer.ensureDeferred(conn.simple_bind("cn=b", b"pw"))
    answer(conn, 1)
    assert first.result == (0, "")
    assert len(clock.getDelayedCalls()) == 1  # one timer for the connection
    clock.advance(2.5)  # t=5.5: past the first's deadline (5), not the second's (8)
    assert not second.called
    clock.advance(2.4)
    assert not second.called
    clock.advance(0.2)
    failure = []
    second.addErrback(failure.append)
    assert failure and "no answer" in str(failure[0].value)


def test_a_timeout_aborts_the_connection_and_fails_every_operation_on_it() -> None:
    """A stalled server: over TLS a polite close waits for its close_notify, so nothing may
    wait for connectionLost: the first overdue operation aborts the connection and fails the
    others with it, and the pool sees it gone."""
    conn, transport, clock = connection(timeout=5)
    ops = [defer.ensureDeferred(conn.simple_bind(f"cn={n}", b"pw")) for n in "abc"]
    failures: list = []
    for d in ops:
        d.addErrback(failures.append)
    clock.advance(5.1)
    assert len(failures) == 3 and all(f.check(DirectoryUnavailable) for f in failures)
    assert "no answer in 5" in str(failures[0].value)
    assert transport.disconnecting and not conn.connected
    assert not clock.getDelayedCalls()
    late = []
    defer.ensureDeferred(conn.simple_bind("cn=d", b"pw")).addErrback(late.append)
    assert late and late[0].check(DirectoryUnavailable)  # refused at once, never queued


def test_close_takes_the_connection_out_of_use_at_once() -> None:
    conn, transport, _clock = connection()
    conn.close()
    assert transport.disconnecting and not conn.connected


def test_answered_operations_leave_no_timer_behind() -> None:
    conn, _transport, clock = connection(timeout=5)
    d = defer.ensureDeferred(conn.simple_bind("cn=a", b"pw"))
    answer(conn, 1)
    assert d.result == (0, "")
    clock.advance(5)
    assert clock.getDelayedCalls() == []


class _Collect(protocol.Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if len(self.data) >= self.factory.expected:  # type: ignore[attr-defined]
            self.done.callback(self.data)


@pytest_twisted.ensureDeferred
async def test_send_keeps_the_byte_order_behind_buffered_writes() -> None:
    """Bytes already in Twisted's buffer go first; a large write the kernel takes only in
    part is finished by Twisted."""
    chunks = [b"a" * 10, b"b" * 3_000_000, b"c" * 10, b"d" * 10]
    server = protocol.ServerFactory.forProtocol(_Collect)
    server.expected = sum(map(len, chunks))  # type: ignore[attr-defined]
    received: list[_Collect] = []
    build = server.buildProtocol
    server.buildProtocol = lambda addr: received.append(build(addr)) or received[-1]  # type: ignore[method-assign,func-returns-value]
    port = reactor.listenTCP(0, server, interface="127.0.0.1")
    try:
        client = await protocol.ClientCreator(reactor, protocol.Protocol).connectTCP(
            "127.0.0.1", port.getHost().port
        )
        send(client.transport, chunks[0])
        send(client.transport, chunks[1])  # more than the socket buffer: partly buffered
        client.transport.write(chunks[2])  # Twisted's own buffer is not empty now
        send(client.transport, chunks[3])
        while not received:
            await deferLater(0.01)
        data = await received[0].done
        assert data == b"".join(chunks)
        client.transport.loseConnection()
    finally:
        await port.stopListening()


def deferLater(seconds: float) -> defer.Deferred[None]:
    from twisted.internet import task

    return task.deferLater(reactor, seconds, lambda: None)


@pytest.mark.parametrize("payload", [b"x", b"y" * 1000])
def test_send_falls_back_to_write_on_other_transports(payload: bytes) -> None:
    transport = StringTransport()
    send(transport, payload)
    assert transport.value() == payload
