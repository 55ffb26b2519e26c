"""Reading audit files for the census: the rotated siblings of a log, gzip recognised by its
magic bytes, one line at a time (never a whole file, never an unbounded line), JSON and text
audit lines parsed into the event dicts ``model.Census`` counts.

Lines that are not audit events (twistd's own, interleaved in a text file) are skipped;
lines that look like audit events but cannot be read are counted as malformed.
"""

from __future__ import annotations

import ast
import calendar
import gzip
import io
import json
import re
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Final

from otpgate.census.model import Census

MALFORMED: Final = "malformed"
"""``parse_line``'s answer for a line that looks like an audit event but cannot be read."""

MAX_LINE = 65536
"""Characters read of one line: an audit line is a few hundred (each field is cut at a few
hundred characters); a longer one is not the audit's, and is skipped as malformed."""
PROGRESS_LINES = 65536
"""Lines between two progress reports."""

_GZIP_MAGIC = b"\x1f\x8b"
_DECODER: Any = json.JSONDecoder()
_SCAN_ONCE: Callable[[str, int], tuple[Any, int]] = _DECODER.scan_once
"""json.loads's C scanner, called directly (each line is one value; json.loads would check
its type, match leading and trailing blanks and wrap it, a fifth of the scan's time)."""


class Unreadable(OSError):
    """A file of the scan could not be read (its name and why); ``OSError`` like opening."""
_ROTATED = re.compile(r"\.(?P<n>\d+)(?:\.gz)?|-(?P<date>\d{8,14})(?:\.gz)?")
_TEXT_MARK = "[otpgate.audit] auth "
_PAIR = re.compile(
    r"""\s*(\w+)=('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|None|True|False|-?\d+(?:\.\d+)?)"""
)
_LITERALS: dict[str, Any] = {"None": None, "True": True, "False": False}


def rotated_siblings(path: Path) -> list[Path]:
    """``path``'s rotated files that exist (logrotate's ``.1``, ``.2.gz``..., or dateext's
    ``-YYYYMMDD`` with or without ``.gz``), oldest first, then ``path`` itself if it exists.
    Dated files come before numbered ones (a switch to dateext leaves no numbered file
    newer than the dated ones)."""
    dated: list[tuple[str, Path]] = []
    numbered: list[tuple[int, Path]] = []
    parent = path.parent
    try:
        names = [p.name for p in parent.iterdir()]
    except OSError:
        names = []
    for name in names:
        if not name.startswith(path.name) or name == path.name:
            continue
        match = _ROTATED.fullmatch(name[len(path.name) :])
        if match is None or not (parent / name).is_file():
            continue
        if match["n"] is not None:
            numbered.append((int(match["n"]), parent / name))
        else:
            dated.append((match["date"], parent / name))
    result = [p for _, p in sorted(dated)] + [p for _, p in sorted(numbered, reverse=True)]
    return result + ([path] if path.exists() else [])


def _is_gzip(raw: IO[bytes]) -> bool:
    magic = raw.read(2)
    raw.seek(0)
    return magic == _GZIP_MAGIC


@contextmanager
def _opened(path: Path) -> Iterator[tuple[IO[bytes], IO[str]]]:
    """(the raw file, its text): gzip when the file starts with gzip's magic bytes."""
    with open(path, "rb") as raw:
        binary: Any = gzip.GzipFile(fileobj=raw, mode="rb") if _is_gzip(raw) else raw
        text = io.TextIOWrapper(binary, encoding="utf-8", errors="replace")
        try:
            yield raw, text
        finally:
            text.detach()
            if binary is not raw:
                binary.close()


@contextmanager
def open_lines(path: Path) -> Iterator[IO[str]]:
    """``path`` as text (UTF-8, undecodable bytes replaced), gunzipped if it is gzip."""
    with _opened(path) as (_, text):
        yield text


def _stamp_time(stamp: str) -> float:
    """``2026-12-07T10:00:00Z`` as Unix time (ValueError otherwise)."""
    if len(stamp) != 20 or stamp[4] != "-" or stamp[10] != "T" or stamp[19] != "Z":
        raise ValueError(stamp)
    parts = (stamp[0:4], stamp[5:7], stamp[8:10], stamp[11:13], stamp[14:16], stamp[17:19])
    return float(calendar.timegm((*(int(p) for p in parts), 0, 0, 0)))


def _value(text: str) -> Any:
    if text in _LITERALS:
        return _LITERALS[text]
    if text[0] in "'\"":
        return ast.literal_eval(text) if "\\" in text else text[1:-1]
    return float(text) if "." in text else int(text)


def parse_text(line: str) -> dict[str, Any] | str | None:
    """A text audit line (``... [otpgate.audit] auth outcome='accept' ...``) as an event."""
    at = line.find(_TEXT_MARK)
    if at < 0:
        return None
    try:
        event: dict[str, Any] = {"time": _stamp_time(line[:at].strip()), "event": "auth"}
        pos, end = at + len(_TEXT_MARK), len(line.rstrip())
        while pos < end:
            match = _PAIR.match(line, pos)
            if match is None:
                return MALFORMED
            event[match[1]] = _value(match[2])
            pos = match.end()
    except (ValueError, SyntaxError):
        return MALFORMED
    return event if "outcome" in event else MALFORMED


def parse_line(line: str) -> dict[str, Any] | str | None:
    """One line of an audit file: the event (a dict), None for a line that is no audit event,
    or ``MALFORMED`` for one that looks like an audit event but cannot be read."""
    if line.startswith("{"):
        try:
            event = json.loads(line)
        except ValueError:
            return MALFORMED
        if not isinstance(event, dict):
            return MALFORMED
        return event if event.get("event") == "auth" else None
    if "[otpgate.audit" in line and " auth " in line:
        return parse_text(line)
    return None


def scan(
    paths: Iterable[Path],
    census: Census | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Census:
    """Feed every audit event of ``paths`` (in order) to ``census`` (a new one by default).
    ``progress`` is called now and then with the bytes read so far and the bytes of all
    the files on disk (compressed bytes for gzip).  ``Unreadable`` (an OSError) names a
    file that cannot be read, or a gzip file that is cut short or corrupt."""
    census = census if census is not None else Census()
    files = list(paths)
    total = sum(p.stat().st_size for p in files)
    done = 0
    for path in files:

        def report(at: int, before: int = done) -> None:
            if progress is not None:
                progress(before + at, total)

        try:
            _scan_one(path, census, report)
        except (OSError, EOFError, zlib.error) as exc:  # EOFError: a gzip file cut short
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise Unreadable(f"{path}: {why or type(exc).__name__}") from exc
        done += path.stat().st_size
        if progress is not None:
            progress(done, total)
    return census


def _scan_one(path: Path, census: Census, progress: Callable[[int], None]) -> None:
    feed, scan_once = census.feed, _SCAN_ONCE
    with _opened(path) as (raw, text):
        readline = text.readline
        count = 0
        while line := readline(MAX_LINE):  # lines of at most MAX_LINE characters
            count += 1
            if count % PROGRESS_LINES == 0:
                progress(raw.tell())
            if line[-1:] != "\n" and len(line) == MAX_LINE:
                while (rest := readline(MAX_LINE)) and not rest.endswith("\n"):
                    pass
                census.malformed += 1
                continue
            if line[:1] == "{":
                # JSON lines, the common case: the C scanner without json.loads's wrapping
                try:
                    event, end = scan_once(line, 0)
                except (ValueError, StopIteration):
                    census.malformed += 1
                    continue
                if not isinstance(event, dict) or line[end:].strip():
                    census.malformed += 1
                elif event.get("event") == "auth":
                    feed(event)
                continue
            parsed = parse_line(line)
            if parsed is MALFORMED:
                census.malformed += 1
            elif isinstance(parsed, dict):
                feed(parsed)
