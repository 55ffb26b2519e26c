"""The RADIUS server's datagram path with a fake pipeline: drops, counters, duplicates, delays.

The real pipeline and directories are in tests/integration/test_radius*.py.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from pyrad import packet as pp
from pyrad.dictionary import Dictionary
from twisted.internet import defer
from twisted.internet.task import Clock

from otpgate.auth.requests import (
    Appended,
    AuthResult,
    CodeOnly,
    PasswordStep,
    Proof,
    Unusable,
)
from otpgate.config import parse_config
from otpgate.radius.chap import MsChapV2Response, generate_nt_response, mppe_keys, nt_password_hash
from otpgate.radius.packet import (
    ACCESS_ACCEPT,
    ACCESS_CHALLENGE,
    ACCESS_REJECT,
    MS_CHAP2_SUCCESS,
    MS_CHAP_ERROR,
    MS_MPPE_RECV_KEY,
    MS_MPPE_SEND_KEY,
    REPLY_MESSAGE,
    SESSION_TIMEOUT,
    STATE,
)
from otpgate.radius.server import RadiusServer
from otpgate.stats import RadiusCounters

SECRET = b"0123456789abcdef-secret"
NAS = ("192.0.2.10", 40000)


class FakeAudit:
    def __init__(self) -> None:
        self.events: list[dict] = []

    def record(self, **event) -> None:
        self.events.append(event)


class FakeAuthenticator:
    """Stands in for otpgate.auth.pipeline.Authenticator; records what it was asked.  Like
    the real door, it refuses and audits (without a login) what needs no directory: an
    unusable request, a proof kind the channel does not allow."""

    KINDS = {Appended: "authenticate", CodeOnly: "authenticate", PasswordStep: "first_factor",
             Proof: "proof"}

    def __init__(self) -> None:
        self.audit = FakeAudit()
        self.calls: list[tuple[str, object]] = []
        self.result = AuthResult(True, "ok", "uid=alice,dc=x", "t1")
        self.first = AuthResult(True, "password ok", "uid=alice,dc=x", needs_otp=True)
        self.gate: defer.Deferred | None = None
        self.proof_code = "123456"

    async def _wait(self) -> None:
        if self.gate is not None:
            await self.gate

    def _refused(self, request, why):
        self.audit.record(outcome="reject", front_end=request.channel.front_end,
                          user=request.name, dn=None, client=request.client, token=None,
                          reason=why)
        return AuthResult(False, why)

    async def login(self, request, check_password=None, trace=None):
        if isinstance(request, Unusable):
            return self._refused(request, request.why)
        if isinstance(request, Proof) and request.kind not in request.channel.proofs:
            return self._refused(request, f"{request.kind.upper()} is not enabled for this client")
        self.calls.append((self.KINDS[type(request)], request))
        if isinstance(request, Proof):
            value = None
            for code in ("000000", self.proof_code, "999999"):
                found = request.check(code)
                if found is not None and value is None:
                    value = found
            if value is None:
                return AuthResult(False, "no match", "uid=alice,dc=x")
            return AuthResult(True, "ok", "uid=alice,dc=x", "t1", proof=value)
        await self._wait()
        return self.first if isinstance(request, PasswordStep) else self.result


def make_server(clients=None, **radius):
    doc = {
        "directory": {
            "profile": "openldap",
            "urls": ["ldap://127.0.0.1:389"],
            "base_dn": "dc=x",
            "bind_dn": "cn=s,dc=x",
            "bind_password": "pw",
        },
        "vault": {"keyring": "k.json"},
        "radius": {
            "listen": ["127.0.0.1:0"],
            "clients": clients
            or [{"address": "192.0.2.0/24", "secret": SECRET.decode(), "name": "nas"}],
            **radius,
        },
    }
    config = parse_config(doc, Path("/"))
    auth = FakeAuthenticator()

    async def check_password(dn, password):
        return 0, ""

    gateway = SimpleNamespace(
        config=config, authenticator=auth, check_password=check_password,
        radius_counters=RadiusCounters(),
    )
    clock = Clock()
    server = RadiusServer(gateway, clock)
    sent: list[tuple[bytes, tuple[str, int]]] = []
    return server, auth, clock, sent, lambda data, addr: sent.append((data, addr))


def request(*, password="pw123456", ma=True, secret=SECRET, attrs=(), ident=9, code=1):
    pkt = pp.AuthPacket(code=code, id=ident, secret=secret, dict=Dictionary())
    pkt.authenticator = os.urandom(16)
    pkt[1] = [b"alice"]
    if password is not None:
        pkt[2] = [pkt.PwCrypt(password)]
    for key, value in attrs:
        pkt.setdefault(key, []).append(value)
    if ma:
        pkt.add_message_authenticator()
    return pkt, pkt.RequestPacket()


def decode(pkt, raw):
    reply = pp.AuthPacket(packet=raw, secret=SECRET, dict=Dictionary())
    assert pkt.VerifyReply(reply, raw, enforce_ma=True)
    assert raw[20] == 80  # Message-Authenticator first
    return reply


def test_append_accept_and_counters():
    server, auth, _clock, sent, send = make_server()
    pkt, raw = request()
    server.datagram(raw, NAS, send)
    assert len(sent) == 1 and sent[0][1] == NAS
    assert decode(pkt, sent[0][0]).code == ACCESS_ACCEPT
    (kind, req), = auth.calls
    assert kind == "authenticate" and req.typed == "pw123456" and req.client == NAS[0]
    assert isinstance(req, Appended) and req.name == "alice"
    assert server.counters.accepted == 1 and server.counters.received == 1


def test_unknown_client_malformed_and_wrong_code_are_dropped_and_counted():
    server, auth, _clock, sent, send = make_server()
    _, raw = request()
    server.datagram(raw, ("198.51.100.1", 1812), send)
    server.datagram(b"\x01\x02\x00\x10", NAS, send)
    server.datagram(raw[:-3], NAS, send)
    _, acct = request(code=4, ma=False)
    server.datagram(acct, NAS, send)
    c = server.counters
    assert sent == [] and auth.calls == []
    assert (c.dropped_unknown_client, c.dropped_malformed, c.dropped_unsupported_code) == (1, 2, 1)


def test_missing_or_bad_message_authenticator_dropped():
    server, auth, _clock, sent, send = make_server()
    _, no_ma = request(ma=False)
    _, wrong_secret = request(secret=b"not-the-secret-0123456")
    server.datagram(no_ma, NAS, send)
    server.datagram(wrong_secret, NAS, send)
    assert sent == [] and auth.calls == []
    assert server.counters.dropped_missing_authenticator == 1
    assert server.counters.dropped_bad_authenticator == 1


def test_legacy_client_without_message_authenticator_but_never_with_proxy_state():
    clients = [{"address": "192.0.2.10", "secret": SECRET.decode(),
                "require_message_authenticator": False}]
    server, _auth, _clock, sent, send = make_server(clients)
    pkt, raw = request(ma=False)
    server.datagram(raw, NAS, send)
    assert decode(pkt, sent[0][0]).code == ACCESS_ACCEPT  # the reply is signed anyway
    _, raw = request(ma=False, attrs=[(33, b"proxy")])
    server.datagram(raw, NAS, send)
    assert len(sent) == 1 and server.counters.dropped_missing_authenticator == 1


def test_retransmission_gets_the_cached_reply_not_a_second_verification():
    server, auth, clock, sent, send = make_server()
    auth.gate = defer.Deferred()
    pkt, raw = request()
    server.datagram(raw, NAS, send)
    server.datagram(raw, NAS, send)  # while the first is in flight: dropped
    assert sent == [] and server.counters.duplicates_in_flight == 1
    auth.gate.callback(None)
    assert len(sent) == 1
    clock.advance(5)
    server.datagram(raw, NAS, send)
    assert len(sent) == 2 and sent[1][0] == sent[0][0]
    assert len(auth.calls) == 1 and server.counters.duplicates_answered == 1
    # another source port is another request; so is the same packet after the cache lifetime
    server.datagram(raw, (NAS[0], NAS[1] + 1), send)
    clock.advance(31)
    server.datagram(raw, NAS, send)
    assert len(auth.calls) == 3


def test_rejects_are_delayed_and_cached_only_once_sent():
    server, auth, clock, sent, send = make_server(reject_delay=1.5)
    auth.result = AuthResult(False, "wrong OTP", "uid=alice,dc=x")
    pkt, raw = request()
    server.datagram(raw, NAS, send)
    assert sent == []
    server.datagram(raw, NAS, send)
    assert server.counters.duplicates_in_flight == 1
    clock.advance(1.5)
    assert decode(pkt, sent[0][0]).code == ACCESS_REJECT
    server.datagram(raw, NAS, send)
    assert len(sent) == 2 and len(auth.calls) == 1


def test_rate_limit_per_nas():
    server, auth, clock, sent, send = make_server(rate_limit_per_client=2.0, rate_limit_burst=2)
    for _ in range(3):
        server.datagram(request()[1], NAS, send)
    server.datagram(request()[1], ("192.0.2.11", 1), send)  # another NAS has its own bucket
    assert len(sent) == 3 and server.counters.dropped_rate_limited == 1
    clock.advance(0.5)
    server.datagram(request()[1], NAS, send)
    assert len(sent) == 4


def test_status_server():
    server, auth, _clock, sent, send = make_server()
    pkt = pp.AuthPacket(code=pp.StatusServer, id=3, secret=SECRET, dict=Dictionary())
    pkt.authenticator = os.urandom(16)
    pkt.add_message_authenticator()
    raw = pkt.RequestPacket()
    server.datagram(raw, NAS, send)
    assert decode(pkt, sent[0][0]).code == ACCESS_ACCEPT
    assert server.counters.status_server == 1 and auth.calls == []
    _, no_ma = request(code=pp.StatusServer, ma=False, password=None)
    server.datagram(no_ma, NAS, send)
    assert len(sent) == 1 and server.counters.dropped_missing_authenticator == 1


def test_otp_only_mode_and_scratch_warning():
    clients = [{"address": "192.0.2.0/24", "secret": SECRET.decode(), "mode": "otp-only"}]
    server, auth, _clock, sent, send = make_server(clients)
    auth.result = AuthResult(True, "ok", "uid=alice,dc=x", "s1", scratch_remaining=3)
    pkt, raw = request(password="12345678")
    server.datagram(raw, NAS, send)
    reply = decode(pkt, sent[0][0])
    assert reply.code == ACCESS_ACCEPT
    assert reply.get(REPLY_MESSAGE) == [b"Only 3 scratch codes left: print a new list"]
    (_, req), = auth.calls
    assert isinstance(req, CodeOnly) and req.code == "12345678"


def test_challenge_flow_state_single_use_bound_to_user_and_nas():
    clients = [{"address": "192.0.2.0/24", "secret": SECRET.decode(), "mode": "challenge"}]
    server, auth, clock, sent, send = make_server(clients, challenge_timeout=60)
    pkt, raw = request(password="static-pw")
    server.datagram(raw, NAS, send)
    reply = decode(pkt, sent[-1][0])
    assert reply.code == ACCESS_CHALLENGE
    assert reply.get(REPLY_MESSAGE) == [b"Enter your one-time code"]
    assert reply.get(SESSION_TIMEOUT) == [b"\x00\x00\x00\x3c"]
    (state,) = reply.get(STATE)
    assert len(state) == 16
    assert auth.calls[-1][0] == "first_factor" and auth.calls[-1][1].password == "static-pw"

    # from another NAS: refused, and the State is spent
    pkt2, raw2 = request(password="123456", attrs=[(STATE, state)])
    server.datagram(raw2, ("192.0.2.99", 5), send)
    assert decode(pkt2, sent[-1][0]).code == ACCESS_REJECT

    # a fresh challenge, answered properly
    pkt, raw = request(password="static-pw")
    server.datagram(raw, NAS, send)
    (state,) = decode(pkt, sent[-1][0]).get(STATE)
    pkt3, raw3 = request(password="123456", attrs=[(STATE, state)])
    server.datagram(raw3, NAS, send)
    assert decode(pkt3, sent[-1][0]).code == ACCESS_ACCEPT
    kind, req = auth.calls[-1]
    assert kind == "authenticate" and isinstance(req, CodeOnly) and req.name == "uid=alice,dc=x"
    # used once: a new packet with the same State is refused without asking the pipeline
    calls = len(auth.calls)
    pkt4, raw4 = request(password="123457", attrs=[(STATE, state)])
    server.datagram(raw4, NAS, send)
    assert decode(pkt4, sent[-1][0]).code == ACCESS_REJECT and len(auth.calls) == calls

    # expiry
    pkt, raw = request(password="static-pw")
    server.datagram(raw, NAS, send)
    (state,) = decode(pkt, sent[-1][0]).get(STATE)
    clock.advance(61)
    pkt5, raw5 = request(password="123456", attrs=[(STATE, state)])
    server.datagram(raw5, NAS, send)
    assert decode(pkt5, sent[-1][0]).code == ACCESS_REJECT


def test_challenge_mode_no_otp_needed_is_accepted_at_once():
    clients = [{"address": "192.0.2.0/24", "secret": SECRET.decode(), "mode": "challenge"}]
    server, auth, _clock, sent, send = make_server(clients)
    auth.first = AuthResult(True, "exempt", "uid=svc,dc=x")
    pkt, raw = request(password="static-pw")
    server.datagram(raw, NAS, send)
    assert decode(pkt, sent[-1][0]).code == ACCESS_ACCEPT


def chap_request(code: str, ident=5):
    import hashlib

    challenge = os.urandom(16)
    response = bytes((ident,)) + hashlib.md5(bytes((ident,)) + code.encode() + challenge).digest()
    return request(password=None, attrs=[(3, response), (60, challenge)])


def test_chap_needs_opt_in():
    server, auth, _clock, sent, send = make_server()
    pkt, raw = chap_request("123456")
    server.datagram(raw, NAS, send)
    assert decode(pkt, sent[-1][0]).code == ACCESS_REJECT and auth.calls == []
    (event,) = auth.audit.events
    assert event["outcome"] == "reject" and event["user"] == "alice"
    assert event["reason"].startswith("CHAP is not enabled for this client")


def test_chap_and_mschapv2_accept_and_reject():
    clients = [{"address": "192.0.2.0/24", "secret": SECRET.decode(),
                "allow_chap": True, "allow_mschapv2": True}]
    server, auth, _clock, sent, send = make_server(clients)
    pkt, raw = chap_request("123456")
    server.datagram(raw, NAS, send)
    assert decode(pkt, sent[-1][0]).code == ACCESS_ACCEPT
    pkt, raw = chap_request("123457")
    server.datagram(raw, NAS, send)
    assert decode(pkt, sent[-1][0]).code == ACCESS_REJECT

    auth_challenge, peer = os.urandom(16), os.urandom(16)
    nt = generate_nt_response(auth_challenge, peer, b"alice", "123456")
    ms = bytes((9, 0)) + peer + b"\x00" * 8 + nt
    pkt, raw = request(password=None, attrs=[((311, 11), auth_challenge), ((311, 25), ms)])
    server.datagram(raw, NAS, send)
    reply = decode(pkt, sent[-1][0])
    assert reply.code == ACCESS_ACCEPT
    (success,) = reply.get(MS_CHAP2_SUCCESS)
    assert success[:3] == b"\x09S=" and len(success) == 43
    send_key, recv_key = mppe_keys(nt_password_hash("123456"), nt)
    holder = pp.Packet(code=2, id=1, secret=SECRET, authenticator=pkt.authenticator)
    assert holder.SaltDecrypt(reply.get(MS_MPPE_SEND_KEY)[0]) == send_key
    assert holder.SaltDecrypt(reply.get(MS_MPPE_RECV_KEY)[0]) == recv_key

    nt_bad = generate_nt_response(auth_challenge, peer, b"alice", "654321")
    ms_bad = bytes((9, 0)) + peer + b"\x00" * 8 + nt_bad
    pkt, raw = request(password=None, attrs=[((311, 11), auth_challenge), ((311, 25), ms_bad)])
    server.datagram(raw, NAS, send)
    reply = decode(pkt, sent[-1][0])
    assert reply.code == ACCESS_REJECT
    assert reply.get(MS_CHAP_ERROR)[0].startswith(b"\x09E=691 R=0")
    assert MsChapV2Response.parse(ms).ident == 9


def test_unsupported_logins_are_rejected_not_verified():
    clients = [{"address": "192.0.2.0/24", "secret": SECRET.decode(), "allow_chap": True}]
    server, auth, _clock, sent, send = make_server(clients)
    for attrs in ([(79, b"\x02\x00\x00\x05\x01")],  # EAP
                  [((311, 1), b"\x00" * 50)],  # MS-CHAP v1
                  []):  # nothing
        pkt, raw = request(password=None, attrs=attrs)
        server.datagram(raw, NAS, send)
        assert decode(pkt, sent[-1][0]).code == ACCESS_REJECT
    pkt, raw = request(attrs=[(3, b"\x01" * 17)])  # PAP and CHAP at once
    server.datagram(raw, NAS, send)
    assert decode(pkt, sent[-1][0]).code == ACCESS_REJECT
    assert auth.calls == []


def test_repeated_user_name_is_malformed():
    server, auth, _clock, sent, send = make_server()
    _, raw = request(attrs=[(1, b"mallory")])
    server.datagram(raw, NAS, send)
    assert sent == [] and server.counters.dropped_malformed == 1


@pytest.mark.parametrize("setting,expect", [("none", None), ("reject", ACCESS_REJECT)])
def test_directory_unavailable(setting, expect):
    server, auth, _clock, sent, send = make_server(unavailable_reply=setting)
    auth.result = AuthResult(False, "directory unavailable", unavailable=True)
    pkt, raw = request()
    server.datagram(raw, NAS, send)
    if expect is None:
        assert sent == [] and server.counters.no_reply_unavailable == 1
        server.datagram(raw, NAS, send)  # not cached: the retransmission is tried again
        assert len(auth.calls) == 2
    else:
        assert decode(pkt, sent[-1][0]).code == expect


def test_handler_error_is_logged_counted_and_not_cached(caplog):
    server, auth, _clock, sent, send = make_server()

    async def boom(request, check_password=None, trace=None):
        raise RuntimeError("bug")

    auth.login = boom
    _, raw = request()
    server.datagram(raw, NAS, send)
    assert sent == [] and server.counters.errors == 1
    assert len(server.duplicates) == 0


def test_ipv4_mapped_source_and_most_specific_client():
    clients = [
        {"address": "192.0.2.0/24", "secret": "a" * 16 + "-wide"},
        {"address": "192.0.2.10/32", "secret": SECRET.decode(), "name": "exact"},
    ]
    server, _auth, _clock, sent, send = make_server(clients)
    pkt, raw = request()
    server.datagram(raw, ("::ffff:192.0.2.10", 1), send)
    assert decode(pkt, sent[-1][0]).code == ACCESS_ACCEPT


def test_failover_identity_names_the_exact_request_only_when_enabled():
    """[radius] failover_replay_seconds: the pipeline gets a keyed identity of (NAS address,
    Identifier, Request Authenticator); the same packet from another source port (another
    socket of the NAS) has the same one, any other request another."""
    server, auth, _clock, sent, send = make_server()
    _, raw = request()
    server.datagram(raw, NAS, send)
    assert auth.calls[-1][1].retransmission is None  # off by default

    server, auth, _clock, sent, send = make_server(failover_replay_seconds=5)
    pkt, raw = request()
    server.datagram(raw, NAS, send)
    server.datagram(raw, (NAS[0], NAS[1] + 1), send)  # not a duplicate here: verified again
    server.datagram(raw, ("192.0.2.11", NAS[1]), send)  # another NAS address
    _, other = request()  # another Request Authenticator
    server.datagram(other, NAS, send)
    same, port, address, new = (call[1].retransmission for call in auth.calls)
    assert same == port and len(same) == 32
    assert len({same, address, new}) == 3
    assert SECRET not in same and pkt.authenticator not in same
    # counted when the pipeline says it accepted a retransmission
    auth.result = AuthResult(True, "ok", "uid=alice,dc=x", "t1", retransmission=True)
    _, raw = request()
    server.datagram(raw, NAS, send)
    assert server.counters.failover_retransmissions == 1
    assert decode(pkt, sent[0][0]).code == ACCESS_ACCEPT


# -- codes sent by e-mail/SMS: the Access-Challenge says where ----------------------------

SENT_SMS = "Code sent by SMS to +\u2022\u2022\u2022\u2022\u202289"
SENT_MAIL = "Code sent by e-mail to a\u2022\u2022\u2022@x"


def test_only_pap_append_and_challenge_channels_can_challenge():
    """A code may be sent only where the NAS gave us the password and can take a challenge:
    never on otp-only, CHAP or MS-CHAPv2."""
    clients = [
        {"address": "192.0.2.1", "secret": SECRET.decode(), "mode": "append",
         "allow_chap": True, "allow_mschapv2": True},
        {"address": "192.0.2.2", "secret": SECRET.decode(), "mode": "challenge"},
        {"address": "192.0.2.3", "secret": SECRET.decode(), "mode": "otp-only"},
    ]
    server, auth, _clock, _sent, send = make_server(clients)
    for host in ("192.0.2.1", "192.0.2.2", "192.0.2.3"):
        server.datagram(request()[1], (host, 1), send)
    server.datagram(chap_request("123456")[1], ("192.0.2.1", 1), send)
    channels = [(type(req).__name__, req.channel.challenges) for _, req in auth.calls]
    assert channels == [("Appended", True), ("PasswordStep", True), ("CodeOnly", False),
                        ("Proof", False)]


def test_challenge_mode_reply_message_names_where_the_code_went():
    clients = [{"address": "192.0.2.0/24", "secret": SECRET.decode(), "mode": "challenge"}]
    server, auth, _clock, sent, send = make_server(clients, failover_replay_seconds=5)
    auth.first = AuthResult(True, "sent", "uid=alice,dc=x", needs_otp=True, challenge=SENT_SMS)
    pkt, raw = request(password="static-pw")
    server.datagram(raw, NAS, send)
    reply = decode(pkt, sent[-1][0])
    assert reply.code == ACCESS_CHALLENGE and reply.get(REPLY_MESSAGE) == [SENT_SMS.encode()]
    (_, step), = auth.calls
    assert isinstance(step, PasswordStep) and step.retransmission is not None
    assert len(step.retransmission) == 32  # another gateway recognises this request
    (state,) = reply.get(STATE)
    pkt, raw = request(password="123456", attrs=[(STATE, state)])
    server.datagram(raw, NAS, send)
    assert decode(pkt, sent[-1][0]).code == ACCESS_ACCEPT
    assert isinstance(auth.calls[-1][1], CodeOnly) and auth.calls[-1][1].code == "123456"


def test_challenge_mode_send_refused_is_a_reject():
    clients = [{"address": "192.0.2.0/24", "secret": SECRET.decode(), "mode": "challenge"}]
    server, auth, _clock, sent, send = make_server(clients)
    auth.first = AuthResult(False, "email code not sent: smtp down", "uid=alice,dc=x")
    pkt, raw = request(password="static-pw")
    server.datagram(raw, NAS, send)
    assert decode(pkt, sent[-1][0]).code == ACCESS_REJECT and len(server.challenges) == 0


def test_append_mode_sent_code_challenges_then_takes_the_code_with_the_state():
    server, auth, clock, sent, send = make_server(challenge_timeout=90)
    auth.result = AuthResult(False, "email code sent", "uid=alice,dc=x", challenge=SENT_MAIL)
    pkt, raw = request(password="static-pw,email")
    server.datagram(raw, NAS, send)
    reply = decode(pkt, sent[-1][0])
    assert reply.code == ACCESS_CHALLENGE
    assert reply.get(REPLY_MESSAGE) == [SENT_MAIL.encode()]
    assert reply.get(SESSION_TIMEOUT) == [(90).to_bytes(4, "big")]
    (state,) = reply.get(STATE)
    # the NAS retransmits the same packet: the same Access-Challenge, nothing asked again
    server.datagram(raw, NAS, send)
    assert sent[-1][0] == sent[-2][0] and len(auth.calls) == 1
    assert server.counters.challenged == 1

    auth.result = AuthResult(True, "OTP accepted", "uid=alice,dc=x", "t1")
    pkt, raw = request(password="482913", attrs=[(STATE, state)])
    server.datagram(raw, NAS, send)
    assert decode(pkt, sent[-1][0]).code == ACCESS_ACCEPT
    kind, answer = auth.calls[-1]
    assert isinstance(answer, CodeOnly)
    assert (answer.name, answer.code) == ("uid=alice,dc=x", "482913")
    assert answer.channel.front_end == "radius"

    # the same State again, and a State never issued: refused without a login, audited
    calls = len(auth.calls)
    for state_value in (state, os.urandom(16)):
        pkt, raw = request(password="482913", attrs=[(STATE, state_value)])
        server.datagram(raw, NAS, send)
        assert decode(pkt, sent[-1][0]).code == ACCESS_REJECT
    assert len(auth.calls) == calls
    assert [e["reason"] for e in auth.audit.events] == [
        "unknown, used or expired State (NAS nas)"] * 2

    # expired
    auth.result = AuthResult(False, "email code sent", "uid=alice,dc=x", challenge=SENT_MAIL)
    pkt, raw = request(password="static-pw")
    server.datagram(raw, NAS, send)
    (state,) = decode(pkt, sent[-1][0]).get(STATE)
    clock.advance(91)
    pkt, raw = request(password="482913", attrs=[(STATE, state)])
    server.datagram(raw, NAS, send)
    assert decode(pkt, sent[-1][0]).code == ACCESS_REJECT


def test_append_mode_state_survives_an_outage():
    server, auth, _clock, sent, send = make_server(unavailable_reply="reject")
    auth.result = AuthResult(False, "sms code sent", "uid=alice,dc=x", challenge=SENT_SMS)
    pkt, raw = request(password="static-pw")
    server.datagram(raw, NAS, send)
    (state,) = decode(pkt, sent[-1][0]).get(STATE)
    auth.result = AuthResult(False, "directory unavailable", unavailable=True)
    pkt, raw = request(password="482913", attrs=[(STATE, state)])
    server.datagram(raw, NAS, send)
    assert decode(pkt, sent[-1][0]).code == ACCESS_REJECT
    auth.result = AuthResult(True, "OTP accepted", "uid=alice,dc=x", "t1")
    pkt, raw = request(password="482913", attrs=[(STATE, state)])
    server.datagram(raw, NAS, send)
    assert decode(pkt, sent[-1][0]).code == ACCESS_ACCEPT


def test_otp_only_mode_ignores_a_state():
    clients = [{"address": "192.0.2.0/24", "secret": SECRET.decode(), "mode": "otp-only"}]
    server, auth, _clock, sent, send = make_server(clients)
    pkt, raw = request(password="123456", attrs=[(STATE, os.urandom(16))])
    server.datagram(raw, NAS, send)
    assert decode(pkt, sent[-1][0]).code == ACCESS_ACCEPT
    (_, req), = auth.calls
    assert isinstance(req, CodeOnly) and req.name == "alice"
