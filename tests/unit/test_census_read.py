"""Reading audit files for the census: JSON and text lines (as ``otpgate.audit`` writes them),
gzip by its magic bytes, the order of rotated files, malformed and over-long lines."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any

import pytest

from otpgate.audit import FIELDS, _tail
from otpgate.census import rotated_siblings, scan
from otpgate.census.read import MALFORMED, MAX_LINE, Unreadable, open_lines, parse_line

T0 = 1796637600.0  # 2026-12-07T10:00:00Z


def json_line(t: float, user: str, **kw: Any) -> str:
    event = {"outcome": "accept", "front_end": "ldap", "user": user, "dn": f"uid={user},dc=x",
             "client": "127.0.0.1", "token": None, "reason": "ok", **kw}  # fmt: skip
    return json.dumps({"time": round(t, 3), "event": "auth", **event}) + "\n"


def text_line(event: dict[str, Any], stamp: str = "2026-12-07T10:00:00Z") -> str:
    """A line as AuditTrail.record writes it without ``json``."""
    body = " ".join(f"{k}={event.get(k)!r}" for k in FIELDS)
    return f"{stamp} [otpgate.audit] auth {body}{_tail(event)}\n"


def test_parse_json_line() -> None:
    event = parse_line(json_line(T0, "bob", channel="tcp:10389", enrolled=True))
    assert isinstance(event, dict)
    assert event["user"] == "bob" and event["time"] == T0 and event["enrolled"] is True
    assert parse_line('{"time": 1, "event": "other"}\n') is None
    assert parse_line('{"time": 1, "event": "auth", "outc\n') == MALFORMED
    assert parse_line("[1, 2]\n") is None


def test_parse_text_line_as_audit_writes_it() -> None:
    event = {
        "outcome": "reject", "front_end": "radius", "user": "o'brien \"x\"\\",
        "dn": "uid=o'brien,dc=x", "client": None, "token": "t-1",
        "reason": "report-only: would refuse: no token enrolled", "channel": "wifi",
        "policy": "otp", "enrolled": False, "report_only": True, "login_id": 7,
    }  # fmt: skip
    parsed = parse_line(text_line(event))
    assert parsed == {"time": T0, "event": "auth", **event}


def test_text_lines_that_are_no_audit_events_are_skipped() -> None:
    assert parse_line("2026-12-07T10:00:00+0000 [-] Log opened.\n") is None
    assert parse_line("2026-12-07T10:00:00Z [otpgate.ldapproxy] listening on tcp:389\n") is None
    assert parse_line("\n") is None
    bad = "2026-12-07T10:00:00Z [otpgate.audit] auth outcome='accept' user=<garbage>\n"
    assert parse_line(bad) == MALFORMED
    assert parse_line("yesterday [otpgate.audit] auth outcome='accept'\n") == MALFORMED
    assert parse_line("2026-12-07T10:00:00Z [otpgate.audit] auth user='a'\n") == MALFORMED


def test_gzip_by_magic_not_by_name(tmp_path: Path) -> None:
    hidden = tmp_path / "audit.log.1"  # compressed although its name says nothing
    hidden.write_bytes(gzip.compress(json_line(T0, "a").encode()))
    named = tmp_path / "audit.log.2.gz"  # plain although its name says .gz
    named.write_text(json_line(T0, "b"))
    with open_lines(hidden) as f:
        assert json.loads(f.read())["user"] == "a"
    with open_lines(named) as f:
        assert json.loads(f.read())["user"] == "b"
    census = scan([hidden, named])
    assert census.events == 2 and census.malformed == 0


def test_undecodable_bytes_are_replaced(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_bytes(json_line(T0, "cafX").encode().replace(b"X", b"\xe9\xff"))
    census = scan([path])
    assert census.events == 1 and census.malformed == 0
    assert census.rows()[0].user == "caf\ufffd\ufffd"


def test_rotated_siblings_oldest_first(tmp_path: Path) -> None:
    live = tmp_path / "audit.log"
    for name in ("audit.log", "audit.log.1", "audit.log.2.gz", "audit.log.10.gz",
                 "audit.log-20261201", "audit.log-20261130.gz", "audit.log.old",
                 "audit.logger", "other.log.1"):  # fmt: skip
        (tmp_path / name).write_text("")
    (tmp_path / "audit.log.3").mkdir()
    names = [p.name for p in rotated_siblings(live)]
    assert names == [
        "audit.log-20261130.gz", "audit.log-20261201", "audit.log.10.gz", "audit.log.2.gz",
        "audit.log.1", "audit.log",
    ]  # fmt: skip
    live.unlink()
    assert rotated_siblings(live)[-1].name == "audit.log.1"


def test_scan_counts_reports_progress_and_skips_noise(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    lines = [json_line(T0 + i, f"u{i % 3}") for i in range(200)]
    lines.insert(50, "2026-12-07T10:00:00+0000 [-] twistd noise\n")
    lines.insert(60, '{"time": 1, "event": "auth", broken\n')
    lines.insert(65, '{"time": 1, "event": "auth", "outcome": "accept", "user": "x"} tail\n')
    lines.insert(66, '{"time": 1, "event": "other"}\n')
    lines.insert(70, "x" * (MAX_LINE * 3) + "\n")  # over-long: skipped, never held whole
    lines.insert(80, text_line({"outcome": "accept", "user": "u9", "dn": None}))
    path.write_text("".join(lines))
    seen: list[tuple[int, int]] = []
    census = scan([path], progress=lambda done, total: seen.append((done, total)))
    assert census.events == 201 and census.malformed == 3
    assert {r.user for r in census.rows()} == {"u0", "u1", "u2", "u9"}
    assert seen[-1] == (path.stat().st_size, path.stat().st_size)


def test_progress_counts_compressed_bytes(tmp_path: Path) -> None:
    path = tmp_path / "audit.log.2.gz"
    data = "".join(json_line(T0 + i, "u") for i in range(200_000)).encode()
    path.write_bytes(gzip.compress(data, 1))
    seen: list[tuple[int, int]] = []
    census = scan([path], progress=lambda done, total: seen.append((done, total)))
    size = os.path.getsize(path)
    assert census.events == 200_000
    assert all(total == size and done <= size for done, total in seen)
    assert len(seen) >= 3 and seen[0][0] < seen[-1][0] == size


def test_truncated_gzip_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.log.2.gz"
    path.write_bytes(gzip.compress(json_line(T0, "a").encode() * 1000)[:-30])
    with pytest.raises(Unreadable, match=r"audit\.log\.2\.gz"):
        scan([path])
