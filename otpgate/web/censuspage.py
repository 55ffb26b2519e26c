"""The help desk's census page (``/helpdesk/census``): who binds and how, read from the audit
trail (``[logging] file`` and its rotated siblings) by ``otpgate.census``, the code of
``otpgate census``.

The scan reads files of possibly millions of lines: it runs in a child process
(``censusworker.py``: never on the reactor's thread, nor holding the interpreter lock the
reactor needs), one scan at a time, and its result is kept for a while (``CensusCache``):
views within that time are served from memory.  The first view of the
portal waits a moment for the first scan, then shows "scanning…" with its progress; a view
of a result that has aged starts the next scan and is shown the previous result meanwhile.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, TypeVar

from twisted.internet import defer, protocol
from twisted.logger import Logger

import otpgate
from otpgate.census import FILTERS, AccountRow, Census, rotated_siblings, scan
from otpgate.web import censusworker, render, render_census
from otpgate.web.base import Reply
from otpgate.web.helpdesk import HelpDesk
from otpgate.web.sessions import Session

log = Logger()
T = TypeVar("T")

CACHE_SECONDS = 60.0
"""A result is served this long before a view scans again: a census answers "who binds, and
how" over days of traffic, so a minute-old answer is fresh enough, and agents reloading the
page do not make the gateway read its whole audit trail each time."""
COST_FACTOR = 10.0
"""...and at least this many times as long as the scan took: a scan holds a core (in the
worker process), so repeated views spend at most about a tenth of the machine's time on the
census, however large the trail (a 30-second scan is repeated at most every 5 minutes)."""
WAIT_SECONDS = 2.0
"""How long a view waits for the scan it started before answering "scanning…": small
trails are shown at once, a large one never holds the page for long."""
TITLE = "Census"


@dataclass(frozen=True)
class Snapshot:
    """One scan's result, computed by the worker; nothing in it changes afterwards."""

    rows: tuple[AccountRow, ...] = ()
    counts: Mapping[str, int] | None = None
    """Rows per filter: "all" and each key of ``FILTERS``."""
    suggestion: str = ""
    events: int = 0
    malformed: int = 0
    files: tuple[tuple[str, int], ...] = ()
    """(path, bytes on disk) of each file read, oldest first."""
    seconds: float = 0.0
    """How long the scan took (wall time)."""
    computed_at: float = 0.0
    """On the portal's clock, when the scan ended (set on the reactor's thread)."""
    error: str | None = None


class Progress:
    """Bytes read so far of the scan under way (from the worker's progress lines), read by
    views."""

    def __init__(self) -> None:
        self.done = 0
        self.total = 0

    def update(self, done: int, total: int) -> None:
        self.done, self.total = done, total


def snapshot(
    census: Census, files: tuple[tuple[str, int], ...], seconds: float, today: date
) -> Snapshot:
    """What a view shows of ``census`` (rows, counts per filter, the suggestion), computed
    once per scan rather than per view."""
    rows = tuple(census.rows())
    counts = {"all": len(rows)}
    counts.update({name: sum(1 for r in rows if keep(r)) for name, keep in FILTERS.items()})
    suggestion = census.suggestion(today)
    return Snapshot(rows, counts, suggestion, census.events, census.malformed, files, seconds)


def scan_trail(log_file: Path, today_unix: float, progress: Progress) -> Snapshot:
    """The census of ``log_file`` and its rotated siblings (in the worker: blocking I/O)."""
    started = time.monotonic()
    try:
        paths = rotated_siblings(log_file)
        if not paths:
            return Snapshot(error=f"{log_file} does not exist yet: no event was written to it.")
        files = tuple((str(p), p.stat().st_size) for p in paths)
        progress.update(0, sum(size for _p, size in files))
        census = scan(paths, progress=progress.update)
    except OSError as exc:
        return Snapshot(error=f"The audit trail cannot be read: {exc}")
    today = datetime.fromtimestamp(today_unix, UTC).date()
    return snapshot(census, files, time.monotonic() - started, today)


Scanner = Callable[[Path, float, "Progress"], defer.Deferred[Snapshot]]
"""Runs ``scan_trail(log_file, today, progress)`` somewhere, for its Snapshot."""

MAX_ANSWER = 64 * 1024 * 1024
"""Bytes of a worker's answer kept at most (its rows are those a view can show)."""


class _Worker(protocol.ProcessProtocol):
    def __init__(self, progress: Progress, done: defer.Deferred[Snapshot]) -> None:
        self.progress = progress
        self.done = done
        self.out: list[bytes] = []
        self.size = 0
        self.err = b""

    def outReceived(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > MAX_ANSWER:
            self.transport.signalProcess("KILL")  # type: ignore[union-attr]
            return
        self.out.append(data)

    def errReceived(self, data: bytes) -> None:
        self.err = (self.err + data)[-65536:]
        *lines, self.err = self.err.split(b"\n")
        for line in lines:
            words = line.split()
            if len(words) == 3 and words[0] == b"progress":
                with contextlib.suppress(ValueError):
                    self.progress.update(int(words[1]), int(words[2]))
            elif line.strip():
                log.warn("census worker: {line}", line=line.decode("utf-8", "replace")[:500])

    def processEnded(self, reason: Any) -> None:
        code = getattr(reason.value, "exitCode", None)
        if code != 0 or self.size > MAX_ANSWER:
            self.done.errback(RuntimeError(f"the census worker ended with {code}"))
            return
        try:
            self.done.callback(censusworker.decode(b"".join(self.out).decode("utf-8")))
        except (ValueError, TypeError, KeyError) as exc:
            self.done.errback(exc)


def child_process(reactor: Any) -> Scanner:
    """Scans in a child process of the same Python and otpgate (``censusworker.py``)."""

    def run(log_file: Path, today: float, progress: Progress) -> defer.Deferred[Snapshot]:
        done: defer.Deferred[Snapshot] = defer.Deferred()
        package = str(Path(otpgate.__file__).resolve().parents[1])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package, env.get("PYTHONPATH")]))
        args = [sys.executable, "-m", "otpgate.web.censusworker", str(log_file), repr(today)]
        reactor.spawnProcess(_Worker(progress, done), sys.executable, args, env=env)
        return done

    return run


def in_process(log_file: Path, today: float, progress: Progress) -> defer.Deferred[Snapshot]:
    """Scans at once, on the caller's thread (tests)."""
    return defer.maybeDeferred(scan_trail, log_file, today, progress)


class CensusCache:
    """The latest census of one audit trail, at most one scan at a time."""

    def __init__(
        self,
        clock: Any,
        run: Scanner,
        log_file: Path,
        keep_seconds: float = CACHE_SECONDS,
    ) -> None:
        self.clock = clock
        self.run = run
        self.log_file = log_file
        self.keep_seconds = keep_seconds
        self.latest: Snapshot | None = None
        self.progress = Progress()
        self.scans = 0
        """Scans started (tests)."""
        self._running: defer.Deferred[Snapshot] | None = None
        self._waiters: list[defer.Deferred[None]] = []

    @property
    def scanning(self) -> bool:
        return self._running is not None

    def fresh_until(self) -> float:
        latest = self.latest
        if latest is None:
            return float("-inf")
        return latest.computed_at + max(self.keep_seconds, COST_FACTOR * latest.seconds)

    def refresh(self) -> None:
        """Start a scan unless one is under way or the latest result is still fresh."""
        if self._running is not None or self.clock.seconds() < self.fresh_until():
            return
        self.scans += 1
        self.progress = progress = Progress()
        today = float(self.clock.seconds())
        running = self.run(self.log_file, today, progress)
        self._running = running
        running.addErrback(self._failed)
        running.addCallback(self._done)

    def _failed(self, failure: Any) -> Snapshot:
        log.failure("the census of {path} failed", failure, path=self.log_file)
        return Snapshot(error="The census failed; the gateway's log says why.")

    def _done(self, result: Snapshot) -> None:
        self.latest = replace(result, computed_at=float(self.clock.seconds()))
        self._running = None
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            _fire(waiter)

    async def view(self, wait: float = WAIT_SECONDS) -> Snapshot | None:
        """The latest result (None while the first scan is still running after ``wait``
        seconds); starts a scan when the result has aged."""
        self.refresh()
        if self.latest is None and self._running is not None and wait > 0:
            waiter: defer.Deferred[None] = defer.Deferred()
            self._waiters.append(waiter)
            timer = self.clock.callLater(wait, _fire, waiter)
            await waiter
            if timer.active():
                timer.cancel()
        return self.latest


def _fire(waiter: defer.Deferred[None]) -> None:
    if not waiter.called:
        waiter.callback(None)


def _arg(request: Any, name: str) -> str:
    if request is None:
        return ""
    raw = request.args.get(name.encode(), [b""])[0]
    return str(raw.decode("utf-8", "replace").strip())


class CensusPages(HelpDesk):
    @property
    def census_cache(self) -> CensusCache | None:
        """Made at first use (None without ``[logging] file``): a portal nobody asks for
        the census reads nothing."""
        log_file = self.config.logging.file
        if log_file is None:
            return None
        made: CensusCache | None = self.__dict__.get("_census_cache")
        if made is None:
            made = CensusCache(self.clock, child_process(self.gateway.reactor), log_file)
            self.__dict__["_census_cache"] = made
        return made

    async def get_census(self, request: Any, session: Session | None, client: str) -> Reply:
        if session is None:
            return self._redirect("/signin")
        if not session.helpdesk:  # the routing read the membership again already
            return self._page("Refused", render.message("Help desk only."), session, 403)
        only = _arg(request, "only")
        if only not in FILTERS:
            only = "all"
        cache = self.census_cache
        if cache is None:
            return self._page(TITLE, render_census.no_audit_file(), session)
        latest = await cache.view()
        self.audit(session, client, "view", f"looked at the census ({only})")
        if latest is None:
            body = render_census.scanning(cache.progress.done, cache.progress.total)
        else:
            body = render_census.census_page(latest, only, self.now(), cache.scanning)
        return self._page(TITLE, body, session)
