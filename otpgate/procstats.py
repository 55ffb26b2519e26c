"""/metrics across processes (``[ldap_proxy] processes`` > 1): each extra proxy process
writes its counters to a file; the main process, which serves /metrics, adds them up.

* ``StatsWriter`` (in each worker): every ``STATS_INTERVAL`` seconds, when they changed,
  the worker's directory statistics and audit counts as one JSON document in
  ``<folder>/worker-<index>.json`` (written to a new temporary file of mode 0600 in that
  folder, created exclusively, then renamed over the file: a reader never sees half a file,
  and a symlink planted at either name is replaced, never followed); once more when the
  worker stops.  Nothing is written unless the folder is a directory (not a symlink) of this
  user that nobody else may enter.
* ``PeerStats`` (in the main process): reads those files when /metrics is scraped (regular
  files only, never through a symlink).  A
  worker that was restarted (another pid in its file) keeps its predecessor's last counts
  in the totals, so that sums only grow (a counter that went backwards would read as a
  reset to Prometheus).

The folder is the main process's private temporary directory (0700), passed to the
workers on their command line, removed when the main process stops.  Why files and not
Prometheus's own multi-process mode, or a port per process: docs/DECISIONS.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.application import service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from otpgate.stats import AuthCounts, DirectoryStats

log = Logger(namespace="otpgate.procstats")

STATS_INTERVAL = 1.0
"""Seconds between two writes of a worker's counters (when they changed)."""
MAX_STATS_BYTES = 1 << 20
"""A larger file is not read (the counters of one process are a few kilobytes)."""


def stats_folder() -> Path:
    """A new private folder for the workers' counter files."""
    return Path(tempfile.mkdtemp(prefix="otpgate-metrics-"))


def worker_file(folder: Path, index: int) -> Path:
    return folder / f"worker-{index}.json"


def private_folder_problem(folder: Path) -> str | None:
    """Why ``folder`` is no place for counter files (anyone else could plant or swap files
    there), or None: it must be a directory itself (not a symlink), owned by this user,
    with no rights for group or others (``stats_folder`` makes it so)."""
    try:
        st = os.lstat(folder)
    except OSError as exc:
        return f"{folder}: {exc.strerror}"
    if not stat.S_ISDIR(st.st_mode):
        return f"{folder} is not a directory"
    if st.st_uid != os.geteuid():
        return f"{folder} belongs to uid {st.st_uid}, not this process's {os.geteuid()}"
    if st.st_mode & 0o077:
        return f"{folder} has mode {stat.S_IMODE(st.st_mode):04o}: others may enter it"
    return None


@dataclass
class ProcessTotals:
    """What one process counts that /metrics sums across processes."""

    directory: DirectoryStats = field(default_factory=DirectoryStats)
    auth: AuthCounts = field(default_factory=AuthCounts)
    ldap_proxy: Counter[str] = field(default_factory=Counter)
    """The LDAP proxy's connection events (refusals by limit, PROXY header, malformed...)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "directory": self.directory.to_dict(),
            "auth": self.auth.to_dict(),
            "ldap_proxy": dict(self.ldap_proxy),
        }

    def add(self, doc: Any) -> None:
        """Add a ``to_dict`` (ValueError if it is not one; nothing is added then)."""
        if not isinstance(doc, dict):
            raise ValueError("expected an object")
        directory, auth = DirectoryStats(), AuthCounts()
        directory.add(doc.get("directory") or {})
        auth.add(doc.get("auth") or {})
        proxy = doc.get("ldap_proxy", {})
        if not isinstance(proxy, dict) or not all(
            isinstance(k, str) and len(k) <= 64 and type(v) is int and v >= 0
            for k, v in proxy.items()
        ):
            raise ValueError("ldap_proxy: expected names and counts")
        if len(proxy) > 64:
            raise ValueError("ldap_proxy: too many names")
        self.directory.add(directory.to_dict())
        self.auth.add(auth.to_dict())
        self.ldap_proxy.update(proxy)


class StatsWriter(service.Service):
    """A worker's counters, written to its file now and then (see the module)."""

    def __init__(
        self,
        path: Path,
        index: int,
        snapshot: Callable[[], dict[str, Any]],
        clock: Any,
        interval: float = STATS_INTERVAL,
    ) -> None:
        self.path = path
        self.index = index
        self.snapshot = snapshot
        self.clock = clock
        self.interval = interval
        self._last = ""
        self._refused: str | None = None
        self._loop: LoopingCall | None = None

    def startService(self) -> None:
        service.Service.startService(self)
        self._loop = LoopingCall(self.write)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=True)

    def stopService(self) -> Any:
        service.Service.stopService(self)
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self.write()
        return None

    def write(self) -> None:
        doc = {"pid": os.getpid(), "index": self.index, "stats": self.snapshot()}
        text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
        if text == self._last:
            return
        problem = private_folder_problem(self.path.parent)
        if problem is not None:
            if os.path.lexists(self.path.parent) and problem != self._refused:
                log.warn("worker counters not written: {problem}", problem=problem)
            # else the main process is gone (its folder with it): nobody reads
            self._refused = problem
            return
        try:
            # mkstemp: a new name, O_CREAT | O_EXCL | O_NOFOLLOW, mode 0600
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as out:
                    out.write(text)
                os.replace(tmp, self.path)  # a symlink at path is replaced, not followed
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as exc:
            log.debug("worker counters not written to {path}: {error}", path=self.path, error=exc)
            return
        self._refused = None
        self._last = text


@dataclass
class _Seen:
    pid: int
    stats: dict[str, Any]


class PeerStats:
    """The workers' counters as the main process reads them (see the module)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._current: dict[int, _Seen] = {}
        self._retired: dict[int, ProcessTotals] = {}
        self._complained: set[str] = set()

    def read(self) -> dict[int, ProcessTotals]:
        """Each worker's totals by its index: its predecessors' last counts plus its own."""
        for path in sorted(self.folder.glob("worker-*.json")):
            found = self._load(path)
            if found is None:
                continue
            index, seen = found
            before = self._current.get(index)
            if before is not None and before.pid != seen.pid:
                retired = self._retired.setdefault(index, ProcessTotals())
                retired.add(before.stats)
            self._current[index] = seen
        totals: dict[int, ProcessTotals] = {}
        for index in sorted({*self._current, *self._retired}):
            total = totals[index] = ProcessTotals()
            if index in self._retired:
                total.add(self._retired[index].to_dict())
            if index in self._current:
                total.add(self._current[index].stats)
        return totals

    @property
    def reporting(self) -> int:
        """Workers whose counters were read at least once."""
        return len(self._current)

    def _load(self, path: Path) -> tuple[int, _Seen] | None:
        try:
            doc = json.loads(_read_regular(path))
            index, pid, stats = doc["index"], doc["pid"], doc["stats"]
            if not isinstance(index, int) or not isinstance(pid, int):
                raise ValueError("index and pid must be integers")
            ProcessTotals().add(stats)  # refuse it whole rather than half
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            if path.name not in self._complained:
                self._complained.add(path.name)
                log.warn("ignoring worker counters {path}: {error}", path=path, error=exc)
            return None
        return index, _Seen(pid, stats)


def _read_regular(path: Path) -> bytes:
    """The bytes of a regular file at ``path`` itself (OSError for a symlink, ValueError for
    anything else or a file over ``MAX_STATS_BYTES``)."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # no FIFO waits
    fd = os.open(path, flags)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
        if st.st_size > MAX_STATS_BYTES:
            raise ValueError("too large")
        data = f.read(MAX_STATS_BYTES + 1)
    if len(data) > MAX_STATS_BYTES:
        raise ValueError("too large")
    return data


class StatsFolder(service.Service):
    """Removes the workers' counter folder when the main process stops."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def stopService(self) -> Any:
        service.Service.stopService(self)
        shutil.rmtree(self.folder, ignore_errors=True)
        return None
