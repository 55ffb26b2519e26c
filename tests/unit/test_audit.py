import json

from twisted.internet.task import Clock

from otpgate.audit import AuditTrail
from otpgate.auditconfig import LoggingConfig

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


def lines(path):
    """Non-empty lines (twistd's JSON log records start with RS, which splitlines splits at)."""
    return [x for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def test_reopen_after_rotation_loses_nothing(tmp_path):
    """logrotate moves the file, SIGHUP reopens it: what was buffered goes to the moved file,
    what comes next to a new one; both together hold every event once."""
    clock = Clock()
    path = tmp_path / "a.log"
    trail = AuditTrail(LoggingConfig(json=True, file=path, flush_seconds=1.0), clock)
    trail.start()
    for _ in range(3):
        trail.record(**EVENT)
    clock.advance(1.0)
    trail.record(**EVENT)  # still in the buffer when the file is moved
    path.rename(tmp_path / "a.log.1")
    trail.record(**EVENT)  # after the move, before the reopen: into the moved file
    trail.reopen()
    trail.record(**EVENT)
    trail.record(**EVENT)
    trail.stop()
    assert len(lines(tmp_path / "a.log.1")) == 5 and len(lines(path)) == 2


def test_reopen_that_fails_keeps_writing_to_the_old_file(tmp_path):
    folder = tmp_path / "logs"
    folder.mkdir()
    trail = AuditTrail(LoggingConfig(json=True, file=folder / "a.log", flush_seconds=0), Clock())
    trail.start()
    trail.record(**EVENT)
    folder.rename(tmp_path / "moved")  # the configured folder is gone: nothing to open
    trail.reopen()
    trail.record(**EVENT)
    trail.stop()
    assert len(lines(tmp_path / "moved" / "a.log")) == 2
    trail.reopen()  # stopped: nothing to reopen


def test_twistd_log_file_reopens_too(tmp_path):
    from twisted.logger import Logger

    from otpgate.logs import close_log_file, open_log_file

    path = tmp_path / "otpgate.log"
    opened = open_log_file(LoggingConfig(json=True, file=path))
    assert opened is not None
    logger = Logger(namespace="otpgate.test")
    logger.info("before {n}", n=1)
    path.rename(tmp_path / "otpgate.log.1")
    logger.info("moved {n}", n=2)
    opened.reopen()
    logger.info("after {n}", n=3)
    close_log_file(opened)
    logger.info("closed {n}", n=4)
    old = [json.loads(x)["log_format"] for x in lines(tmp_path / "otpgate.log.1")]
    new = [json.loads(x)["log_format"] for x in lines(path)]
    assert old == ["before {n}", "moved {n}"] and new == ["after {n}"]
    assert open_log_file(LoggingConfig()) is None


def test_sighup_reopens_in_the_reactor_thread_and_is_restored_on_stop():
    import os
    import signal

    from otpgate.logs import ReopenOnHangup

    class Reactor:
        def __init__(self):
            self.calls = []

        def callFromThread(self, f, *args):
            self.calls.append(f)

    reactor, reopened = Reactor(), []
    before = signal.getsignal(signal.SIGHUP)
    hangup = ReopenOnHangup(reactor, lambda: reopened.append(True))
    hangup.startService()
    try:
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(100):  # the handler runs between two bytecodes of this thread
            if reactor.calls:
                break
        assert len(reactor.calls) == 1 and reopened == []  # nothing done inside the handler
        reactor.calls[0]()
        assert reopened == [True]
    finally:
        hangup.stopService()
    assert signal.getsignal(signal.SIGHUP) == before


def test_attacker_sized_fields_are_bounded_in_every_form(tmp_path):
    """A 200-KB bind name (repeated by the directory's error in the reason) wrote 600 KB of
    log per bind; every field is cut to a bound and says how much was left out."""
    name = "cn=" + "\\," * 100_000
    for json_lines in (True, False):
        path = tmp_path / f"a{json_lines}.log"
        trail = AuditTrail(LoggingConfig(json=json_lines, file=path, flush_seconds=0), Clock())
        seen = []
        trail.observers.append(seen.append)
        trail.start()
        trail.record(**{**EVENT, "user": name, "dn": name, "reason": f"no user {name!r}"})
        trail.stop()
        assert len(path.read_text()) < 4_000
        assert seen[0]["user"].endswith("...(+199747 characters)")
