"""otpgate's own log file (``[logging] file``), text or JSON lines, beside twistd's log.

Every authentication is one event in the ``otpgate.audit`` namespace (who, from where,
which token, outcome, reason); no event ever carries a password, seed or OTP.

Rotation: SIGHUP makes every process reopen the file by its configured name (``LogFile``,
``AuditTrail.reopen``), so ``logrotate`` moves the file and sends SIGHUP in ``postrotate``
(``deploy/logrotate/otpgate``; ``systemctl reload otpgate``).  The main process forwards
the signal to its extra proxy processes; each of them also handles its own.  What was
written before the reopen is in the moved file, what comes after in the new one: nothing
is lost, unlike ``copytruncate``.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from twisted.application import service
from twisted.logger import (
    ILogObserver,
    Logger,
    globalLogPublisher,
    jsonFileLogObserver,
    textFileLogObserver,
)

from otpgate.auditconfig import LoggingConfig

log = Logger(namespace="otpgate.logs")


class LogFile:
    """twistd's events written to the configured file, for as long as it is open."""

    def __init__(self, config: LoggingConfig, path: Path) -> None:
        self.config = config
        self.path = path
        self.file, self.observer = self._open()
        globalLogPublisher.addObserver(self.observer)

    def _open(self) -> tuple[IO[str], ILogObserver]:
        out = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept until close/reopen
        observer = jsonFileLogObserver(out) if self.config.json else textFileLogObserver(out)
        return out, observer

    def reopen(self) -> None:
        """Continue in a file of the configured name (after it was moved away).  If it cannot
        be opened, the old file stays in use and the failure is logged."""
        try:
            out, observer = self._open()
        except OSError as exc:
            log.error("cannot reopen log file {path}: {error}; still writing to the old one",
                      path=self.path, error=exc)
            return
        old_file, old_observer = self.file, self.observer
        globalLogPublisher.addObserver(observer)
        globalLogPublisher.removeObserver(old_observer)
        self.file, self.observer = out, observer
        old_file.close()

    def close(self) -> None:
        globalLogPublisher.removeObserver(self.observer)
        self.file.close()


def open_log_file(config: LoggingConfig) -> LogFile | None:
    """Start writing events to the configured file; returns it to reopen and close later."""
    if config.file is None:
        return None
    return LogFile(config, config.file)


def close_log_file(opened: LogFile | None) -> None:
    if opened is not None:
        opened.close()


class ReopenOnHangup(service.Service):
    """While running, SIGHUP calls ``reopen`` in the reactor thread (never inside the signal
    handler: a write may be under way).  Installed whether or not a file is configured, so
    that a reload (``kill -HUP``) never stops the gateway."""

    def __init__(self, reactor: Any, reopen: Callable[[], None]) -> None:
        self.reactor = reactor
        self.reopen = reopen
        self._previous: Any = None

    def startService(self) -> None:
        service.Service.startService(self)
        self._previous = signal.signal(signal.SIGHUP, self._hangup)

    def stopService(self) -> Any:
        service.Service.stopService(self)
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)
            self._previous = None
        return None

    def _hangup(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self._reopen)

    def _reopen(self) -> None:
        log.info("SIGHUP: reopening log files")
        self.reopen()
