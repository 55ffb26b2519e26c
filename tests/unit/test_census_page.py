"""The help desk's census page without a server: its HTML (filters, counts, rows, the
suggestion, escaping of what clients sent) from in-memory events, the cache on a fake clock
(one scan at a time, kept for a while, "scanning…" meanwhile), and the handler's answers
(sign-in, help desk only, no audit file)."""

from __future__ import annotations

import gzip
import json
import re
from datetime import date
from html import unescape
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock

from otpgate.auditconfig import LoggingConfig
from otpgate.auth.appconfig import AppPasswordConfig
from otpgate.census import FILTERS, NO_TOKEN, READY, SERVICE, Census
from otpgate.web import render_census
from otpgate.web.censuspage import (
    CACHE_SECONDS,
    COST_FACTOR,
    WAIT_SECONDS,
    CensusCache,
    CensusPages,
    Progress,
    Snapshot,
    scan_trail,
    snapshot,
)

DAY = 1_765_065_600.0  # 2025-12-07T00:00:00Z
EVIL_USER = "<script>alert(1)</script>"
EVIL_DN = 'uid="><img src=x onerror=alert(2)>,ou=people,dc=example,dc=org'
EVIL_CLIENT = "<svg onload=alert(3)>"


def event(t: float, user: str, dn: str | None, client: str, **more: Any) -> dict[str, Any]:
    base = {"time": t, "event": "auth", "outcome": "accept", "front_end": "ldap", "user": user,
            "dn": dn, "client": client, "token": None, "reason": "ok", "policy": "otp",
            "enrolled": False}
    return {**base, **more}


def events() -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    svc = "uid=svc-backup,ou=services,dc=example,dc=org"
    for i in range(40):  # a job every 5 minutes, around the clock, from one host
        found.append(event(DAY + 300 * i, "svc-backup", svc, "192.0.2.10", channel="apps"))
    alice = "uid=alice,ou=people,dc=example,dc=org"
    for i, hour in enumerate((8, 9, 13, 16)):  # office hours, a code each time
        found.append(event(DAY + hour * 3600 + i, "alice", alice, f"198.51.100.{i}",
                           token="t1", enrolled=True, front_end="radius"))
    bob = "uid=bob,ou=people,dc=example,dc=org"
    for i in range(3):
        found.append(event(DAY + 10 * 3600 + i * 600, "bob", bob, "198.51.100.9",
                           report_only=True, reason="report-only: would refuse: no token enrolled"))
    for i in range(2):
        found.append(event(DAY + 11 * 3600 + i, EVIL_USER, EVIL_DN, EVIL_CLIENT,
                           outcome="accept" if i else "reject", reason="bad"))
    return found


def census() -> Census:
    made = Census()
    for e in events():
        made.feed(e)
    return made


def snap(computed_at: float = DAY + 86400) -> Snapshot:
    made = snapshot(census(), (("/var/log/otpgate/audit.log.1.gz", 2000),
                               ("/var/log/otpgate/audit.log", 5000)), 0.25, date(2025, 12, 8))
    return Snapshot(**{**made.__dict__, "computed_at": computed_at})


def rows_of(html: str) -> list[str]:
    return [unescape(a) for a in re.findall(r'<tr data-account="([^"]*)"', html)]


# -- rendering ----------------------------------------------------------------------------------


def test_the_page_lists_every_account_with_its_verdict_and_the_filters_with_counts():
    s = snap()
    html = render_census.census_page(s, "all", s.computed_at + 12)
    rows = rows_of(html)
    assert rows[0] == "uid=svc-backup,ou=services,dc=example,dc=org"
    assert len(rows) == 4 and s.counts is not None and s.counts["all"] == 4
    assert f'data-verdict="{SERVICE}"' in html and f'data-verdict="{READY}"' in html
    assert f'data-verdict="{NO_TOKEN}"' in html
    for key, title in render_census.FILTER_TITLES:
        link = re.search(rf'<a id="filter-{key}" href="([^"]+)"[^>]*>([^<]+)<span class="count">'
                         r"\((\d+)\)", html)
        assert link is not None, key
        assert link.group(2).strip() == title
        expected = 4 if key == "all" else sum(1 for r in s.rows if FILTERS[key](r))
        assert int(link.group(3)) == expected
        assert link.group(1) == ("/helpdesk/census" if key == "all"
                                 else f"/helpdesk/census?only={key}")
    assert 'id="filter-all" href="/helpdesk/census" aria-current="page"' in html
    assert "2 file(s), 7.0 kB: audit.log.1.gz, audit.log." in html
    assert "Computed at <span id=\"census-when\">2025-12-08 00:00:00 UTC</span> (12 s ago" in html
    # The suggestion: the service, scoped to its address, in a <pre>.
    pre = re.search(r'<pre id="census-suggestion">(.*?)</pre>', html, re.S)
    assert pre is not None
    assert "svc-backup" in pre.group(1) and "192.0.2.10/32" in pre.group(1)
    assert "alice" not in pre.group(1)


def test_each_filter_shows_its_rows_only():
    s = snap()
    for key, keep in FILTERS.items():
        html = render_census.census_page(s, key, s.computed_at)
        assert rows_of(html) == [r.account for r in s.rows if keep(r)], key
        assert f'id="filter-{key}" href="/helpdesk/census?only={key}" aria-current="page"' in html
        assert ('id="census-suggestion"' in html) == (key == "service")
    html = render_census.census_page(s, "service", s.computed_at)
    assert rows_of(html) == ["uid=svc-backup,ou=services,dc=example,dc=org"]
    refuse = rows_of(render_census.census_page(s, "would-refuse", s.computed_at))
    assert "uid=bob,ou=people,dc=example,dc=org" in refuse
    assert "uid=alice,ou=people,dc=example,dc=org" not in refuse


def test_names_dns_and_addresses_from_clients_are_text_never_markup():
    s = snap()
    for only in ("all", "no-token", "would-refuse"):
        html = render_census.census_page(s, only, s.computed_at)
        assert "<script" not in html and "<img" not in html and "<svg" not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
        assert "uid=&quot;&gt;&lt;img src=x onerror=alert(2)&gt;" in html
        assert "&lt;svg onload=alert(3)&gt;" in html
    # The suggestion too, should a service's name carry markup.
    assert "<b>" not in render_census.suggestion_block('dn = "uid=<b>x</b>"')
    # The whole page, as the portal sends it.
    from otpgate.web import render

    page = render.page("Census", render_census.census_page(s, "all", 0), EVIL_USER, "c", True)
    text = page.decode()
    assert "<script>alert" not in text and 'id="nav-census" href="/helpdesk/census"' in text


def test_no_match_many_rows_scanning_and_error_pages():
    s = snap()
    empty = Snapshot(counts={"all": 0}, computed_at=DAY)
    assert 'id="census-empty"' in render_census.census_page(empty, "all", DAY)
    assert 'id="census-no-suggestion"' in render_census.census_page(empty, "all", DAY)
    many = s.rows * (render_census.MAX_ROWS // len(s.rows) + 1)
    html = render_census.census_table(many)
    assert len(rows_of(html)) == render_census.MAX_ROWS
    assert f"and {len(many) - render_census.MAX_ROWS} more accounts" in html
    waiting = render_census.scanning(5_000_000, 20_000_000)
    assert 'data-reload="2"' in waiting and "5.0 MB of 20.0 MB" in waiting
    broken = Snapshot(error="The audit trail cannot be read: <denied>")
    html = render_census.census_page(broken, "all", DAY)
    assert "&lt;denied&gt;" in html and "<denied>" not in html
    assert "[logging] file</code> is not set" in render_census.no_audit_file()


# -- the cache on a fake clock ------------------------------------------------------------------


class Threads:
    """Stands in for the worker process: the scan runs when the test says so."""

    def __init__(self) -> None:
        self.pending: list[tuple[Any, defer.Deferred[Snapshot]]] = []

    def __call__(self, log_file: Path, today: float, progress: Any) -> defer.Deferred[Snapshot]:
        d: defer.Deferred[Snapshot] = defer.Deferred()
        self.pending.append((lambda: scan_trail(log_file, today, progress), d))
        return d

    def finish(self, result: Snapshot | None = None) -> None:
        work, d = self.pending.pop(0)
        d.callback(result if result is not None else work())


def view(cache: CensusCache, wait: float = WAIT_SECONDS) -> defer.Deferred[Snapshot | None]:
    return defer.ensureDeferred(cache.view(wait))


def test_the_first_view_waits_a_little_then_shows_scanning_and_one_scan_runs_at_a_time(
    tmp_path: Path,
):
    clock, threads = Clock(), Threads()
    cache = CensusCache(clock, threads, tmp_path / "audit.log")
    first = view(cache)
    second = view(cache)
    assert cache.scans == 1 and len(threads.pending) == 1 and cache.scanning
    assert not first.called
    clock.advance(WAIT_SECONDS)
    assert first.result is None and second.result is None  # "scanning…"
    third = view(cache, wait=0)
    assert third.result is None and cache.scans == 1
    clock.advance(5)
    threads.finish(snap(0))
    assert not cache.scanning and cache.latest is not None
    assert cache.latest.computed_at == WAIT_SECONDS + 5  # the portal's clock, at the end
    assert view(cache).result is cache.latest


def test_a_view_within_the_wait_gets_the_result_at_once():
    clock, threads = Clock(), Threads()
    cache = CensusCache(clock, threads, Path("/nonexistent/audit.log"))
    waiting = view(cache)
    clock.advance(0.5)
    threads.finish(snap())
    assert isinstance(waiting.result, Snapshot)
    clock.advance(WAIT_SECONDS)  # the timer was cancelled: nothing fires twice
    assert clock.getDelayedCalls() == []


def test_a_result_is_kept_then_the_next_scan_runs_while_the_old_one_is_shown():
    clock, threads = Clock(), Threads()
    cache = CensusCache(clock, threads, Path("/x/audit.log"))
    view(cache)
    threads.finish(snap())
    old = cache.latest
    clock.advance(CACHE_SECONDS - 1)
    assert view(cache).result is old and cache.scans == 1
    clock.advance(1)
    assert view(cache).result is old and cache.scans == 2 and cache.scanning
    assert view(cache).result is old and cache.scans == 2  # still one at a time
    threads.finish(snap())
    assert cache.latest is not old and not cache.scanning


def test_a_slow_scan_is_repeated_less_often():
    clock, threads = Clock(), Threads()
    cache = CensusCache(clock, threads, Path("/x/audit.log"))
    view(cache)
    threads.finish(Snapshot(**{**snap().__dict__, "seconds": 30.0}))
    clock.advance(CACHE_SECONDS * 2)
    view(cache)
    assert cache.scans == 1
    clock.advance(30 * COST_FACTOR - CACHE_SECONDS * 2)
    view(cache)
    assert cache.scans == 2


def test_a_failed_scan_is_an_error_page_and_is_tried_again_later():
    clock, threads = Clock(), Threads()
    cache = CensusCache(clock, threads, Path("/x/audit.log"))
    first = view(cache)
    _work, d = threads.pending.pop(0)
    d.errback(RuntimeError("boom"))
    assert first.result.error is not None and "log says why" in first.result.error
    assert not cache.scanning
    clock.advance(CACHE_SECONDS)
    view(cache)
    assert cache.scans == 2


def test_scan_trail_reads_the_file_and_its_rotated_siblings(tmp_path: Path):
    log = tmp_path / "audit.log"
    lines = [json.dumps(e) for e in events()]
    with gzip.open(tmp_path / "audit.log.1.gz", "wt") as f:
        f.write("\n".join(lines[:20]) + "\n")
    log.write_text("\n".join(lines[20:]) + "\n{not json\n")
    progress = Progress()
    found = scan_trail(log, DAY, progress)
    assert found.error is None and found.events == len(lines)
    assert [Path(p).name for p, _size in found.files] == ["audit.log.1.gz", "audit.log"]
    assert progress.total == sum(size for _p, size in found.files) > 0
    assert found.counts is not None and found.counts["service"] == 1
    missing = scan_trail(tmp_path / "other.log", DAY, Progress())
    assert missing.error is not None and "does not exist yet" in missing.error


# -- the handler --------------------------------------------------------------------------------


class Audit:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def record(self, **event: Any) -> None:
        self.events.append(event)


def pages(log_file: Path | None, threads: Any = None) -> CensusPages:
    made = CensusPages.__new__(CensusPages)
    clock = Clock()
    made.clock = clock
    made.config = SimpleNamespace(  # type: ignore[assignment]
        logging=LoggingConfig(file=log_file), app_passwords=AppPasswordConfig()
    )
    made.gateway = SimpleNamespace(reactor=clock, audit=Audit())
    if threads is not None:
        made.__dict__["_census_cache"] = CensusCache(clock, threads, log_file or Path("/x"))
    return made


def session(helpdesk: bool = True) -> Any:
    return SimpleNamespace(name="desk", dn="uid=desk,dc=x", csrf="c", helpdesk=helpdesk)


def get(p: CensusPages, only: str = "", who: Any = None) -> Any:
    request = SimpleNamespace(args={b"only": [only.encode()]} if only else {})
    d = defer.ensureDeferred(p.get_census(request, who, "127.0.0.1"))
    p.clock.advance(WAIT_SECONDS)
    return d.result


def test_the_handler_signs_in_refuses_non_members_and_says_when_there_is_no_file(tmp_path: Path):
    p = pages(tmp_path / "audit.log")
    assert get(p).status == 303 and get(p).location == "/signin"
    refused = get(p, who=session(helpdesk=False))
    assert refused.status == 403 and b"Help desk only" in refused.body
    none = get(pages(None), who=session())
    assert none.status == 200 and b'id="census-no-file"' in none.body


def test_the_handler_shows_scanning_then_the_filtered_census_and_audits_each_view(
    tmp_path: Path,
):
    threads = Threads()
    p = pages(tmp_path / "audit.log", threads)
    first = get(p, "service", session())
    assert first.status == 200 and b'id="census-scanning"' in first.body
    threads.finish(snap())
    page = get(p, "service", session()).body.decode()
    assert rows_of(page) == ["uid=svc-backup,ou=services,dc=example,dc=org"]
    page = get(p, "nonsense", session()).body.decode()  # an unknown filter: all
    assert len(rows_of(page)) == 4
    audit = p.gateway.audit.events
    assert [e["reason"] for e in audit] == [
        "looked at the census (service)", "looked at the census (service)",
        "looked at the census (all)"]
    assert all(e["outcome"] == "view" and e["front_end"] == "web" for e in audit)


def test_the_worker_answer_round_trips_and_keeps_only_what_a_view_shows(tmp_path: Path):
    """The child process's JSON is the same Snapshot (rows a view can show, every count);
    the page says how many more there are."""
    from otpgate.web import censusworker

    s = snap()
    back = censusworker.decode(censusworker.encode(s))
    assert back == s
    many = tuple(s.rows) * 700
    kept = censusworker.shown_rows(many, 1000)
    assert len(kept) < len(many) and kept[:1000] == many[:1000]
    trimmed = Snapshot(**{**s.__dict__, "rows": kept, "counts": {**(s.counts or {}), "all": len(many)}})
    page = render_census.census_page(trimmed, "all", s.computed_at)
    assert f"… and {len(many) - 1000} more accounts" in page


def test_the_worker_process_scans_a_trail(tmp_path: Path):
    """``python -m otpgate.web.censusworker`` as the portal runs it: JSON out, progress lines
    on standard error."""
    import subprocess
    import sys

    log = tmp_path / "audit.log"
    log.write_text("".join(json.dumps(e) + "\n" for e in events()))
    done = subprocess.run(
        [sys.executable, "-m", "otpgate.web.censusworker", str(log), repr(DAY)],
        capture_output=True, check=True, timeout=60,
    )
    from otpgate.web import censusworker

    found = censusworker.decode(done.stdout.decode())
    assert found.error is None and found.events == len(events()) and found.rows
