"""``[logging]``: where the audit trail (``audit.py``) goes.  Kept apart from ``audit.py``
so that reading a config file loads no Twisted (``otpgate code`` and ``check-config`` stay
light)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from otpgate.configfile import Section, non_negative, path_or_none


@dataclass(frozen=True)
class LoggingConfig:
    json: bool = False
    file: Path | None = None
    flush_seconds: float = 1.0
    """Audit events are written to ``file`` at least this often (0: every event at once)."""


def parse_logging(sec: Section, base: Path) -> LoggingConfig:
    result = LoggingConfig(
        json=sec.value(LoggingConfig, "json", bool),
        file=path_or_none(sec, "file", base),
        flush_seconds=sec.value(LoggingConfig, "flush_seconds", float, non_negative),
    )
    sec.done()
    return result
