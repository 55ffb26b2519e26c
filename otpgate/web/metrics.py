"""Prometheus metrics of a gateway, served at /metrics by the main process.

Two sources, each read the cheapest way: authentications and portal actions are counted
from the audit trail (an observer of ``AuditTrail``: every front end's events pass through
it, counted into ``otpgate.stats.AuthCounts``); directory latency, directory errors, CAS
retries and RADIUS packets are the gateway's own counters (``otpgate.stats``), read when
/metrics is scraped.  With ``[ldap_proxy] processes`` > 1 the extra processes' counters
(``otpgate.procstats.PeerStats``) are added in: every series is the sum over the processes,
and ``otpgate_process_authentications_total{process}`` shows how the logins spread.  The
registry is this object's own: no global state.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from itertools import accumulate
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from otpgate.auth.applogin import APP_PASSWORD
from otpgate.procstats import PeerStats, ProcessTotals
from otpgate.stats import LATENCY_BUCKETS, AuthCounts, DirectoryStats, RadiusCounters

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
    "helpdesk-scratch-mail",
    "helpdesk-assign",
    "helpdesk-suspend",
    "helpdesk-resume",
    "helpdesk-lost",
    "enroll-sent-start",
    "enroll-sent",
    "helpdesk-enroll-sent-start",
    "helpdesk-enroll-sent",
    "helpdesk-inventory-add",
    "helpdesk-inventory-rename",
    "helpdesk-inventory-delete",
    "helpdesk-unassign",
    "helpdesk-import-check",
    "helpdesk-import",
    "claim",
    "claim-reject",
    "resync",
    "resync-reject",
    "rename",
    "pin-set",
    "pin-clear",
    "helpdesk-pin-set",
    "helpdesk-pin-clear",
    "app-password-create",
    "app-password-revoke",
    "helpdesk-app-password-revoke",
)
SEND_CHANNELS = ("email", "sms")
SEND_OUTCOMES = ("sent", "failed", "refused", "limited", "repeat")
REASON_CLASSES: tuple[tuple[str, tuple[str, ...]], ...] = (
    # (class, reason prefixes or fragments, checked in this order)
    ("rate_limited", ("rate limit", "send refused", "budget")),
    ("directory", ("directory unavailable", "DirectoryError", "ConcurrentUpdate")),
    ("tampered", ("TamperedState", "StateNotMigrated", "CodecError", "not an otpgate state")),
    ("unknown_user", ("UserNotFound", "AmbiguousUser")),
    ("not_allowed", ("not allowed on",)),
    ("app_password", ("wrong app password", "app passwords locked out", "app password '")),
    ("wrong_otp", ("wrong OTP", "no valid OTP", "wrong confirmation code", "wrong PIN or OTP",
                   "no valid PIN+OTP")),
    ("replayed", ("already used",)),
    ("locked_out", ("locked out",)),
    ("suspended", ("suspended", "temporary list", "every token expired")),
    ("account", ("expired",)),
    ("no_token", ("no token enrolled", "has a token")),
    ("no_pin", ("no PIN set",)),
    ("wrong_password", ("wrong password", "bind refused")),
    ("otp_required", ("no one-time code", "no OTP needed")),
    ("malformed", ("no password", "empty password", "malformed", "unknown, used or expired")),
    ("not_sent", ("code not sent", "no code sent")),
)


def _counters(
    name: str, doc: str, labels: list[str], counts: Iterable[tuple[Any, int]]
) -> CounterMetricFamily:
    """A labelled counter family from (label value, or a tuple of them, count) pairs."""
    family = CounterMetricFamily(name, doc, labels=labels)
    for key, count in counts:
        family.add_metric(list(key) if isinstance(key, tuple) else [key], count)
    return family


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


def count_event(counts: AuthCounts, event: dict[str, Any]) -> None:
    """One audit event into ``counts``, by bounded labels only."""
    outcome = str(event.get("outcome") or "")
    front_end = label(event.get("front_end"), FRONT_ENDS)
    if outcome in AUTH_OUTCOMES:
        counts.auth[(front_end, outcome)] += 1
        if event.get("policy") == APP_PASSWORD:
            counts.apps[(front_end, outcome)] += 1
        if outcome == "reject":
            counts.rejections[(front_end, reason_class(event.get("reason")))] += 1
    else:
        counts.web_actions[label(outcome, WEB_ACTIONS)] += 1
    if "now locked out" in str(event.get("reason") or ""):
        counts.lockouts += 1
    send = event.get("send")
    if isinstance(send, dict):
        key = (label(send.get("channel"), SEND_CHANNELS), label(send.get("outcome"), SEND_OUTCOMES))
        counts.sends[key] += 1


class GatewayCollector(Collector):
    """The gateway's counters (``otpgate.stats``) as metric families, at scrape time: this
    process's, plus those of the other processes (``peers``)."""

    def __init__(
        self,
        directory: DirectoryStats,
        radius: RadiusCounters | None,
        counts: AuthCounts,
        peers: PeerStats | None = None,
        ldap_proxy: Counter[str] | None = None,
    ) -> None:
        self.directory = directory
        self.radius = radius
        self.counts = counts
        self.peers = peers
        self.ldap_proxy = ldap_proxy

    def _totals(self) -> tuple[ProcessTotals, dict[str, int]]:
        """The sum over every process, and each process's number of authentications."""
        total = ProcessTotals()
        total.directory.add(self.directory.to_dict())
        total.auth.add(self.counts.to_dict())
        total.ldap_proxy.update(self.ldap_proxy or {})
        per_process = {"main": self.counts.total}
        if self.peers is not None:
            for index, peer in self.peers.read().items():
                total.directory.add(peer.directory.to_dict())
                total.auth.add(peer.auth.to_dict())
                total.ldap_proxy.update(peer.ldap_proxy)
                per_process[str(index)] = peer.auth.total
        return total, per_process

    def collect(self) -> Iterator[Any]:
        total, per_process = self._totals()
        yield from self._auth(total.auth)
        yield _counters(
            "otpgate_process_authentications",
            "Authentications by the process that handled them (main, or the extra LDAP proxy "
            "process's number): how SO_REUSEPORT spreads the logins",
            ["process"],
            per_process.items(),
        )
        yield GaugeMetricFamily(
            "otpgate_processes_reporting",
            "Processes whose counters these metrics include (the main one and every extra "
            "process that has reported)",
            value=1 + (self.peers.reporting if self.peers is not None else 0),
        )
        yield from self._directory(total.directory)
        yield from self._radius()
        if self.ldap_proxy is not None:
            yield _counters(
                "otpgate_ldap_proxy_connection_events",
                "LDAP proxy connections closed or refused, by reason (limits, PROXY header "
                "untrusted/invalid/timeout, malformed, protocol errors...)",
                ["event"],
                sorted(total.ldap_proxy.items()),
            )

    @staticmethod
    def _auth(counts: AuthCounts) -> Iterator[Any]:
        yield _counters(
            "otpgate_authentications",
            "Authentications by front end and outcome",
            ["front_end", "outcome"],
            sorted(counts.auth.items()),
        )
        yield _counters(
            "otpgate_rejections",
            "Refused authentications by front end and reason class "
            "(" + ", ".join(c for c, _ in REASON_CLASSES) + ", other)",
            ["front_end", "reason"],
            sorted(counts.rejections.items()),
        )
        yield _counters(
            "otpgate_app_password_logins",
            "Logins with an app password (audit policy \"app password\"), by front end and "
            "outcome; also counted in otpgate_authentications",
            ["front_end", "outcome"],
            sorted(counts.apps.items()),
        )
        yield CounterMetricFamily("otpgate_lockouts", "Users locked out", value=counts.lockouts)
        yield _counters(
            "otpgate_web_actions", "Portal actions by kind", ["action"],
            sorted(counts.web_actions.items()),
        )
        yield _counters(
            "otpgate_codes_sent",
            "Codes sent by e-mail/SMS, by channel and outcome (sent, failed on every gateway, "
            "refused for the destination, limited by cooldown/hourly/global limits, repeat of "
            "a retransmitted request)",
            ["channel", "outcome"],
            sorted(counts.sends.items()),
        )

    @staticmethod
    def _directory(d: DirectoryStats) -> Iterator[Any]:
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
        yield _counters(
            "otpgate_directory_errors",
            "Directory failures by kind (connect, timeout, connection lost, service bind, "
            "write refused)",
            ["kind"],
            sorted(d.errors.items()),
        )
        yield CounterMetricFamily(
            "otpgate_cas_retries",
            "OTP-state writes that lost a compare-and-swap race and were re-read and retried",
            value=d.cas_conflicts,
        )

    def _radius(self) -> Iterator[Any]:
        if self.radius is None:
            return
        yield _counters(
            "otpgate_radius_dropped", "RADIUS packets dropped, by reason", ["reason"],
            self.radius.drops().items(),
        )
        yield _counters(
            "otpgate_radius_packets", "RADIUS packets by what became of them", ["result"],
            ((n, c) for n, c in self.radius.snapshot().items() if not n.startswith("dropped_")),
        )


class Metrics:
    def __init__(
        self,
        directory: DirectoryStats | None = None,
        radius: RadiusCounters | None = None,
        peers: PeerStats | None = None,
        ldap_proxy: Counter[str] | None = None,
        ways: Iterable[tuple[str, str, bool]] = (),
    ) -> None:
        """``ways``: (front end, listener or NAS, enforced) of every way in."""
        self.registry = CollectorRegistry()
        enforced = Gauge(
            "otpgate_enforced",
            "1 where a second factor is enforced, 0 where the listener or NAS is in "
            "report-only mode (enforce = false: a correct password alone is accepted)",
            ["front_end", "where"],
            registry=self.registry,
        )
        for front_end, where, on in ways:
            enforced.labels(front_end, where).set(1 if on else 0)
        self.counts = AuthCounts()
        """This process's audit events (the extra processes count their own)."""
        self.sessions = Gauge(
            "otpgate_web_sessions", "Live portal sessions", registry=self.registry
        )
        self.registry.register(
            GatewayCollector(
                directory or DirectoryStats(), radius, self.counts, peers, ldap_proxy
            )
        )

    def observe_audit(self, event: dict[str, Any]) -> None:
        """An AuditTrail observer."""
        count_event(self.counts, event)

    def text(self) -> bytes:
        return generate_latest(self.registry)
