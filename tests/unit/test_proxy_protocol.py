"""The LDAP proxy protocol, bytes in and bytes out on StringTransports (no servers).

The client side and the upstream side are both StringTransports; the gateway is a small
in-memory stand-in (its authenticator does what the real pipeline does for an exempt
account: one password bind upstream through the proxy's ``check_password``).  What is
checked here is the proxy's own bookkeeping: message ids, holding requests while a bind
runs, StartTLS, TLS requirement, SASL identity confirmation, PDU and queue limits.
The same attacks run against real slapd in tests/integration/test_proxy_attacks.py.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from otpgate import ber
from otpgate.auth.pipeline import Authenticator, AuthResult
from otpgate.config import auth_settings, parse_config
from otpgate.directory.connection import LdapClientProtocol, LdapConnection, TlsSettings
from otpgate.directory.ldapdata import LdapUrl
from otpgate.errors import DirectoryUnavailable
from otpgate.ldapproxy.factory import ProxyFactory
from otpgate.ldapproxy.upstream import STARTTLS_ID, UpstreamProtocol
from otpgate.vault import Keyring
from tests.unit.memdir import MemoryDirectory, MemoryStore

KEYRING = Keyring({"k1": b"k" * 32}, "k1")

SVC = "cn=app,ou=services,dc=example,dc=org"
ALICE = "uid=alice,ou=people,dc=example,dc=org"
TLS_OPTIONS = object()


# -- a gateway stand-in -------------------------------------------------------------------


class FakeAudit:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def record(self, **event: Any) -> None:
        self.events.append(event)


class RecordingAuthenticator(Authenticator):
    """The real pipeline (over an in-memory directory), remembering whom it was asked about."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.names: list[str] = []

    async def login(self, request: Any, check_password: Any = None, trace: Any = None) -> AuthResult:
        self.names.append(request.name)
        return await super().login(request, check_password, trace)


def _entry(directory: MemoryDirectory, dn: str, uid: str) -> None:
    directory.entries[dn.lower()] = (dn, {
        "objectclass": [b"inetOrgPerson"],
        "uid": [uid.encode()],
        "entryuuid": [f"00000000-0000-4000-8000-{len(directory.entries):012d}".encode()],
    })


class FakeGateway:
    def __init__(self, policy: dict[str, Any] | None = None, **proxy: Any) -> None:
        config = parse_config(
            {
                "directory": {
                    "profile": "openldap",
                    "urls": ["ldap://127.0.0.1:1"],
                    "base_dn": "dc=example,dc=org",
                    "bind_dn": "cn=otpgate,dc=example,dc=org",
                    "bind_password": "pw",
                },
                "vault": {"keyring": "k.json"},
                "policy": {"exempt_dns": [SVC], **(policy or {})},
            },
            Path("/"),
        )
        self.config = replace(config, ldap_proxy=replace(config.ldap_proxy, **proxy))
        self.reactor = Clock()
        self.tls = TlsSettings()
        self.audit = FakeAudit()
        self.directory = MemoryDirectory()
        _entry(self.directory, SVC, "app")
        _entry(self.directory, ALICE, "alice")
        self.store = MemoryStore(self.config, KEYRING, self.directory, self.reactor)
        self.authenticator = RecordingAuthenticator(
            auth_settings(self.config), self.store, self.reactor, self.audit
        )


class ClientTransport(StringTransport):
    def __init__(self) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "192.0.2.7", 40000))
        self.tls: object | None = None

    def startTLS(self, options: object) -> None:
        self.tls = options


class Harness:
    """One client connection through the proxy, with the upstream side in our hands."""

    def __init__(
        self, gateway: FakeGateway | None = None, upstream_ready: bool = True, tls: bool = True
    ) -> None:
        self.gateway = gateway or FakeGateway()
        self.factory = ProxyFactory(self.gateway)  # type: ignore[arg-type]
        self.factory.tls_options = TLS_OPTIONS if tls else None
        self.upstream = UpstreamProtocol()
        self.upstream_transport = StringTransport()
        self.upstream.makeConnection(self.upstream_transport)
        self._upstream_d: defer.Deferred[UpstreamProtocol] = defer.Deferred()
        if upstream_ready:
            self._upstream_d.callback(self.upstream)
        self.factory.connect_upstream = lambda: self._upstream_d  # type: ignore[assignment,method-assign,return-value]
        self.proto = self.factory.buildProtocol(IPv4Address("TCP", "192.0.2.7", 40000))
        assert self.proto is not None
        self.client = ClientTransport()
        self.proto.makeConnection(self.client)

    def connect_upstream(self) -> None:
        self._upstream_d.callback(self.upstream)

    def send(self, *pdus: bytes) -> None:
        """Everything in one read, as a client that pipelines does."""
        self.proto.dataReceived(b"".join(pdus))

    def answer(self, *pdus: bytes) -> None:
        self.upstream.dataReceived(b"".join(pdus))

    def upstream_got(self) -> list[tuple[ber.Header, bytes]]:
        out = _frames(self.upstream_transport.value())
        self.upstream_transport.clear()
        return out

    def client_got(self) -> list[tuple[ber.Header, bytes]]:
        out = _frames(self.client.value())
        self.client.clear()
        return out

    @property
    def closed(self) -> bool:
        return bool(self.client.disconnecting)


def _frames(data: bytes) -> list[tuple[ber.Header, bytes]]:
    buf = ber.PduBuffer()
    buf.feed(data)
    out = []
    while (item := buf.next(1 << 30)) is not None:
        pdu, header = item
        out.append((header, pdu))
    return out


def _codes(frames: list[tuple[ber.Header, bytes]]) -> list[tuple[int, int, int]]:
    """(message id, op tag, result code) of each response that has a result."""
    return [
        (h.message_id, h.op_tag, ber.result_code(p, h))
        for h, p in frames
        if h.op_tag in ber.FINAL_RESPONSES
    ]


# -- PDUs -------------------------------------------------------------------------------


def bind(mid: int, name: str, password: str) -> bytes:
    return ber.bind_request(mid, name.encode(), password.encode())


def sasl_bind(mid: int, name: str, mechanism: bytes = b"PLAIN", creds: bytes = b"") -> bytes:
    body = ber.tlv(ber.OCTET_STRING, mechanism) + ber.tlv(ber.OCTET_STRING, creds)
    op = ber.tlv(
        ber.BIND_REQUEST,
        ber.tlv(ber.INTEGER, b"\x03") + ber.tlv(ber.OCTET_STRING, name.encode()) + ber.tlv(0xA3, body),
    )
    return ber.message(mid, op)


def search(mid: int) -> bytes:
    return ber.search_request(mid, b"dc=example,dc=org", 2, ber.filter_present(b"objectClass"), ())


def abandon(mid: int, target: int) -> bytes:
    return ber.message(mid, ber.tlv(ber.ABANDON_REQUEST, target.to_bytes(2, "big")))


def bind_response(mid: int, code: int) -> bytes:
    return ber.message(mid, ber.ldap_result(ber.BIND_RESPONSE, code))


def search_done(mid: int) -> bytes:
    return ber.message(mid, ber.ldap_result(ber.SEARCH_RESULT_DONE, 0))


def search_entry(mid: int, dn: bytes = b"uid=x,dc=example,dc=org") -> bytes:
    return ber.message(
        mid, ber.tlv(ber.SEARCH_RESULT_ENTRY, ber.tlv(ber.OCTET_STRING, dn) + ber.tlv(0x30, b""))
    )


def who_am_i_answer(mid: int, authz: bytes, code: int = 0) -> bytes:
    return ber.message(
        mid, ber.ldap_result(ber.EXTENDED_RESPONSE, code, extra=ber.tlv(0x8B, authz))
    )


# -- binds and message ids ----------------------------------------------------------------


def test_requests_pipelined_behind_a_bind_wait_for_its_answer():
    h = Harness()
    h.send(bind(1, SVC, "pw"), search(2), bind(3, SVC, "pw"))
    sent = h.upstream_got()
    assert [(hd.message_id, hd.op_tag) for hd, _ in sent] == [(1, ber.BIND_REQUEST)]
    h.answer(bind_response(1, 0))
    assert _codes(h.client_got()) == [(1, ber.BIND_RESPONSE, 0)]
    # only now the search goes, and the second bind waits for nothing but the search's id
    sent = h.upstream_got()
    assert [(hd.message_id, hd.op_tag) for hd, _ in sent] == [
        (2, ber.SEARCH_REQUEST),
        (3, ber.BIND_REQUEST),
    ]
    h.answer(search_done(2), bind_response(3, 49))
    assert _codes(h.client_got()) == [(2, ber.SEARCH_RESULT_DONE, 0), (3, ber.BIND_RESPONSE, 49)]


def test_a_forwarded_bind_answer_cannot_complete_the_proxys_own_bind():
    """Attack: an anonymous bind (forwarded) and an exempt account's bind with a wrong
    password under the same id, pipelined, so that the anonymous bind's success answers the
    proxy's own password check: "success" without the password."""
    h = Harness()
    h.send(bind(5, "", ""), bind(5, SVC, "wrong-password"))
    sent = h.upstream_got()
    assert len(sent) == 1 and ber.parse_bind(sent[0][1], sent[0][0]).name == b""
    h.answer(bind_response(5, 0))  # the anonymous bind succeeds
    assert _codes(h.client_got()) == [(5, ber.BIND_RESPONSE, 0)]
    sent = h.upstream_got()  # now, and only now, the password check
    assert ber.parse_bind(sent[0][1], sent[0][0]).name == SVC.encode()
    h.answer(bind_response(5, 49))
    assert _codes(h.client_got()) == [(5, ber.BIND_RESPONSE, 49)]


def test_a_bind_reusing_an_outstanding_id_is_a_protocol_error():
    h = Harness()
    h.send(search(5), bind(5, SVC, "pw"))
    sent = h.upstream_got()
    assert [hd.op_tag for hd, _ in sent] == [ber.SEARCH_REQUEST]  # the bind never went
    (notice_header, notice), = h.client_got()
    result = ber.decode_extended_response(notice, notice_header)
    assert notice_header.message_id == 0 and result.name == ber.NOTICE_OF_DISCONNECTION_OID
    assert result.code == 2 and h.closed
    assert h.factory.counters["protocol_error"] == 1
    assert h.gateway.authenticator.names == []
    h.answer(search_entry(5), bind_response(5, 0))  # late answers reach nobody
    assert h.client_got() == []


def test_an_answered_id_may_be_used_again():
    h = Harness()
    h.send(search(5))
    h.answer(search_entry(5), search_done(5))
    h.send(bind(5, SVC, "pw"))
    sent = h.upstream_got()
    assert [hd.op_tag for hd, _ in sent] == [ber.SEARCH_REQUEST, ber.BIND_REQUEST]
    h.answer(bind_response(5, 0))
    assert _codes(h.client_got())[-1] == (5, ber.BIND_RESPONSE, 0)


def test_an_abandoned_id_stays_taken():
    h = Harness()
    h.send(search(5), abandon(6, 5), bind(5, SVC, "pw"))
    sent = h.upstream_got()
    assert [hd.op_tag for hd, _ in sent] == [ber.SEARCH_REQUEST, ber.ABANDON_REQUEST]
    assert h.closed and h.factory.counters["protocol_error"] == 1


def test_message_id_zero_and_non_requests_are_protocol_errors():
    h = Harness()
    h.send(search(0))
    assert h.closed and h.upstream_got() == []
    h = Harness()
    h.send(search_done(3))  # a response sent as a request
    assert h.closed and h.upstream_got() == []


def test_a_wrong_kind_of_answer_to_the_proxys_own_bind_fails_closed():
    h = Harness()
    h.send(bind(5, SVC, "pw"))
    h.upstream_got()
    h.answer(search_entry(5))  # not a BindResponse
    assert h.client.disconnected
    assert _codes(h.client_got()) == []
    assert h.factory.counters["upstream_protocol_error"] == 1


def test_thousands_of_abandons_behind_a_bind_close_the_connection():
    h = Harness(FakeGateway(max_queued_requests=100))
    h.send(bind(1, SVC, "pw"), *(abandon(i, 1) for i in range(2, 5000)))
    assert h.client.disconnected
    assert h.factory.counters["queue_full"] == 1
    assert [hd.op_tag for hd, _ in h.upstream_got()] == [ber.BIND_REQUEST]


def test_requests_held_while_upstream_connects_are_bounded_by_count():
    h = Harness(FakeGateway(max_queued_requests=3), upstream_ready=False)
    h.send(search(1), search(2), search(3))
    assert not h.closed
    h.send(search(4))
    assert h.client.disconnected and h.factory.counters["queue_full"] == 1


def test_unbind_and_upstream_unreachable():
    h = Harness(upstream_ready=False)
    h.send(bind(1, SVC, "pw"), search(2))
    h._upstream_d.errback(DirectoryUnavailable("down"))
    assert _codes(h.client_got()) == [(1, ber.BIND_RESPONSE, 52), (2, ber.SEARCH_RESULT_DONE, 52)]


# -- StartTLS and TLS ------------------------------------------------------------------------


def test_starttls_drops_bytes_pipelined_behind_it():
    h = Harness()
    h.send(ber.start_tls_request(1), bind(2, SVC, "pw"), search(3))
    frames = h.client_got()
    assert len(frames) == 1
    result = ber.decode_extended_response(frames[0][1], frames[0][0])
    assert (result.code, result.name) == (0, ber.START_TLS_OID)
    assert h.client.tls is TLS_OPTIONS
    assert h.upstream_got() == [] and h.gateway.authenticator.names == []
    assert h.factory.counters["starttls_pipelined_dropped"] == 1


def test_starttls_refused_while_requests_are_outstanding_or_twice():
    h = Harness()
    h.send(search(1))
    h.send(ber.start_tls_request(2))
    (header, pdu), = h.client_got()
    assert ber.decode_extended_response(pdu, header).code == 1  # operationsError
    assert h.client.tls is None
    h.answer(search_done(1))
    h.client_got()
    h.send(ber.start_tls_request(3))
    h.send(ber.start_tls_request(4))
    codes = [ber.decode_extended_response(p, hd).code for hd, p in h.client_got()]
    assert codes == [0, 1]


def test_a_malformed_starttls_request_closes_only_that_connection():
    broken = ber.message(1, ber.tlv(ber.EXTENDED_REQUEST, b"\x80\x7f" + ber.START_TLS_OID))
    h = Harness()
    h.send(broken)  # must not raise out of dataReceived
    assert h.client.disconnected and h.factory.counters["malformed"] == 1
    assert h.upstream_got() == [] and h.client_got() == []


def test_pdu_limit_before_bind():
    h = Harness(FakeGateway(max_pdu_before_bind=1024))
    h.send(bind(1, SVC, "x" * 2000))
    assert h.client.disconnected and h.factory.counters["malformed"] == 1
    assert h.upstream_got() == []


def test_binds_need_tls_when_required():
    h = Harness(FakeGateway(require_tls_for_binds=True))
    h.send(bind(1, SVC, "pw"))
    assert _codes(h.client_got()) == [(1, ber.BIND_RESPONSE, 13)]
    h.send(sasl_bind(2, SVC))
    assert _codes(h.client_got()) == [(2, ber.BIND_RESPONSE, 13)]
    assert h.upstream_got() == [] and h.factory.counters["bind_without_tls"] == 2
    assert h.gateway.audit.events[0]["outcome"] == "reject"
    h.send(bind(3, "", ""))  # anonymous: no credentials to protect
    assert len(h.upstream_got()) == 1
    h.answer(bind_response(3, 0))
    h.client_got()
    h.send(ber.start_tls_request(4))
    h.client_got()
    h.send(bind(5, SVC, "pw"))
    assert [hd.op_tag for hd, _ in h.upstream_got()] == [ber.BIND_REQUEST]
    h.answer(bind_response(5, 0))
    assert _codes(h.client_got()) == [(5, ber.BIND_RESPONSE, 0)]


# -- SASL --------------------------------------------------------------------------------------


def test_sasl_is_refused_by_default_and_audited():
    h = Harness()
    h.send(sasl_bind(1, SVC))
    assert _codes(h.client_got()) == [(1, ber.BIND_RESPONSE, 49)]
    assert h.upstream_got() == []
    (event,) = h.gateway.audit.events
    assert event["outcome"] == "reject" and "SASL PLAIN" in event["reason"]


def _sasl_harness() -> Harness:
    return Harness(FakeGateway(policy={"allow_sasl_for_exempt": True}))


def test_sasl_named_as_the_exempt_account_but_bound_as_someone_else_is_refused():
    h = _sasl_harness()
    h.send(sasl_bind(1, SVC, creds=b"\0alice\0alice-password"), search(2))
    (header, pdu), = h.upstream_got()
    assert header.op_tag == ber.BIND_REQUEST  # forwarded as is
    h.answer(bind_response(1, 0))
    assert h.client_got() == []  # the success is held back ...
    (header, pdu), = h.upstream_got()  # ... until Who Am I? confirms the identity
    assert ber.extended_request_name(pdu, header) == ber.WHO_AM_I_OID
    assert header.message_id == 1
    h.answer(who_am_i_answer(1, b"dn:" + ALICE.encode()))
    assert _codes(h.client_got()) == [(1, ber.BIND_RESPONSE, 49)]
    assert h.closed and h.upstream_got() == []  # the search never ran as alice
    (event,) = h.gateway.audit.events
    assert event["outcome"] == "reject" and "not as the named account" in event["reason"]


def test_sasl_bound_as_the_named_exempt_account_is_accepted():
    h = _sasl_harness()
    h.send(sasl_bind(1, SVC.upper()))
    h.upstream_got()
    h.answer(bind_response(1, 0))
    h.upstream_got()
    h.answer(who_am_i_answer(1, b"dn:cn=app, ou=Services,dc=example,dc=org"))
    assert _codes(h.client_got()) == [(1, ber.BIND_RESPONSE, 0)]
    assert not h.closed
    (event,) = h.gateway.audit.events
    assert event["outcome"] == "accept" and "Who Am I?" in event["reason"]


def test_sasl_challenges_pass_through_and_ad_names_are_resolved():
    h = _sasl_harness()
    h.send(sasl_bind(1, SVC, b"DIGEST-MD5"))
    h.upstream_got()
    h.answer(bind_response(1, 14))  # saslBindInProgress: the client continues
    assert _codes(h.client_got()) == [(1, ber.BIND_RESPONSE, 14)]
    h.send(sasl_bind(2, SVC, b"DIGEST-MD5", b"response"))
    h.upstream_got()
    h.answer(bind_response(2, 0))
    h.upstream_got()
    h.answer(who_am_i_answer(2, b"u:EXAMPLE\\app"))
    assert _codes(h.client_got()) == [(2, ber.BIND_RESPONSE, 0)]
    h = _sasl_harness()
    h.send(sasl_bind(1, SVC))
    h.answer(bind_response(1, 0))
    h.answer(who_am_i_answer(1, b"u:EXAMPLE\\alice"))
    assert _codes(h.client_got()) == [(1, ber.BIND_RESPONSE, 49)] and h.closed


@pytest.mark.parametrize(
    "answer",
    [
        who_am_i_answer(1, b"", code=2),  # Samba: Who Am I? not supported
        who_am_i_answer(1, b""),  # anonymous
        who_am_i_answer(1, b"u:NOBODY\\x"),  # cannot be resolved
    ],
    ids=["no-who-am-i", "anonymous", "unresolvable"],
)
def test_sasl_without_a_confirmed_identity_fails_closed(answer):
    h = _sasl_harness()
    h.send(sasl_bind(1, SVC))
    h.answer(bind_response(1, 0))
    h.upstream_got()
    h.answer(answer)
    assert _codes(h.client_got()) == [(1, ber.BIND_RESPONSE, 49)] and h.closed


def test_sasl_when_the_upstream_connection_is_lost_mid_bind():
    h = _sasl_harness()
    h.send(sasl_bind(1, SVC))
    h.upstream.connectionLost(None)
    assert _codes(h.client_got()) == [(1, ber.BIND_RESPONSE, 52)] and h.closed
    (event,) = h.gateway.audit.events
    assert event["outcome"] == "reject" and "unavailable" in event["reason"]


def test_sasl_for_a_name_that_is_not_exempt_is_refused():
    h = _sasl_harness()
    h.send(sasl_bind(1, ALICE))
    assert _codes(h.client_got()) == [(1, ber.BIND_RESPONSE, 49)] and h.upstream_got() == []


# -- the upstream connection's StartTLS ----------------------------------------------------------


def _upstream_starttls() -> tuple[UpstreamProtocol, StringTransport, defer.Deferred[None], list]:
    proto = UpstreamProtocol()
    transport = StringTransport()
    proto.makeConnection(transport)
    seen: list[bytes] = []
    proto.on_pdu = lambda pdu, header: seen.append(pdu)
    transport.startTLS = lambda options: seen.append(b"startTLS")  # type: ignore[attr-defined]
    d = defer.ensureDeferred(proto.start_tls(TLS_OPTIONS))
    return proto, transport, d, seen


def test_upstream_starttls_answer_with_pipelined_bytes_is_aborted():
    proto, transport, d, seen = _upstream_starttls()
    ok = ber.extended_response(STARTTLS_ID, 0, ber.START_TLS_OID)
    proto.dataReceived(ok + bind_response(2, 0))  # one segment: the second PDU is forged
    failure = []
    d.addErrback(failure.append)
    assert failure and failure[0].check(DirectoryUnavailable)
    assert transport.disconnected and seen == []  # no TLS, and the forged PDU went nowhere


def test_upstream_waits_for_the_tls_handshake():
    proto, transport, d, seen = _upstream_starttls()
    proto.dataReceived(ber.extended_response(STARTTLS_ID, 0, ber.START_TLS_OID))
    assert seen == [b"startTLS"] and not d.called
    proto.handshakeCompleted()
    assert d.called



# -- the gateway's own connections' StartTLS ----------------------------------------------------


def _gateway_starttls() -> tuple[LdapClientProtocol, StringTransport, defer.Deferred[None], list]:
    client = LdapClientProtocol()
    transport = StringTransport()
    client.makeConnection(transport)
    started: list[object] = []
    transport.startTLS = started.append  # type: ignore[attr-defined]
    conn = LdapConnection(client, LdapUrl.parse("ldap://127.0.0.1"), Clock(), 5.0)
    return client, transport, defer.ensureDeferred(conn.start_tls(TLS_OPTIONS)), started


def test_gateway_starttls_answer_with_pipelined_bytes_is_aborted():
    client, transport, d, started = _gateway_starttls()
    later = client.request(lambda mid: bind(mid, SVC, "pw"))  # what the pool sends next (id 2)
    ok = ber.extended_response(1, 0, ber.START_TLS_OID)
    client.dataReceived(ok + bind_response(2, 0) + search_entry(3))
    failures: list[Any] = []
    d.addErrback(failures.append)
    later.addErrback(failures.append)
    assert [f.check(DirectoryUnavailable) for f in failures] == [DirectoryUnavailable] * 2
    assert transport.disconnected and started == []


def test_gateway_starttls_waits_for_the_handshake():
    client, transport, d, started = _gateway_starttls()
    client.dataReceived(ber.extended_response(1, 0, ber.START_TLS_OID))
    assert started == [TLS_OPTIONS] and not d.called
    client.handshakeCompleted()
    assert d.called and not transport.disconnected


def test_a_refused_rebind_leaves_the_upstream_connection_anonymous():
    """Attack: bound as A, a rebind the proxy refuses (here a bind without a password,
    never forwarded), hoping the upstream connection stays bound as A for the next request.
    After a failed bind the connection is anonymous (RFC 4511 4.2.1): the proxy binds
    anonymously upstream before anything else goes."""
    h = Harness()
    h.send(bind(1, SVC, "pw"))
    h.upstream_got()
    h.answer(bind_response(1, 0))
    assert _codes(h.client_got()) == [(1, ber.BIND_RESPONSE, 0)]
    h.send(bind(2, ALICE, ""), search(3))  # refused at once (unauthenticated bind)
    assert _codes(h.client_got()) == [(2, ber.BIND_RESPONSE, 49)]
    sent = h.upstream_got()
    assert len(sent) == 1 and sent[0][0].op_tag == ber.BIND_REQUEST  # the reset, not the search
    assert ber.parse_bind(sent[0][1], sent[0][0]).name == b""
    h.answer(bind_response(2, 0))
    sent = h.upstream_got()
    assert [(hd.message_id, hd.op_tag) for hd, _ in sent] == [(3, ber.SEARCH_REQUEST)]


def test_a_refused_first_bind_sends_no_reset():
    h = Harness()
    h.send(bind(1, ALICE, ""))
    assert _codes(h.client_got()) == [(1, ber.BIND_RESPONSE, 49)]
    assert h.upstream_got() == []


def test_sasl_for_an_exempt_account_that_is_an_administrator_is_refused():
    """Admins always need a code, which a SASL bind cannot carry: an exempt account that is
    also in an admin group is refused before anything is forwarded."""
    admins = "cn=admins,dc=example,dc=org"
    gateway = FakeGateway(policy={"allow_sasl_for_exempt": True, "admin_groups": [admins]})
    gateway.directory.add_group(admins, [SVC])
    h = Harness(gateway)
    h.send(sasl_bind(1, SVC))
    assert _codes(h.client_got()) == [(1, ber.BIND_RESPONSE, 49)]
    assert h.upstream_got() == []
    (event,) = h.gateway.audit.events
    assert event["outcome"] == "reject" and "administrator needs a code" in event["reason"]
    plain = FakeGateway(policy={"allow_sasl_for_exempt": True, "admin_groups": [admins]})
    plain.directory.add_group(admins, [])
    h = Harness(plain)
    h.send(sasl_bind(1, SVC))
    assert [hd.op_tag for hd, _ in h.upstream_got()] == [ber.BIND_REQUEST]  # forwarded
