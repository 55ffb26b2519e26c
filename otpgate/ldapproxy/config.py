"""``[ldap_proxy]``: the LDAP bind proxy's listeners, TLS and limits."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from otpgate.auth.config import check_delimiter
from otpgate.configfile import (
    Network,
    Section,
    in_range,
    is_loopback_host,
    parse_listen,
    path_or_none,
    positive,
)
from otpgate.errors import ConfigError

MAX_BIND_CACHE_SECONDS = 300.0
"""The bind cache accepts a repeated bind without reading the OTP state: a revocation or a
suspension reaches it only when the entry expires, so it may not be kept for long."""


def bind_cache_limit(value: float) -> None:
    if not 0 <= value <= MAX_BIND_CACHE_SECONDS:
        raise ValueError(
            f"must be 0 to {MAX_BIND_CACHE_SECONDS:g} seconds (a revocation or suspension "
            f"reaches a cached bind only when it expires), not {value:g}"
        )


@dataclass(frozen=True)
class ListenerRules:
    """Access rules of one listener (``[ldap_proxy.listener_rules."<listen string>"]``): an
    application behind its own port, used only by some groups."""

    listen: str
    """The listener, exactly as written in ``[ldap_proxy] listen``."""
    name: str = ""
    """Shown in audit reasons (default: the listen string)."""
    allow_groups: tuple[str, ...] = ()
    deny_groups: tuple[str, ...] = ()
    enforce: bool = True
    """False: report-only (``auth/reportonly.py``); default ``[ldap_proxy] enforce``."""


@dataclass(frozen=True)
class LdapProxyConfig:
    listen: tuple[str, ...] = ()
    """Twisted endpoint strings, e.g. "tcp:389:interface=0.0.0.0" or "ssl:636:..."."""
    cert_file: Path | None = None
    key_file: Path | None = None
    min_tls_version: str = "1.2"
    max_pdu_before_bind: int = 256 * 1024
    max_pdu_after_bind: int = 16 * 1024 * 1024
    max_connections: int = 1000
    max_connections_per_client: int = 100
    idle_timeout: float = 300.0
    bind_cache_seconds: float = 0.0
    processes: int = 1
    """Reactor processes serving the listeners (SO_REUSEPORT); more use more cores."""
    require_tls_for_binds: bool = False
    """Binds carrying credentials need TLS (LDAPS or StartTLS) first, else
    confidentialityRequired (13).  The parser makes it true whenever a certificate is set."""
    max_queued_requests: int = 100
    """Requests held while the upstream connects or a bind runs; one more closes the
    connection (so does the byte cap, 1 MiB)."""
    proxy_protocol_from: tuple[Network, ...] = ()
    """Load balancers (addresses or networks) whose connections start with a PROXY v1/v2
    header naming the client (proxyheader.py); from anyone else a header is refused."""
    listener_rules: tuple[ListenerRules, ...] = ()
    """Per-listener access rules (allow/deny groups, enforce), keyed by the listen string."""
    enforce: bool = True
    """False: every listener without its own ``enforce`` is in report-only mode."""

    @property
    def listener_names(self) -> dict[str, str]:
        """The names ``listener_rules`` give their listeners, by listen string."""
        return {r.listen: r.name for r in self.listener_rules if r.name}

    def rules_for(self, listen: str) -> ListenerRules:
        """The rules of the listener ``listen`` (none: anyone may bind through it)."""
        return next(
            (r for r in self.listener_rules if r.listen == listen),
            ListenerRules(listen, enforce=self.enforce),
        )


DEPRECATED_DELIMITER = (
    "[ldap_proxy].otp_delimiter is deprecated: it is a pipeline setting now, "
    "[otp].otp_delimiter (used by every front end); move it there"
)


def deprecated_delimiter(sec: Section) -> str | None:
    """The old ``[ldap_proxy] otp_delimiter``, if the file still sets it."""
    if not sec.given("otp_delimiter"):
        return None
    value = sec.get("otp_delimiter", str, "")
    return sec.check("otp_delimiter", value, check_delimiter)


def parse_ldap_proxy(sec: Section, base: Path) -> LdapProxyConfig:
    cert_file = path_or_none(sec, "cert_file", base)
    key_file = path_or_none(sec, "key_file", base)
    has_cert = cert_file is not None and key_file is not None
    listen = sec.strings("listen")
    if any(e.startswith("ssl:") for e in listen) and not has_cert:
        raise ConfigError(f"{sec.key('listen')}: an ssl: listener needs cert_file and key_file")
    cls = LdapProxyConfig
    enforce = sec.value(cls, "enforce", bool)
    result = LdapProxyConfig(
        listen=listen,
        cert_file=cert_file,
        key_file=key_file,
        min_tls_version=sec.choice("min_tls_version", ("1.2", "1.3"), cls.min_tls_version),
        max_pdu_before_bind=sec.value(cls, "max_pdu_before_bind", int, positive),
        max_pdu_after_bind=sec.value(cls, "max_pdu_after_bind", int, positive),
        max_connections=sec.value(cls, "max_connections", int, positive),
        max_connections_per_client=sec.value(cls, "max_connections_per_client", int, positive),
        idle_timeout=sec.value(cls, "idle_timeout", float, positive),
        bind_cache_seconds=sec.value(cls, "bind_cache_seconds", float, bind_cache_limit),
        processes=_processes(sec, listen),
        require_tls_for_binds=_require_tls_for_binds(sec, listen, has_cert),
        max_queued_requests=sec.value(cls, "max_queued_requests", int, positive),
        proxy_protocol_from=_proxy_protocol_from(sec, listen),
        listener_rules=_listener_rules(sec, listen, enforce),
        enforce=enforce,
    )
    sec.done()
    return result


def _listener_rules(
    sec: Section, listen: tuple[str, ...], enforce: bool
) -> tuple[ListenerRules, ...]:
    """``[ldap_proxy.listener_rules."tcp:10389"]`` tables, one per restricted listener."""
    tables = sec.sub("listener_rules")
    rules = []
    for description in tables.doc:
        if description not in listen:
            raise ConfigError(
                f'{tables.key(description)}: "{description}" is not one of '
                f"{sec.key('listen')} (name the listener exactly as it is written there)"
            )
        table = Section(tables.sub(description).doc, f'{tables.path}."{description}"')
        cls = ListenerRules
        rule = ListenerRules(
            listen=description,
            name=table.value(cls, "name", str),
            allow_groups=table.dns("allow_groups"),
            deny_groups=table.dns("deny_groups"),
            enforce=table.get("enforce", bool, enforce),
        )
        table.done()
        if not (rule.allow_groups or rule.deny_groups or table.given("enforce")):
            raise ConfigError(
                f"{table.key('allow_groups')}: give allow_groups, deny_groups or enforce"
            )
        rules.append(rule)
    tables.done()
    return tuple(rules)


def _require_tls_for_binds(sec: Section, listen: tuple[str, ...], has_cert: bool) -> bool:
    """Default: true with a certificate.  Without one, binds travel in clear text, which is
    only allowed on loopback listeners unless the operator says so explicitly."""
    given = sec.given("require_tls_for_binds")
    explicit = sec.get("require_tls_for_binds", bool, False)
    if not given:
        if has_cert:
            return True
        for description in listen:
            if description.startswith("ssl:"):
                continue
            try:
                local = is_loopback_host(parse_listen(description).interface)
            except ValueError:
                local = False
            if not local:
                raise ConfigError(
                    f"{sec.key('listen')}: {description!r} would take passwords in clear "
                    "text from the network: set cert_file and key_file (binds then need "
                    "StartTLS or LDAPS), listen on a loopback interface, or set "
                    "require_tls_for_binds = false if something else protects the path"
                )
        return False
    if explicit and not has_cert:
        raise ConfigError(
            f"{sec.key('require_tls_for_binds')}: needs cert_file and key_file "
            "(StartTLS/LDAPS to offer)"
        )
    return explicit


def _processes(sec: Section, listen: tuple[str, ...]) -> int:
    processes = sec.value(LdapProxyConfig, "processes", int, in_range(1, 64))
    if processes > 1:
        for description in listen:
            try:
                parse_listen(description)
            except ValueError as exc:
                raise ConfigError(f"{sec.key('listen')}: with processes > 1, {exc}") from exc
    return processes


def _proxy_protocol_from(sec: Section, listen: tuple[str, ...]) -> tuple[Network, ...]:
    """The balancers' networks.  Not every address: any client could then name any address
    (and take the rights of a trusted network).  The listeners must be the simple tcp:/ssl:
    forms, because the header comes before TLS and the gateway adds TLS itself."""
    networks = sec.networks("proxy_protocol_from")
    for network in networks:
        if network.prefixlen == 0:
            raise ConfigError(
                f"{sec.key('proxy_protocol_from')}: {str(network)!r} names every address: "
                "any client could claim any source address; list the load balancers only"
            )
    if networks:
        for description in listen:
            try:
                parse_listen(description)
            except ValueError as exc:
                raise ConfigError(
                    f"{sec.key('proxy_protocol_from')}: with a PROXY protocol listener, {exc}"
                ) from exc
    return networks
