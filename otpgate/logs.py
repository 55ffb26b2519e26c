"""otpgate's own log file (``[logging] file``), text or JSON lines, beside twistd's log.

Every authentication is one event in the ``otpgate.audit`` namespace (who, from where,
which token, outcome, reason); no event ever carries a password, seed or OTP.
"""

from __future__ import annotations

from typing import IO

from twisted.logger import (
    ILogObserver,
    globalLogPublisher,
    jsonFileLogObserver,
    textFileLogObserver,
)

from otpgate.config import LoggingConfig


def open_log_file(config: LoggingConfig) -> tuple[ILogObserver, IO[str]] | None:
    """Start writing events to the configured file; returns (observer, file) to close later."""
    if config.file is None:
        return None
    out = open(config.file, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the service
    observer = jsonFileLogObserver(out) if config.json else textFileLogObserver(out)
    globalLogPublisher.addObserver(observer)
    return observer, out


def close_log_file(opened: tuple[ILogObserver, IO[str]] | None) -> None:
    if opened is not None:
        globalLogPublisher.removeObserver(opened[0])
        opened[1].close()
