"""The PROXY protocol in front of the LDAP proxy (otpgate/ldapproxy/proxyheader.py): the
strict parser, and the wrapper on StringTransports around the real ProxyFactory (the
gateway stand-in of test_proxy_protocol.py).  HAProxy itself runs in
tests/integration/test_load_balancer.py."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from twisted.internet import defer, ssl
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from otpgate import ber
from otpgate.errors import ConfigError
from otpgate.ldapproxy.factory import ProxyFactory
from otpgate.ldapproxy.listeners import ReusePortListener, _TLSFactory
from otpgate.ldapproxy.proxyheader import (
    HEADER_TIMEOUT,
    MAX_HEADER,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderError,
    ProxyHeaderFactory,
    parse_header,
)
from otpgate.ldapproxy.upstream import UpstreamProtocol
from tests.unit.test_config import MINIMAL, parse
from tests.unit.test_proxy_protocol import SVC, FakeGateway, bind

BALANCER = IPv4Address("TCP", "10.1.2.3", 51000)
STRANGER = IPv4Address("TCP", "192.0.2.9", 40000)


def v2(source: str, sport: int = 40001, dest: str = "127.0.0.1", dport: int = 389,
       command: int = 1, tlv: bytes = b"") -> bytes:
    a, b = ipaddress.ip_address(source), ipaddress.ip_address(dest)
    family = 0x11 if a.version == 4 else 0x21
    body = a.packed + b.packed + struct.pack("!HH", sport, dport) + tlv
    return V2_SIGNATURE + bytes([0x20 | command, family]) + struct.pack("!H", len(body)) + body


# -- the parser -------------------------------------------------------------------------


def test_v1_tcp4_tcp6_unknown():
    line = b"PROXY TCP4 127.0.0.5 127.0.0.1 40001 389\r\n"
    assert parse_header(line + b"\x30rest") == ProxyHeader(len(line), ("127.0.0.5", 40001))
    line6 = b"PROXY TCP6 2001:db8::1 ::1 40001 389\r\n"
    assert parse_header(line6) == ProxyHeader(len(line6), ("2001:db8::1", 40001))
    assert parse_header(b"PROXY UNKNOWN\r\n") == ProxyHeader(15, None)
    assert parse_header(b"PROXY UNKNOWN ffff::1 ::1 1 2\r\n") == ProxyHeader(31, None)


def test_v1_arrives_byte_by_byte():
    line = b"PROXY TCP4 127.0.0.5 127.0.0.1 40001 389\r\n"
    for n in range(len(line)):
        assert parse_header(line[:n]) is None
    assert parse_header(line) == ProxyHeader(len(line), ("127.0.0.5", 40001))


@pytest.mark.parametrize("line", [
    b"PROXY TCP4 evil 127.0.0.1 40001 389\r\n",          # not an address
    b"PROXY TCP4 ::1 127.0.0.1 40001 389\r\n",           # family mismatch
    b"PROXY TCP6 127.0.0.5 ::1 40001 389\r\n",
    b"PROXY TCP4 127.0.0.5 127.0.0.1 65536 389\r\n",     # port out of range
    b"PROXY TCP4 127.0.0.5 127.0.0.1 040001 389\r\n",    # leading zero
    b"PROXY TCP4 127.0.0.5 127.0.0.1 -1 389\r\n",
    b"PROXY TCP4 127.0.0.5 127.0.0.1 40001 389 x\r\n",   # extra field
    b"PROXY TCP4  127.0.0.5 127.0.0.1 40001 389\r\n",    # double space
    b"PROXY UDP4 127.0.0.5 127.0.0.1 40001 389\r\n",
    b"PROXY TCP4 127.0.0.\xb5 127.0.0.1 40001 389\r\n",  # not ASCII
    b"PROXY\r\n",
])
def test_v1_strict(line):
    with pytest.raises(ProxyHeaderError):
        parse_header(line)


def test_v1_size_cap():
    assert parse_header(b"PROXY TCP4 " + b"1" * 95) is None  # 106 bytes: may still end
    with pytest.raises(ProxyHeaderError, match="longer than 107"):
        parse_header(b"PROXY TCP4 " + b"1" * 96)
    with pytest.raises(ProxyHeaderError, match="longer than 107"):
        parse_header(b"PROXY TCP4 " + b"1" * 200 + b"\r\n")


def test_v2_tcp4_tcp6_local_unspec_tlvs():
    header = v2("127.0.0.5")
    assert parse_header(header + b"\x30") == ProxyHeader(28, ("127.0.0.5", 40001))
    assert parse_header(v2("2001:db8::7", 5, dest="::1")) == ProxyHeader(52, ("2001:db8::7", 5))
    mapped = v2("::ffff:127.0.0.9", 7, dest="::1")
    assert parse_header(mapped) == ProxyHeader(52, ("127.0.0.9", 7))
    tlv = b"\x05\x00\x03abc"  # PP2_TYPE_UNIQUE_ID
    assert parse_header(v2("127.0.0.5", tlv=tlv)) == ProxyHeader(34, ("127.0.0.5", 40001))
    local = V2_SIGNATURE + b"\x20\x00\x00\x00"
    assert parse_header(local) == ProxyHeader(16, None)
    local_with_addresses = v2("127.0.0.5", command=0)
    assert parse_header(local_with_addresses) == ProxyHeader(28, None)
    unspec = V2_SIGNATURE + b"\x21\x00\x00\x00"
    assert parse_header(unspec) == ProxyHeader(16, None)
    for n in range(len(header)):
        assert parse_header(header[:n]) is None


@pytest.mark.parametrize("header,message", [
    (V2_SIGNATURE + b"\x11\x11\x00\x0c" + bytes(12), "version/command"),  # version 1
    (V2_SIGNATURE + b"\x22\x11\x00\x0c" + bytes(12), "version/command"),  # command 2
    (V2_SIGNATURE + b"\x21\x12\x00\x0c" + bytes(12), "not TCP"),          # UDP
    (V2_SIGNATURE + b"\x21\x31\x00\xd8" + bytes(216), "not TCP"),         # UNIX
    (V2_SIGNATURE + b"\x21\x11\x00\x08" + bytes(8), "too short"),
    (V2_SIGNATURE + b"\x21\x21\x00\x0c" + bytes(12), "too short"),
    (V2_SIGNATURE + b"\x21\x11\xff\xff", "at most"),  # refused before the bytes come
])
def test_v2_strict(header, message):
    with pytest.raises(ProxyHeaderError, match=message):
        parse_header(header)


def test_v2_size_cap():
    body = bytes(MAX_HEADER - 16)
    ok = V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", len(body)) + body
    assert parse_header(ok) == ProxyHeader(MAX_HEADER, ("0.0.0.0", 0))
    with pytest.raises(ProxyHeaderError, match="at most"):
        parse_header(V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", len(body) + 1))


@pytest.mark.parametrize("data", [b"\x30\x0c", b"PROXZ", b"proxy ", b"\r\n\r\n\x00\r\nQUIX",
                                  b"\x16\x03\x01"])
def test_no_signature(data):
    with pytest.raises(ProxyHeaderError, match="signature"):
        parse_header(data)


def test_a_bad_header_is_an_otpgate_format_error():
    """Under the one hierarchy (a caller failing closed on OtpgateError catches it), and a
    ValueError like every FormatError."""
    from otpgate.errors import FormatError, OtpgateError

    with pytest.raises(FormatError) as caught:
        parse_header(b"PROXY TCP4 300.1.1.1 127.0.0.1 1 2\r\n")
    assert isinstance(caught.value, OtpgateError) and isinstance(caught.value, ValueError)


# -- the wrapper around the real ProxyFactory --------------------------------------------


class Balanced:
    """ProxyFactory behind ProxyHeaderFactory (balancers 10.0.0.0/8), upstream in hand."""

    def __init__(self, **proxy):
        self.gateway = FakeGateway(**proxy)
        self.factory = ProxyFactory(self.gateway)  # type: ignore[arg-type]
        self.factory.connect_upstream = self._upstream  # type: ignore[method-assign]
        self.upstreams: list[StringTransport] = []
        self.upstream_protocols: list[UpstreamProtocol] = []
        self.unreachable = False
        self.outer = ProxyHeaderFactory(
            self.factory, (ipaddress.ip_network("10.0.0.0/8"),), self.gateway.reactor,
            self.factory.count,
        )

    def _upstream(self):
        if self.unreachable:
            return defer.fail(ConnectionRefusedError("directory down"))
        upstream = UpstreamProtocol()
        self.upstream_protocols.append(upstream)
        transport = StringTransport()
        upstream.makeConnection(transport)
        self.upstreams.append(transport)
        return defer.succeed(upstream)

    def connect(self, peer=BALANCER):
        proto = self.outer.buildProtocol(peer)
        transport = StringTransport(peerAddress=peer)
        proto.makeConnection(transport)
        return proto, transport

    @property
    def open(self):
        return self.factory._connections


def test_the_header_source_is_the_client_everywhere():
    b = Balanced()
    proto, transport = b.connect()
    assert not b.open  # nothing built before the header
    proto.dataReceived(v2("127.0.0.5") + bind(1, SVC, "wrong"))  # header and bind in one read
    (inner,) = b.open
    assert inner.peer_host == "127.0.0.5" and proto.getPeer().host == "127.0.0.5"
    assert b.factory._per_client == {"127.0.0.5": 1}
    assert b.upstreams[0].value()  # the bind went upstream (the service account is exempt)
    assert not transport.disconnecting
    proto.connectionLost(None)
    assert not b.open and not b.factory._per_client


def test_header_in_pieces_and_v1():
    b = Balanced()
    proto, _transport = b.connect()
    line = b"PROXY TCP4 127.0.0.6 127.0.0.1 40001 389\r\n"
    for i in range(len(line)):
        proto.dataReceived(line[i:i + 1])
    assert [p.peer_host for p in b.open] == ["127.0.0.6"]


def test_listed_peer_without_header_is_refused():
    b = Balanced()
    proto, transport = b.connect()
    proto.dataReceived(bind(1, SVC, "pw"))
    assert transport.disconnecting and not b.open and not b.upstreams
    assert b.factory.counters["proxy_header_invalid"] == 1
    proto.dataReceived(bind(2, SVC, "pw"))  # nothing more is read
    assert not b.open


def test_listed_peer_bad_header_is_refused():
    b = Balanced()
    proto, transport = b.connect()
    proto.dataReceived(b"PROXY TCP4 evil 127.0.0.1 1 2\r\n")
    assert transport.disconnecting and not b.open
    assert b.factory.counters["proxy_header_invalid"] == 1


def test_listed_peer_header_timeout():
    b = Balanced()
    proto, transport = b.connect()
    proto.dataReceived(v2("127.0.0.5")[:10])
    b.gateway.reactor.advance(HEADER_TIMEOUT - 0.1)
    assert not transport.disconnecting
    b.gateway.reactor.advance(0.2)
    assert transport.disconnecting and not b.open
    assert b.factory.counters["proxy_header_timeout"] == 1
    proto.connectionLost(None)
    assert not b.gateway.reactor.getDelayedCalls()


# HAProxy's `option ldap-check`: an anonymous LDAPv3 bind, message id 1 (its exact bytes)
LDAP_CHECK = bytes.fromhex("300c020101600702010304008000")


@pytest.mark.parametrize("directory_up", [True, False])
def test_haproxy_ldap_check_is_up_only_when_the_directory_answers(directory_up):
    """Behind a LOCAL header (HAProxy's checks), with TLS required for binds (the production
    default with a certificate): the anonymous bind carries no credentials, so it is
    forwarded; success comes only from the directory, 52 when it cannot be reached."""
    b = Balanced(require_tls_for_binds=True)
    b.unreachable = not directory_up
    proto, transport = b.connect()
    proto.dataReceived(V2_SIGNATURE + b"\x20\x00\x00\x00" + LDAP_CHECK)
    if directory_up:
        assert b.upstreams[0].value() == LDAP_CHECK  # the directory is asked, as sent
        b.upstream_protocols[0].dataReceived(ber.message(1, ber.ldap_result(ber.BIND_RESPONSE, 0)))
        expected = 0
    else:
        expected = 52
    buf = ber.PduBuffer()
    buf.feed(transport.value())
    pdu, header = buf.next(1 << 20)
    assert header.message_id == 1 and ber.result_code(pdu, header) == expected


@pytest.mark.parametrize("header", [
    V2_SIGNATURE + b"\x20\x00\x00\x00",          # v2 LOCAL (HAProxy: unix@ / abns@ frontends)
    V2_SIGNATURE + b"\x21\x00\x00\x00",          # v2 PROXY with family UNSPEC
    V2_SIGNATURE + b"\x21\x00\x00\x04junk",
    b"PROXY UNKNOWN\r\n",
    b"PROXY UNKNOWN 1.2.3.4 evil 99999 x\r\n",
])
def test_a_header_without_a_client_grants_nothing(header):
    """Attack: with the balancer's own address for a LOCAL / UNKNOWN header and the balancer
    inside trusted_networks, alice's password alone would be accepted ("no OTP needed:
    trusted network") through HAProxy's unix-socket frontend.  Such a client is
    "local:<balancer>": no IP address, no trusted network."""
    b = Balanced(policy={"trusted_networks": ["10.0.0.0/8"]})
    proto, transport = b.connect()
    proto.dataReceived(header + bind(1, "alice", "alice-password"))  # no OTP appended
    assert [p.peer_host for p in b.open] == [f"local:{BALANCER.host}"]
    assert not any(t.value() for t in b.upstreams)  # nothing bound upstream
    buf = ber.PduBuffer()
    buf.feed(transport.value())
    pdu, head = buf.next(1 << 20)
    assert ber.result_code(pdu, head) == 49
    assert [(e["outcome"], e["client"]) for e in b.gateway.audit.events] == [
        ("reject", f"local:{BALANCER.host}")
    ]


def test_a_real_client_behind_the_balancer_is_not_trusted_by_the_balancers_address():
    b = Balanced(policy={"trusted_networks": ["10.0.0.0/8"]})
    proto, transport = b.connect()
    proto.dataReceived(v2("198.51.100.7") + bind(1, "alice", "alice-password"))
    assert [p.peer_host for p in b.open] == ["198.51.100.7"]
    buf = ber.PduBuffer()
    buf.feed(transport.value())
    pdu, head = buf.next(1 << 20)
    assert ber.result_code(pdu, head) == 49


def test_v1_zone_ids_are_refused():
    with pytest.raises(ProxyHeaderError, match="zone id"):
        parse_header(b"PROXY TCP6 fe80::1%eth0 ::1 40001 389\r\n")


@pytest.mark.parametrize("header", [v2("127.0.0.1"), b"PROXY TCP4 127.0.0.1 127.0.0.1 1 2\r\n",
                                    b"P", b"\r"])
def test_a_stranger_may_not_send_a_header(header):
    """Even a header naming loopback (a trusted network's address) from an unlisted peer."""
    b = Balanced()
    proto, transport = b.connect(STRANGER)
    (inner,) = b.open  # an ordinary client: served at once, with its own address
    assert inner.peer_host == STRANGER.host
    proto.dataReceived(header)
    assert transport.disconnecting and not b.open
    assert b.factory.counters["proxy_header_untrusted"] == 1


def test_a_stranger_is_served_as_itself():
    b = Balanced()
    proto, transport = b.connect(STRANGER)
    proto.dataReceived(bind(1, SVC, "pw"))
    proto.dataReceived(b"PROXY TCP4 127.0.0.1 127.0.0.1 1 2\r\n")  # later: LDAP's business
    assert b.upstreams[0].value()
    # later bytes are the LDAP parser's business (malformed BER: closed, counted as such)
    assert transport.disconnecting and b.factory.counters["malformed"] == 1
    assert b.factory.counters["proxy_header_untrusted"] == 0


def test_per_client_limit_counts_the_real_client():
    b = Balanced(max_connections_per_client=1)
    first, _ = b.connect()
    first.dataReceived(v2("127.0.0.5"))
    other, _t_other = b.connect()
    other.dataReceived(v2("127.0.0.6"))  # another client behind the same balancer
    assert sorted(p.peer_host for p in b.open) == ["127.0.0.5", "127.0.0.6"]
    again, t_again = b.connect()
    again.dataReceived(v2("127.0.0.5", 40002))
    assert t_again.disconnecting and len(b.open) == 2
    assert b.factory.counters["refused_client_limit"] == 1


def test_ipv4_mapped_balancer_is_listed():
    b = Balanced()
    assert b.outer.trusts("::ffff:10.9.9.9") and b.outer.trusts("10.0.0.1")
    assert not b.outer.trusts("11.0.0.1") and not b.outer.trusts(None)
    assert not b.outer.trusts("::1")


def test_the_header_comes_before_tls():
    listener = ReusePortListener(
        object(), "ssl:1636:interface=127.0.0.1", object(), ssl.CertificateOptions()
    )
    listener.read_proxy_header((ipaddress.ip_network("127.0.0.1/32"),), lambda c: None)
    assert isinstance(listener.factory, ProxyHeaderFactory)
    assert isinstance(listener.factory.wrapped, _TLSFactory)


def test_tls_factory_refuses_with_the_proxy():
    b = Balanced(max_connections=1)
    tls = _TLSFactory(ssl.CertificateOptions(), False, b.factory)
    assert tls.buildProtocol(BALANCER) is not None
    assert tls.buildProtocol(BALANCER) is None


# -- configuration -----------------------------------------------------------------------


def with_(section, value):
    return {**MINIMAL, section: value}


def test_config():
    doc = with_("ldap_proxy", {"listen": ["tcp:3389:interface=127.0.0.1"],
                               "proxy_protocol_from": ["127.0.0.1", "10.0.0.0/8", "::1"]})
    networks = parse(doc).ldap_proxy.proxy_protocol_from
    assert [str(n) for n in networks] == ["127.0.0.1/32", "10.0.0.0/8", "::1/128"]
    plain = parse(with_("ldap_proxy", {"listen": ["tcp:3389:interface=127.0.0.1"]}))
    assert plain.ldap_proxy.proxy_protocol_from == ()


@pytest.mark.parametrize("value,listen,message", [
    (["0.0.0.0/0"], ["tcp:3389:interface=127.0.0.1"], "names every address"),
    (["::/0"], ["tcp:3389:interface=127.0.0.1"], "names every address"),
    (["balancer.example"], ["tcp:3389:interface=127.0.0.1"], "not an IP network"),
    ("10.0.0.1", ["tcp:3389:interface=127.0.0.1"], "list of strings"),
    (["10.0.0.1"], ["unix:/run/otpgate.sock"], "with a PROXY protocol listener"),
])
def test_config_errors_name_the_key(value, listen, message):
    doc = with_("ldap_proxy", {"listen": listen, "proxy_protocol_from": value,
                               "require_tls_for_binds": False})
    with pytest.raises(ConfigError, match=r"\[ldap_proxy\]\.proxy_protocol_from: .*" + message):
        parse(doc)

