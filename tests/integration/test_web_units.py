"""The web portal's pure parts: sessions, CSRF, rate limits, HTML escaping, [web] config, metrics.

(No server needed; kept here because the portal's tests live under tests/integration.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from otpgate.config import ConfigError, parse_config
from otpgate.directory.state import OtpState
from otpgate.stats import DirectoryStats, RadiusCounters
from otpgate.tokens import Token, TokenType
from otpgate.web import render
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
