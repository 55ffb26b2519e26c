import json

from twisted.internet.task import Clock

from otpgate.audit import AuditTrail
from otpgate.config import LoggingConfig

EVENT = dict(outcome="reject", front_end="ldap", user="alice", dn="uid=alice", client="10.0.0.1",
             token=None, reason="wrong OTP")


def test_buffered_json_lines_flushed_by_the_clock(tmp_path):
    clock = Clock()
    trail = AuditTrail(LoggingConfig(json=True, file=tmp_path / "a.log", flush_seconds=1.0), clock)
    trail.start()
    trail.record(**EVENT)
    assert (tmp_path / "a.log").read_text() == ""  # buffered
    clock.advance(1.0)
    (line,) = (tmp_path / "a.log").read_text().splitlines()
    doc = json.loads(line)
    assert doc["event"] == "auth" and doc["user"] == "alice" and doc["reason"] == "wrong OTP"
    trail.record(**EVENT)
    trail.stop()  # flushes what is left
    assert len((tmp_path / "a.log").read_text().splitlines()) == 2


def test_text_lines_and_immediate_flush(tmp_path):
    trail = AuditTrail(LoggingConfig(json=False, file=tmp_path / "a.log", flush_seconds=0), Clock())
    trail.start()
    trail.record(**EVENT)
    text = (tmp_path / "a.log").read_text()
    assert "[otpgate.audit] auth outcome='reject'" in text and "user='alice'" in text
    trail.stop()
