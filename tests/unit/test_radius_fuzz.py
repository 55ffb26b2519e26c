"""Fuzzing the RADIUS decoder and the datagram path (hypothesis).

Whatever arrives, the decoder raises MalformedPacket or returns a Request,
the login classifier raises MalformedPacket or returns a Login, and the
server's datagram handler never raises (the LDAP proxy shares its reactor).
"""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otpgate.errors import MalformedPacket
from otpgate.radius.access import Login, classify
from otpgate.radius.packet import Request, decode_request, verify_message_authenticator
from tests.unit.test_radius_server import NAS, SECRET, make_server, request

FUZZ = settings(max_examples=1200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

attribute = st.tuples(
    st.sampled_from([1, 2, 3, 4, 18, 24, 26, 33, 60, 79, 80, 255]) | st.integers(0, 255),
    st.binary(max_size=40)
    | st.builds(lambda vid, t, v: struct.pack("!IBB", vid, t, len(v) + 2) + v,
                st.sampled_from([311, 9, 0]), st.sampled_from([1, 11, 25, 26]),
                st.binary(max_size=60)),
)


def build(code: int, ident: int, auth: bytes, attrs: list[tuple[int, bytes]], extra: bytes) -> bytes:
    body = b"".join(struct.pack("!BB", t, len(v) + 2) + v for t, v in attrs if len(v) <= 253)
    return struct.pack("!BBH", code, ident, 20 + len(body)) + auth + body + extra


def exercise(data: bytes) -> None:
    try:
        req = decode_request(data, SECRET, 64)
    except MalformedPacket:
        return
    assert isinstance(req, Request)
    assert isinstance(verify_message_authenticator(req), bool)
    try:
        login = classify(req)
    except MalformedPacket:
        return
    assert isinstance(login, Login)


@FUZZ
@given(st.binary(max_size=600))
def test_random_bytes(data):
    exercise(data)


@FUZZ
@given(
    st.sampled_from([1, 1, 1, 2, 4, 11, 12, 40, 0, 255]),
    st.integers(0, 255),
    st.binary(min_size=16, max_size=16),
    st.lists(attribute, max_size=20),
    st.binary(max_size=8),
)
def test_well_formed_layouts(code, ident, auth, attrs, extra):
    data = build(code, ident, auth, attrs, extra)
    exercise(data)
    # a valid layout with at most 64 attributes and one Message-Authenticator decodes
    kept = [(t, v) for t, v in attrs if len(v) <= 253]
    mas = [v for t, v in kept if t == 80]
    if len(kept) <= 64 and not mas:
        assert decode_request(data, SECRET, 64).attribute_count == len(kept)


@FUZZ
@given(st.binary(max_size=300), st.integers(0, 4))
def test_bit_flips_of_a_real_request(noise, flips):
    _, raw = request(attrs=[(24, b"s" * 16), (33, b"proxy")])
    data = bytearray(raw)
    for i, b in enumerate(noise[: flips * 2 : 2]):
        data[(b * 7 + i) % len(data)] ^= noise[min(i * 2 + 1, len(noise) - 1)] or 1
    exercise(bytes(data))


@settings(max_examples=500, deadline=None)
@given(st.lists(st.binary(max_size=200) | st.builds(
    build, st.sampled_from([1, 12]), st.integers(0, 255), st.binary(min_size=16, max_size=16),
    st.lists(attribute, max_size=8), st.just(b"")), max_size=10))
def test_server_never_raises(datagrams):
    server, _auth, _clock, _sent, send = make_server()
    for data in datagrams:
        server.datagram(data, NAS, send)
    c = server.counters
    assert c.received == len(datagrams)
    assert c.errors == 0
