"""The web portal's pure parts: sessions, CSRF, rate limits, HTML escaping, [web] config, metrics.

In memory, no server; the portal over HTTP against real directories is in
tests/integration (test_web_attacks.py, test_web_browser.py, test_web_twistd.py)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.web import resource, server

from otpgate.config import parse_config
from otpgate.errors import ConfigError
from otpgate.directory.records import OtpState
from otpgate.stats import DirectoryStats, RadiusCounters
from otpgate.tokens import Token, TokenType
from otpgate.web import render
from otpgate.web.bodycap import MAX_BODY, CappedRequest
from otpgate.web.clientaddr import client_address, parse_forwarded, parse_node
from otpgate.web.metrics import Metrics
from otpgate.web.sessions import RateLimiter, SessionStore, csrf_ok

BASE = {
    "directory": {"profile": "openldap", "urls": ["ldap://127.0.0.1:1"], "base_dn": "dc=x",
                  "bind_dn": "cn=svc,dc=x", "bind_password": "pw"},
    "vault": {"keyring": "k.json"},
}


def web_config(**web: object):
    return parse_config({**BASE, "web": web}, Path("/etc/otpgate")).web


def test_session_idle_and_absolute_timeouts():
    store = SessionStore(idle_seconds=60, max_seconds=300, max_sessions=10)
    s = store.new("alice", "uid=alice", now=0)
    assert len(s.id) >= 40 and s.id != s.csrf
    assert store.get(s.id, 59) is s
    assert store.get(s.id, 118) is s  # touched at 59: idle timer restarted
    assert store.get(s.id, 179) is None  # idle for 61 s
    s2 = store.new("alice", "uid=alice", now=0)
    for t in range(50, 300, 50):
        assert store.get(s2.id, t) is s2
    assert store.get(s2.id, 301) is None  # absolute limit, however active
    assert store.get("nonsense", 0) is None and store.get(None, 0) is None


def test_session_store_is_bounded_and_ids_are_random():
    store = SessionStore(60, 300, max_sessions=3)
    ids = [store.new(f"u{i}", f"uid=u{i}", now=i).id for i in range(5)]
    assert len(store) == 3 and len(set(ids)) == 5
    assert store.get(ids[0], 5) is None and store.get(ids[4], 5) is not None


def test_csrf_compare():
    s = SessionStore(60, 300, 10).new("a", "uid=a", 0)
    assert csrf_ok(s, s.csrf)
    assert not csrf_ok(s, s.csrf[:-1] + ("A" if s.csrf[-1] != "A" else "B"))
    assert not csrf_ok(s, "") and not csrf_ok(s, None)


def test_rate_limiter_sliding_window():
    limit = RateLimiter(3)
    assert [limit.allow("ip", t) for t in (0, 1, 2, 3)] == [True, True, True, False]
    assert limit.allow("other", 3)
    assert not limit.allow("ip", 59.9)
    assert limit.allow("ip", 60.0)


def test_render_escapes_everything():
    token = Token(id="ab12", type=TokenType.TOTP, created=0, label='<script>x</script>"')
    html = render.devices_table(OtpState(tokens=(token,)), 'c"sr<f', "/revoke")
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert 'value="c&quot;sr&lt;f"' in html
    page = render.page("<b>", render.sign_in("bad <i>", 'x"y'), "<who>", "tok").decode()
    assert "<b>" not in page.split("<main>")[0] and "&lt;who&gt;" in page
    assert "style=" not in page and "<script>" not in page.replace(
        '<script src="/static/app.js" defer></script>', ""
    )


def test_web_config_defaults_and_checks():
    web = web_config()
    assert web.listen == () and web.password_only_enrollment_networks == ()
    ok = web_config(listen=["tcp:8080:interface=127.0.0.1", "tcp:8081:interface=127.0.0.2"])
    assert len(ok.listen) == 2
    with pytest.raises(ConfigError, match=r"\[web\].listen: .*plain HTTP only on loopback"):
        web_config(listen=["tcp:8080"])
    with pytest.raises(ConfigError, match=r"\[web\].listen: .*ssl: listener needs cert_file"):
        web_config(listen=["ssl:8443"])
    tls = web_config(listen=["ssl:8443"], cert_file="c.pem", key_file="k.pem",
                     helpdesk_groups=["CN=Desk,DC=x"], metrics_networks=["10.0.0.0/8"])
    assert tls.cert_file == Path("/etc/otpgate/c.pem") and tls.helpdesk_groups == ("cn=desk,dc=x",)
    with pytest.raises(ConfigError, match=r"\[web\].session_idle_seconds"):
        web_config(session_idle_seconds=100, session_max_seconds=50)
    with pytest.raises(ConfigError, match=r"\[web\].bogus: unknown key"):
        web_config(bogus=1)
    with pytest.raises(ConfigError, match=r"\[web\].password_only_enrollment_networks"):
        web_config(password_only_enrollment_networks=["not-a-net"])
    import datetime

    stamp = datetime.datetime(2027, 1, 31, tzinfo=datetime.timezone.utc)
    assert web_config(password_only_enrollment_until=stamp).password_only_enrollment_until == (
        stamp.timestamp()
    )
    assert web_config(
        password_only_enrollment_until="2027-01-31T01:00:00+01:00"
    ).password_only_enrollment_until == stamp.timestamp()
    assert web_config().password_only_enrollment_until is None
    for bad in ("2027-01-31T00:00:00", "next week", 5, datetime.date(2027, 1, 31)):
        with pytest.raises(ConfigError, match=r"\[web\].password_only_enrollment_until: expected"):
            web_config(password_only_enrollment_until=bad)


def test_metrics_from_audit_events_and_gateway_counters():
    directory, radius = DirectoryStats(), RadiusCounters()
    m = Metrics(directory, radius)
    m.observe_audit({"outcome": "accept", "front_end": "ldap", "reason": "ok"})
    m.observe_audit({"outcome": "reject", "front_end": "radius", "reason": "wrong OTP (now locked out)"})
    m.observe_audit({"outcome": "helpdesk-unlock", "front_end": "web", "reason": "by a: unlock"})
    directory.observe("search", 0.0007)
    directory.observe("search", 0.003)
    directory.observe("modify", 12.0)
    directory.error("timeout")
    directory.cas_conflicts += 2
    radius.received += 3
    radius.dropped_bad_authenticator += 1
    text = m.text().decode()
    assert 'otpgate_authentications_total{front_end="ldap",outcome="accept"} 1.0' in text
    assert 'otpgate_authentications_total{front_end="radius",outcome="reject"} 1.0' in text
    assert "otpgate_lockouts_total 1.0" in text
    assert 'otpgate_web_actions_total{action="helpdesk-unlock"} 1.0' in text
    assert 'otpgate_directory_seconds_bucket{le="0.001",operation="search"} 1.0' in text
    assert 'otpgate_directory_seconds_bucket{le="0.005",operation="search"} 2.0' in text
    assert 'otpgate_directory_seconds_bucket{le="5.0",operation="modify"} 0.0' in text
    assert 'otpgate_directory_seconds_bucket{le="+Inf",operation="modify"} 1.0' in text
    assert 'otpgate_directory_seconds_count{operation="search"} 2.0' in text
    assert 'otpgate_directory_errors_total{kind="timeout"} 1.0' in text
    assert "otpgate_cas_retries_total 2.0" in text
    assert 'otpgate_radius_dropped_total{reason="bad_authenticator"} 1.0' in text
    assert 'otpgate_radius_dropped_total{reason="malformed"} 0.0' in text
    assert 'otpgate_radius_packets_total{result="received"} 3.0' in text
    assert "otpgate_radius" not in Metrics(directory, None).text().decode()


# -- client address behind reverse proxies (clientaddr.py) ------------------------------------



PROXIES = (ipaddress.ip_network("127.0.0.2/32"), ipaddress.ip_network("10.9.0.0/16"))


def who(peer: str, value: str | None, header: str = "x-forwarded-for",
        proxies: tuple = PROXIES) -> tuple[str, str | None]:
    found = client_address(peer, [value.encode()] if value is not None else None, proxies, header)
    return found.address, found.network


def test_forwarding_header_ignored_unless_the_peer_is_a_trusted_proxy():
    # A client that is not a proxy says whatever it likes: it stays itself.
    assert who("127.0.0.1", "10.1.1.1") == ("127.0.0.1", "127.0.0.1")
    assert who("192.0.2.7", "for=10.1.1.1", "forwarded") == ("192.0.2.7", "192.0.2.7")
    # No trusted proxies configured: never read.
    assert who("127.0.0.2", "10.1.1.1", proxies=()) == ("127.0.0.2", "127.0.0.2")
    # A trusted proxy names the client.
    assert who("127.0.0.2", "203.0.113.5") == ("203.0.113.5", "203.0.113.5")
    # No header from the proxy: the proxy host itself.
    assert who("127.0.0.2", None) == ("127.0.0.2", "127.0.0.2")


def test_right_most_untrusted_address_wins():
    # The client forged "10.1.1.1, 127.0.0.1"; the proxy appended the real peer.
    assert who("127.0.0.2", "10.1.1.1, 127.0.0.1, 198.51.100.9")[0] == "198.51.100.9"
    # Two proxies in a row (10.9.0.0/16 and 127.0.0.2): skip both, take the client.
    assert who("127.0.0.2", "8.8.8.8, 198.51.100.9, 10.9.3.4")[0] == "198.51.100.9"
    # All hops trusted: the left-most (the request started on a proxy).
    assert who("127.0.0.2", "10.9.1.1, 10.9.2.2")[0] == "10.9.1.1"
    # Ports and brackets as some proxies write them; IPv4-mapped IPv6.
    assert who("127.0.0.2", "[2001:db8::1]:443")[0] == "2001:db8::1"
    assert who("127.0.0.2", "198.51.100.9:5555")[0] == "198.51.100.9"
    assert who("::ffff:127.0.0.2", "198.51.100.9")[0] == "198.51.100.9"
    # Several header lines are one list.
    found = client_address("127.0.0.2", [b"1.1.1.1", b"198.51.100.9"], PROXIES,
                           "x-forwarded-for")
    assert found.address == "198.51.100.9"


def test_malformed_forwarding_header_gives_no_network_rights():
    for value in ("", "not-an-ip", "1.2.3.4, garbage", "1.2.3.4,", "unknown", "a" * 5000):
        address, network = who("127.0.0.2", value)
        assert (address, network) == ("127.0.0.2", None), value
    # Garbage LEFT of the address that matters is the client's own and does not matter.
    assert who("127.0.0.2", "garbage, 198.51.100.9") == ("198.51.100.9", "198.51.100.9")
    address, network = who("127.0.0.2", 'for="unterminated, for=198.51.100.9', "forwarded")
    assert network is None
    assert client_address("127.0.0.2", [b"\xff"], PROXIES, "x-forwarded-for").network is None


def test_rfc7239_forwarded():
    assert parse_forwarded('for=192.0.2.60;proto=http;by=203.0.113.43') == [
        ipaddress.ip_address("192.0.2.60")]
    assert parse_forwarded('for="[2001:db8:cafe::17]:4711", For=198.51.100.1') == [
        ipaddress.ip_address("2001:db8:cafe::17"), ipaddress.ip_address("198.51.100.1")]
    assert parse_forwarded('for=unknown, for="_hidden", proto=https') == [None, None, None]
    assert parse_forwarded('for="a\\"b,c";by=x') == [None]  # a comma inside quotes
    for bad in ("for", "for=", "for=1.2.3.4;;", "for=1.2.3.4 x", 'for="x', "for=1;for=2", ";"):
        with pytest.raises(ValueError):
            parse_forwarded(bad)
    assert who("127.0.0.2", 'for=192.0.2.1, for="[::1]";proto=https', "forwarded") == (
        "::1", "::1")
    assert who("127.0.0.2", "for=198.51.100.9, for=127.0.0.2", "forwarded")[0] == "198.51.100.9"
    # The header not configured is not read, even from a proxy.
    assert who("127.0.0.2", "for=198.51.100.9", "x-forwarded-for")[1] is None
    assert parse_node("[::1") is None and parse_node("1.2.3.4:x") is None
    assert parse_node("[1.2.3.4]") is None


def test_web_proxy_config():
    web = web_config(listen=["tcp:8080:interface=127.0.0.1"], trusted_proxies=["127.0.0.1/32"],
                     forwarded_header="Forwarded", tls_terminated_by_proxy=True)
    assert web.trusted_proxies == (ipaddress.ip_network("127.0.0.1/32"),)
    assert web.forwarded_header == "forwarded" and web.tls_terminated_by_proxy
    assert web_config().forwarded_header == "x-forwarded-for"
    with pytest.raises(ConfigError, match=r"\[web\].trusted_proxies: 'x' is not an IP network"):
        web_config(trusted_proxies=["x"])
    with pytest.raises(ConfigError, match=r"\[web\].forwarded_header: 'x-real-ip' is not one"):
        web_config(forwarded_header="X-Real-IP")
    with pytest.raises(ConfigError, match=r"\[web\].tls_terminated_by_proxy: .*trusted_proxies"):
        web_config(tls_terminated_by_proxy=True)


# -- metrics: bounded label sets --------------------------------------------------------------


def series(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_metrics_labels_are_bounded_whatever_the_events():
    m = Metrics(DirectoryStats(), None)

    def events(n: int) -> None:
        for i in range(n):
            token = f"{i:08x}"
            m.observe_audit({"outcome": "accept", "front_end": "ldap", "user": f"user{i}",
                             "token": token, "reason": "password+OTP accepted"})
            m.observe_audit({"outcome": "reject", "front_end": f"weird{i}", "user": f"u{i}",
                             "reason": f"wrong OTP for {token}"})
            m.observe_audit({"outcome": f"helpdesk-revoke {token}", "front_end": "web",
                             "user": f"user{i}", "token": token, "reason": "by desk: revoke"})
            m.observe_audit({"outcome": "helpdesk-revoke", "front_end": "web", "token": token,
                             "reason": f"by desk: revoke {token}"})
            m.observe_audit({"outcome": "reject", "front_end": "radius",
                             "reason": f"free text {i} (NAS n{i})"})

    events(3)
    few = len(series(m.text().decode()))
    events(500)
    text = m.text().decode()
    assert len(series(text)) == few, "series grew with the number of tokens/users"
    assert "00000001" not in text and "user1" not in text and "weird" not in text
    assert 'otpgate_web_actions_total{action="helpdesk-revoke"} 503.0' in text
    assert 'otpgate_web_actions_total{action="other"} 503.0' in text
    assert 'otpgate_rejections_total{front_end="other",reason="wrong_otp"} 503.0' in text
    assert 'otpgate_rejections_total{front_end="radius",reason="other"} 503.0' in text


def test_reason_classes():
    from otpgate.web.metrics import reason_class

    assert reason_class("wrong OTP (now locked out)") == "wrong_otp"
    assert reason_class("locked out") == "locked_out"
    assert reason_class("wrong password: 80090308: data 52e") == "wrong_password"
    assert reason_class("no token enrolled") == "no_token"
    assert reason_class("UserNotFound: no entry for bob") == "unknown_user"
    assert reason_class("directory unavailable: timeout") == "directory"
    assert reason_class("web sign-in rate limit") == "rate_limited"
    assert reason_class("no one-time code (password-only enrollment does not apply here)") == (
        "otp_required")
    assert reason_class(None) == "other"
    assert reason_class("OTP already used") == "replayed"
    assert reason_class("TamperedState: use state of tokens that are not stored") == "tampered"
    assert reason_class("StateNotMigrated: run `otpgate migrate-state`") == "tampered"
    assert reason_class("expired") == "account"
    assert reason_class("wrong app password (now locked out)") == "app_password"
    assert reason_class("app passwords locked out") == "app_password"
    assert reason_class("app password 'mail' expired") == "app_password"
    assert reason_class("app password 'mail' out of scope") == "app_password"


# -- the request body cap (bodycap.py) --------------------------------------------------------




class Recorder(resource.Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[bytes] = []

    def render(self, request):  # type: ignore[no-untyped-def]
        self.bodies.append(request.content.read())
        return b"ok"


def channel(site: server.Site) -> tuple[object, StringTransport]:
    proto = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1234))
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport


def test_body_cap_refuses_a_large_content_length_before_the_body():
    leaf = Recorder()
    site = server.Site(leaf, requestFactory=CappedRequest)
    proto, transport = channel(site)
    proto.dataReceived(b"POST /signin HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                       b"Content-Length: 100000000\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 413 ")
    assert b"100 Continue" not in transport.value()
    assert transport.disconnecting
    proto.dataReceived(b"x" * 65536)  # whatever still arrives is not read or stored
    assert leaf.bodies == []


def test_body_cap_stops_a_chunked_body_at_the_cap():
    leaf = Recorder()
    site = server.Site(leaf, requestFactory=CappedRequest)
    proto, transport = channel(site)
    proto.dataReceived(b"POST /signin HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"1000\r\n" + b"a" * 0x1000 + b"\r\n"
    for _ in range(MAX_BODY // 0x1000):
        proto.dataReceived(chunk)
    assert transport.value() == b"" and not transport.disconnecting
    proto.dataReceived(chunk)  # over the cap
    assert transport.value().startswith(b"HTTP/1.1 413 ") and transport.disconnecting
    proto.dataReceived(chunk * 4 + b"0\r\n\r\n")
    assert leaf.bodies == []


def test_body_cap_passes_small_bodies():
    leaf = Recorder()
    site = server.Site(leaf, requestFactory=CappedRequest)
    for head in (b"Content-Length: 5\r\n\r\nhello",
                 b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"):
        proto, transport = channel(site)
        proto.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\n" + head)
        assert transport.value().startswith(b"HTTP/1.1 200 "), transport.value()
    body = b"b" * MAX_BODY
    proto, transport = channel(site)
    proto.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
                       + body)
    assert transport.value().startswith(b"HTTP/1.1 200 ")
    assert leaf.bodies == [b"hello", b"hello", body]


def test_the_mail_action_is_offered_only_with_mail_servers_and_never_for_protected_users():
    state = OtpState()
    plain = render.helpdesk_user("uid=a,dc=x", state, "tok", 0.0, False).html
    assert "hd-scratch" in plain and "hd-scratch-mail" not in plain
    mail = render.helpdesk_user("uid=a,dc=x", state, "tok", 0.0, False, mail=True).html
    assert 'action="/helpdesk/scratch-mail"' in mail and 'id="hd-scratch-mail"' in mail
    protected = render.helpdesk_user(
        "uid=a,dc=x", state, "tok", 0.0, False, protected="an administrator", mail=True
    ).html
    assert "hd-scratch-mail" not in protected
