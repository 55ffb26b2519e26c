"""Prometheus metrics of one gateway process, served at /metrics.

Two sources, each read the cheapest way: authentications and portal actions are counted
from the audit trail (an observer of ``AuditTrail``: every front end's events pass through
it); directory latency, directory errors, CAS retries and RADIUS packets are the gateway's
own counters (``otpgate.stats``), read when /metrics is scraped.  The registry is this
object's own: no global state.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import accumulate
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from otpgate.stats import LATENCY_BUCKETS, DirectoryStats, RadiusCounters

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
AUTH_OUTCOMES = ("accept", "reject", "challenge")

# Every label value comes from one of these fixed sets (anything else is "other"): a label
# never carries a token id, a user name, a DN, an address or free text, so the number of
# series does not grow with the users, their tokens or what clients send.
FRONT_ENDS = ("ldap", "radius", "radius-chap", "radius-mschapv2", "web", "test-auth")
WEB_ACTIONS = (
    "enroll-start",
    "enroll",
    "enroll-reject",
    "revoke",
    "scratch",
    "signout",
    "refused",
    "view",
    "helpdesk-revoke",
    "helpdesk-reset",
    "helpdesk-unlock",
    "helpdesk-scratch",
    "helpdesk-assign",
)
REASON_CLASSES: tuple[tuple[str, tuple[str, ...]], ...] = (
    # (class, reason prefixes or fragments, checked in this order)
    ("rate_limited", ("rate limit",)),
    ("directory", ("directory unavailable", "DirectoryError", "ConcurrentUpdate")),
    ("tampered", ("TamperedState", "StateNotMigrated", "CodecError", "not an otpgate state")),
    ("unknown_user", ("UserNotFound", "AmbiguousUser")),
    ("wrong_otp", ("wrong OTP", "no valid OTP", "wrong confirmation code")),
    ("replayed", ("already used",)),
    ("locked_out", ("locked out",)),
    ("account", ("expired",)),
    ("no_token", ("no token enrolled", "has a token")),
    ("wrong_password", ("wrong password", "bind refused")),
    ("otp_required", ("no one-time code", "no OTP needed")),
    ("malformed", ("no password", "empty password", "malformed", "unknown, used or expired")),
)


def label(value: object, allowed: tuple[str, ...]) -> str:
    text = str(value or "")
    return text if text in allowed else "other"


def reason_class(reason: object) -> str:
    """A rejection's reason text as one of a few fixed classes (for a label)."""
    text = str(reason or "")
    for name, fragments in REASON_CLASSES:
        if any(f in text for f in fragments):
            return name
    return "other"


class GatewayCollector(Collector):
    """The gateway's counters (``otpgate.stats``) as metric families, at scrape time."""

    def __init__(self, directory: DirectoryStats, radius: RadiusCounters | None) -> None:
        self.directory = directory
        self.radius = radius

    def collect(self) -> Iterator[Any]:
        d = self.directory
        latency = HistogramMetricFamily(
            "otpgate_directory_seconds",
            "The gateway's own directory operations (service account and password binds)",
            labels=["operation"],
        )
        bounds = [repr(b) for b in LATENCY_BUCKETS] + ["+Inf"]
        for operation, histogram in sorted(d.latency.items()):
            cumulative = list(accumulate(histogram.counts))
            latency.add_metric(
                [operation], list(zip(bounds, cumulative, strict=True)), histogram.total
            )
        yield latency
        errors = CounterMetricFamily(
            "otpgate_directory_errors",
            "Directory failures by kind (connect, timeout, connection lost, service bind, "
            "write refused)",
            labels=["kind"],
        )
        for kind, count in sorted(d.errors.items()):
            errors.add_metric([kind], count)
        yield errors
        yield CounterMetricFamily(
            "otpgate_cas_retries",
            "OTP-state writes that lost a compare-and-swap race and were re-read and retried",
            value=d.cas_conflicts,
        )
        if self.radius is None:
            return
        drops = CounterMetricFamily(
            "otpgate_radius_dropped", "RADIUS packets dropped, by reason", labels=["reason"]
        )
        for reason, count in self.radius.drops().items():
            drops.add_metric([reason], count)
        yield drops
        packets = CounterMetricFamily(
            "otpgate_radius_packets", "RADIUS packets by what became of them", labels=["result"]
        )
        for name, count in self.radius.snapshot().items():
            if not name.startswith("dropped_"):
                packets.add_metric([name], count)
        yield packets


class Metrics:
    def __init__(
        self, directory: DirectoryStats | None = None, radius: RadiusCounters | None = None
    ) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.auth = Counter(
            "otpgate_authentications",
            "Authentications by front end and outcome",
            ["front_end", "outcome"],
            registry=r,
        )
        self.rejections = Counter(
            "otpgate_rejections",
            "Refused authentications by front end and reason class "
            "(" + ", ".join(c for c, _ in REASON_CLASSES) + ", other)",
            ["front_end", "reason"],
            registry=r,
        )
        self.lockouts = Counter("otpgate_lockouts", "Users locked out", registry=r)
        self.admin_actions = Counter(
            "otpgate_web_actions", "Portal actions by kind", ["action"], registry=r
        )
        self.sessions = Gauge("otpgate_web_sessions", "Live portal sessions", registry=r)
        r.register(GatewayCollector(directory or DirectoryStats(), radius))

    def observe_audit(self, event: dict[str, Any]) -> None:
        """An AuditTrail observer."""
        outcome = str(event.get("outcome") or "")
        front_end = label(event.get("front_end"), FRONT_ENDS)
        if outcome in AUTH_OUTCOMES:
            self.auth.labels(front_end, outcome).inc()
            if outcome == "reject":
                self.rejections.labels(front_end, reason_class(event.get("reason"))).inc()
        else:
            self.admin_actions.labels(label(outcome, WEB_ACTIONS)).inc()
        if "now locked out" in str(event.get("reason") or ""):
            self.lockouts.inc()

    def text(self) -> bytes:
        return generate_latest(self.registry)
