"""Prometheus metrics, counted from the audit path and the log with minimal coupling.

``MetricsTap`` wraps the gateway's ``AuditTrail.record`` (every front end's audit events pass
through it, whether they go to a file or the Twisted log) and observes the Twisted log for
compare-and-swap conflicts and RADIUS drop notes.  Its registry is its own: no global state.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from twisted.logger import ILogObserver, LogPublisher, globalLogPublisher
from zope.interface import implementer

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.auth = Counter(
            "otpgate_authentications",
            "Authentications by front end and outcome",
            ["front_end", "outcome"],
            registry=r,
        )
        self.lockouts = Counter("otpgate_lockouts", "Users locked out", registry=r)
        self.directory_errors = Counter(
            "otpgate_directory_errors",
            "Authentications that failed on the directory (unavailable, refused writes)",
            ["kind"],
            registry=r,
        )
        self.cas_retries = Counter(
            "otpgate_cas_retries", "Compare-and-swap conflicts re-read and retried", registry=r
        )
        self.radius_drops = Counter(
            "otpgate_radius_drops_noted",
            "RADIUS drops noted in the log by reason (rate-limited notes: a lower bound)",
            ["reason"],
            registry=r,
        )
        self.directory_latency = Histogram(
            "otpgate_web_directory_seconds",
            "Directory round trips made by the web portal (sign-in, reads, writes)",
            ["operation"],
            registry=r,
        )
        self.admin_actions = Counter(
            "otpgate_web_actions", "Portal actions by kind", ["action"], registry=r
        )
        self.sessions = Gauge("otpgate_web_sessions", "Live portal sessions", registry=r)

    def observe_audit(self, event: dict[str, Any]) -> None:
        outcome = str(event.get("outcome") or "")
        front_end = str(event.get("front_end") or "")
        reason = str(event.get("reason") or "")
        if outcome in ("accept", "reject", "challenge"):
            self.auth.labels(front_end, outcome).inc()
        else:
            self.admin_actions.labels(outcome).inc()
        if "now locked out" in reason:
            self.lockouts.inc()
        if reason.startswith("directory unavailable"):
            self.directory_errors.labels("unavailable").inc()
        elif reason.startswith(("DirectoryError", "ConcurrentUpdate")):
            self.directory_errors.labels(reason.split(":", 1)[0]).inc()

    def observe_log(self, event: dict[str, Any]) -> None:
        namespace = str(event.get("log_namespace") or "")
        fmt = str(event.get("log_format") or "")
        if namespace == "otpgate.directory.store" and fmt.startswith("CAS conflict"):
            self.cas_retries.inc()
        elif namespace.startswith("otpgate.radius") and fmt.startswith("RADIUS packet from"):
            self.radius_drops.labels(str(event.get("what") or "unknown")[:60]).inc()

    @contextmanager
    def timed(self, operation: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            self.directory_latency.labels(operation).observe(time.monotonic() - start)

    def text(self) -> bytes:
        return generate_latest(self.registry)


@implementer(ILogObserver)
class _LogObserver:
    def __init__(self, callback: Callable[[dict[str, Any]], None]) -> None:
        self.callback = callback

    def __call__(self, event: dict[str, Any]) -> None:
        self.callback(event)


class MetricsTap:
    """Attaches ``metrics`` to an AuditTrail and to a log publisher; ``detach`` undoes it."""

    def __init__(
        self, metrics: Metrics, audit: Any, publisher: LogPublisher = globalLogPublisher
    ) -> None:
        self.metrics = metrics
        self.audit = audit
        self.publisher = publisher
        self._original: Callable[..., None] | None = None
        self._observer = _LogObserver(metrics.observe_log)

    def attach(self) -> None:
        if self._original is not None:
            return
        original: Callable[..., None] = self.audit.record
        self._original = original
        observe = self.metrics.observe_audit

        def record(**event: Any) -> None:
            observe(event)
            original(**event)

        # An instance attribute shadows the method: the pipeline holds the same AuditTrail.
        setattr(self.audit, "record", record)  # noqa: B010
        self.publisher.addObserver(self._observer)

    def detach(self) -> None:
        if self._original is None:
            return
        delattr(self.audit, "record")
        self._original = None
        self.publisher.removeObserver(self._observer)
