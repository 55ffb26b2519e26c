"""The audit trail: one event per authentication (who, from where, which token, outcome, why).

With ``[logging] file`` the events go there as compact lines (JSON with ``json = true``),
buffered and flushed every ``flush_seconds``: twistd's log writes and flushes each event
with its own system call, which cost ~40% of a pass-through bind (py-spy,
bench/ldap_proxy.py).  The file is reopened on SIGHUP, for log rotation (``logs.py``).
Without a file they go to the Twisted log.  No event ever holds a password, seed or OTP:
callers pass only the fields below.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import IO, Any

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from otpgate.auditconfig import LoggingConfig

log = Logger(namespace="otpgate.audit")

FIELDS = ("outcome", "front_end", "user", "dn", "client", "token", "reason")
LIMITS = {"reason": 512}
"""Characters kept of one field (default ``MAX_FIELD``): names, DNs and reasons carry what a
client sent, and a 250-KB bind name must not become megabytes of log (repr and JSON escape
each byte again).  What is cut is counted in the event."""
MAX_FIELD = 256


def bounded(field: str, value: Any) -> Any:
    """``value`` cut to its field's limit, saying how much was left out."""
    limit = LIMITS.get(field, MAX_FIELD)
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]}...(+{len(value) - limit} characters)"
    return value
_TEXT = " ".join(f"{k}={{{k}!r}}" for k in FIELDS)
OPTIONAL = ("login_id", "channel", "where", "policy", "enrolled", "report_only")
"""Fields only some events have, shown after the others when present (RADIUS: the id its
Access-Accept carries as Class, which joins the NAS's accounting records to the login)."""


def _tail(event: dict[str, Any]) -> str:
    return "".join(f" {k}={event[k]!r}" for k in OPTIONAL if k in event)


class AuditTrail:
    def __init__(self, config: LoggingConfig, clock: Any) -> None:
        self.config = config
        self.clock = clock
        self._buffer: list[str] = []
        self._file: IO[str] | None = None
        self._flusher: LoopingCall | None = None
        self.observers: list[Callable[[dict[str, Any]], None]] = []
        """Called with every event (e.g. by /metrics); they must not raise."""
        self._second = -1
        self._stamp = ""

    def start(self) -> None:
        if self.config.file is None or self._file is not None:
            return
        self._file = open(self.config.file, "a", encoding="utf-8")  # noqa: SIM115 - kept open
        if self.config.flush_seconds > 0:
            self._flusher = LoopingCall(self.flush)
            self._flusher.clock = self.clock
            self._flusher.start(self.config.flush_seconds, now=False)

    def reopen(self) -> None:
        """After log rotation moved the file: what is buffered goes to the file as it was,
        what comes next to a new file of the configured name.  If that cannot be opened the
        old file stays in use (no event is dropped) and the failure is logged."""
        if self.config.file is None or self._file is None:
            return
        self.flush()
        try:
            new = open(self.config.file, "a", encoding="utf-8")  # noqa: SIM115 - kept open
        except OSError as exc:
            log.error(
                "cannot reopen the audit file {path}: {error}; still writing to the old one",
                path=self.config.file,
                error=exc,
            )
            return
        old, self._file = self._file, new
        old.close()

    def stop(self) -> None:
        if self._flusher is not None and self._flusher.running:
            self._flusher.stop()
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None

    def record(self, **event: Any) -> None:
        # The fields a client's bytes reach (the name, the DN found for it, the reason that
        # may repeat either); the others are the gateway's own (outcome, front end, token
        # id, a parsed address).  Checked cheaply, cut only when over the limit.
        if (
            len(event.get("user") or "") > MAX_FIELD
            or len(event.get("dn") or "") > MAX_FIELD
            or len(event.get("reason") or "") > LIMITS["reason"]
        ):
            event = {k: bounded(k, v) for k, v in event.items()}
        for observer in self.observers:
            observer(event)
        if self._file is None:
            log.info(
                "auth {outcome} {front_end} user={user!r} dn={dn!r} client={client} "
                "token={token} reason={reason}{tail}",
                **{k: event.get(k) for k in FIELDS},
                tail=_tail(event),
            )
            return
        now = time.time()
        if self.config.json:
            line = json.dumps({"time": round(now, 3), "event": "auth", **event})
        else:
            second = int(now)
            if second != self._second:  # one strftime per second, not per login
                self._second = second
                self._stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ [otpgate.audit] auth ",
                                            time.gmtime(second))
            line = self._stamp + _TEXT.format_map({k: event.get(k) for k in FIELDS}) + _tail(event)
        self._buffer.append(line + "\n")
        if self.config.flush_seconds <= 0 or len(self._buffer) >= 4096:
            self.flush()

    def flush(self) -> None:
        if self._buffer and self._file is not None:
            self._file.write("".join(self._buffer))
            self._file.flush()
        self._buffer.clear()
