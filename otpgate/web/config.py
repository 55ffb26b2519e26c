"""``[web]``: the portal's listeners, sessions, help desk, proxies and /metrics."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from otpgate.configfile import (
    Network,
    Section,
    instant,
    is_loopback_host,
    parse_listen,
    path_or_none,
    positive,
)
from otpgate.errors import ConfigError

WEB_FORWARDED_HEADERS = ("x-forwarded-for", "forwarded")


@dataclass(frozen=True)
class WebConfig:
    """The web portal: self-service enrollment, help desk and /metrics."""

    listen: tuple[str, ...] = ()
    """ "ssl:PORT[:interface=ADDR]" (HTTPS, cert_file/key_file) or "tcp:PORT:interface=LOOPBACK"."""
    cert_file: Path | None = None
    key_file: Path | None = None
    helpdesk_groups: tuple[str, ...] = ()
    """DNs of the directory groups whose members may use the help desk."""
    password_only_enrollment_networks: tuple[Network, ...] = ()
    """Users without any token may sign in with the password alone from these (first enrollment)."""
    password_only_enrollment_until: float | None = None
    """Unix time: before it, users without any token may do so from anywhere (a rollout window)."""
    metrics_networks: tuple[Network, ...] = ()
    """Who may read /metrics (empty: nobody)."""
    session_idle_seconds: float = 900.0
    session_max_seconds: float = 8 * 3600.0
    sign_in_attempts_per_minute: int = 10
    """Per client address, per typed user name and per directory entry."""
    max_sessions: int = 10000
    trusted_proxies: tuple[Network, ...] = ()
    """Reverse proxies whose forwarding header (``forwarded_header``) names the client."""
    forwarded_header: str = "x-forwarded-for"
    """"x-forwarded-for" or "forwarded" (RFC 7239): the one header the proxies append to."""
    tls_terminated_by_proxy: bool = False
    """Browsers reach the portal over HTTPS at the proxy: Secure __Host- cookie and HSTS even
    on a plain loopback listener."""


def _listen(sec: Section, description: str, has_tls: bool) -> str:
    try:
        address = parse_listen(description)
    except ValueError as exc:
        raise ConfigError(f"{sec.key('listen')}: {exc}") from exc
    if address.tls and not has_tls:
        raise ConfigError(f"{sec.key('listen')}: an ssl: listener needs cert_file and key_file")
    if not address.tls and not is_loopback_host(address.interface):
        raise ConfigError(
            f"{sec.key('listen')}: {description!r}: plain HTTP only on loopback "
            "(tcp:PORT:interface=127.0.0.1); use ssl:PORT with cert_file/key_file"
        )
    return description


def parse_web(sec: Section, base: Path) -> WebConfig:
    cert_file = path_or_none(sec, "cert_file", base)
    key_file = path_or_none(sec, "key_file", base)
    if (cert_file is None) != (key_file is None):
        raise ConfigError(f"{sec.key('cert_file')}: give both cert_file and key_file, or neither")
    has_tls = cert_file is not None
    cls = WebConfig
    result = WebConfig(
        listen=tuple(_listen(sec, d, has_tls) for d in sec.strings("listen")),
        cert_file=cert_file,
        key_file=key_file,
        helpdesk_groups=tuple(g.lower() for g in sec.strings("helpdesk_groups")),
        password_only_enrollment_networks=sec.networks("password_only_enrollment_networks"),
        password_only_enrollment_until=instant(sec, "password_only_enrollment_until"),
        metrics_networks=sec.networks("metrics_networks"),
        session_idle_seconds=sec.value(cls, "session_idle_seconds", float, positive),
        session_max_seconds=sec.value(cls, "session_max_seconds", float, positive),
        sign_in_attempts_per_minute=sec.value(cls, "sign_in_attempts_per_minute", int, positive),
        max_sessions=sec.value(cls, "max_sessions", int, positive),
        trusted_proxies=sec.networks("trusted_proxies"),
        forwarded_header=sec.value(cls, "forwarded_header", str).lower(),
        tls_terminated_by_proxy=sec.value(cls, "tls_terminated_by_proxy", bool),
    )
    if result.forwarded_header not in WEB_FORWARDED_HEADERS:
        raise ConfigError(
            f"{sec.key('forwarded_header')}: {result.forwarded_header!r} is not one of "
            f"{', '.join(WEB_FORWARDED_HEADERS)}"
        )
    if result.tls_terminated_by_proxy and not result.trusted_proxies:
        raise ConfigError(
            f"{sec.key('tls_terminated_by_proxy')}: behind a proxy, list it in trusted_proxies "
            "too (otherwise every client is the proxy's address: one shared rate limit, and "
            "metrics_networks or password_only_enrollment_networks that hold it open to all)"
        )
    if result.session_idle_seconds > result.session_max_seconds:
        raise ConfigError(
            f"{sec.key('session_idle_seconds')}: must not be above session_max_seconds"
        )
    sec.done()
    return result
