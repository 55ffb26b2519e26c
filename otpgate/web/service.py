"""The web portal: self-service enrollment, help desk and /metrics, in the gateway's process.

``web_services(gateway, config, reactor)`` returns the services to add to the top service
(``make_service``); see docs/WEB.md.
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
from twisted.application import internet, service
from twisted.internet import defer, endpoints, ssl
from twisted.web import server

from otpgate.config import Config
from otpgate.configfile import parse_listen
from otpgate.directory.store import InventoryStore
from otpgate.enforcement import ways_in
from otpgate.errors import ConfigError
from otpgate.procstats import PeerStats
from otpgate.vault import Keyring
from otpgate.web.bodycap import CappedRequest
from otpgate.web.metrics import Metrics
from otpgate.web.portal import Portal

__all__ = ["web_services"]

WARM_SECONDS = 2.0
"""When the portal reads the inventory into its index after the start."""


class _AuditObserverService(service.Service):
    """Counts the audit trail's events into the metrics while the gateway runs."""

    def __init__(self, audit: Any, metrics: Metrics) -> None:
        self.audit = audit
        self.metrics = metrics

    def startService(self) -> None:
        service.Service.startService(self)
        self.audit.observers.append(self.metrics.observe_audit)

    def stopService(self) -> Any:
        self.audit.observers.remove(self.metrics.observe_audit)
        return service.Service.stopService(self)


def _tls_options(config: Config) -> Any:
    web = config.web
    if web.cert_file is None or web.key_file is None:
        raise ConfigError("[web].listen: ssl: listeners need cert_file and key_file")
    try:
        pem = web.cert_file.read_bytes() + b"\n" + web.key_file.read_bytes()
        return ssl.PrivateCertificate.loadPEM(pem).options()
    except OSError as exc:
        raise ConfigError(f"[web].cert_file/key_file: cannot read: {exc}") from exc
    except SSL.Error as exc:
        raise ConfigError(
            f"[web].cert_file/key_file: {web.cert_file}, {web.key_file}: not a PEM certificate "
            f"and its private key ({exc})"
        ) from exc


def web_services(
    gateway: Any,
    config: Config,
    reactor: Any,
    keyring: Keyring | None = None,
    peers: PeerStats | None = None,
) -> list[service.IService]:
    """One service per [web] listener (sharing one portal), plus the audit observer.
    ``peers``: the extra proxy processes' counters, added into /metrics."""
    web = config.web
    if not web.listen:
        return []
    radius = gateway.radius_counters if config.radius.listen else None
    proxy = getattr(gateway, "ldap_proxy_counters", None) if config.ldap_proxy.listen else None
    ways = [(w.front_end, w.where, w.enforced) for w in ways_in(config)]
    metrics = Metrics(gateway.directory_stats, radius, peers, proxy, ways)
    inventory = None
    if config.directory.inventory_dn:
        inventory = InventoryStore(
            config.directory, keyring or Keyring.load(config.keyring), gateway.store
        )
    services: list[service.IService] = [_AuditObserverService(gateway.audit, metrics)]
    # HTTPS for browsers: a TLS listener here, or TLS terminated by a reverse proxy in front.
    https = web.tls_terminated_by_proxy or any(parse_listen(d).tls for d in web.listen)
    portal = Portal(gateway, config, reactor, metrics, https=https, inventory=inventory)
    if inventory is not None:  # the inventory pages' index, read in the background
        reactor.callLater(WARM_SECONDS, lambda: defer.ensureDeferred(portal.warm_inventory()))
    # Bodies are capped while they arrive (bodycap.py), never spooled to a temporary file.
    site = server.Site(portal, requestFactory=CappedRequest)
    site.displayTracebacks = False
    for description in web.listen:
        address = parse_listen(description)
        if address.tls:
            endpoint: Any = endpoints.SSL4ServerEndpoint(
                reactor, address.port, _tls_options(config), interface=address.interface
            )
        elif ":" in address.interface:
            endpoint = endpoints.TCP6ServerEndpoint(
                reactor, address.port, interface=address.interface
            )
        else:
            endpoint = endpoints.TCP4ServerEndpoint(
                reactor, address.port, interface=address.interface
            )
        services.append(internet.StreamServerEndpointService(endpoint, site))
    return services
