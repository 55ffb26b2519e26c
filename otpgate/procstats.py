"""/metrics across processes (``[ldap_proxy] processes`` > 1): each extra proxy process
writes its counters to a file; the main process, which serves /metrics, adds them up.

* ``StatsWriter`` (in each worker): every ``STATS_INTERVAL`` seconds, when they changed,
  the worker's directory statistics and audit counts as one JSON document in
  ``<folder>/worker-<index>.json`` (written to a temporary file, then renamed: a reader
  never sees half a file); once more when the worker stops.
* ``PeerStats`` (in the main process): reads those files when /metrics is scraped.  A
  worker that was restarted (another pid in its file) keeps its predecessor's last counts
  in the totals, so that sums only grow (a counter that went backwards would read as a
  reset to Prometheus).

The folder is the main process's private temporary directory (0700), passed to the
workers on their command line, removed when the main process stops.  Why files and not
Prometheus's own multi-process mode, or a port per process: docs/DECISIONS.md.
"""

from __future__ import annotations

import json
import os
import shutil
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
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as exc:  # the main process is gone (its folder with it): nobody reads
            log.debug("worker counters not written to {path}: {error}", path=self.path, error=exc)
            return
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
            if path.stat().st_size > MAX_STATS_BYTES:
                raise ValueError("too large")
            doc = json.loads(path.read_text(encoding="utf-8"))
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


class StatsFolder(service.Service):
    """Removes the workers' counter folder when the main process stops."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def stopService(self) -> Any:
        service.Service.stopService(self)
        shutil.rmtree(self.folder, ignore_errors=True)
        return None
