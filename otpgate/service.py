"""Wiring: build the store, the pipeline and the listeners from a Config."""

from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from twisted.application import service
from twisted.internet.error import ProcessExitedAlready
from twisted.logger import Logger
from twisted.runner.procmon import ProcessMonitor

from otpgate import ber
from otpgate.audit import AuditTrail
from otpgate.auth.pipeline import Authenticator
from otpgate.config import Config, auth_settings, membership_groups
from otpgate.directory.connection import LdapConnection, TlsSettings
from otpgate.directory.discovery import confirm_pdc_on, pdc_emulator_url
from otpgate.directory.ldapdata import SCOPE_BASE
from otpgate.directory.pool import ServerPool
from otpgate.directory.replication_guard import ReplicationGuard
from otpgate.directory.state_acl_guard import StateAclGuard
from otpgate.directory.store import OtpStore
from otpgate.dn import same_dn
from otpgate.enforcement import warnings as enforcement_warnings
from otpgate.ldapproxy.factory import ProxyFactory
from otpgate.ldapproxy.listeners import proxy_listeners
from otpgate.logs import LogFile, ReopenOnHangup, close_log_file, open_log_file
from otpgate.outofband.codes import OutOfBandSender
from otpgate.outofband.lowscratch import LowScratchMailer
from otpgate.procstats import PeerStats, StatsFolder, stats_folder
from otpgate.radius.service import radius_services
from otpgate.stats import DirectoryStats, RadiusCounters
from otpgate.vault import Keyring
from otpgate.web.service import web_services

log = Logger()


class Gateway:
    """The core objects of one running gateway."""

    def __init__(self, config: Config, keyring: Keyring, reactor: Any) -> None:
        d = config.directory
        self.config = config
        self.reactor = reactor
        self._pdc_owner = ""
        self.tls = TlsSettings(start_tls=d.start_tls, ca_file=d.ca_file)
        self.directory_stats = DirectoryStats()
        self.radius_counters = RadiusCounters()
        self.ldap_proxy_counters: Counter[str] = Counter()
        """Connection events of every LDAP proxy listener of this process (metrics)."""
        self.read_pool = ServerPool(
            reactor,
            d.urls,
            self.tls,
            d.bind_dn,
            d.bind_password,
            d.timeout,
            stats=self.directory_stats,
        )
        # With write_url (or "discover") OTP state is pinned to that one server and fails closed
        # when it is down; without it, state follows the URLs in order like everything else.
        # With "discover" each write connection is used only while its DC says it holds the
        # PDC emulator role: checked when it opens and every pdc_check_seconds (the role can
        # move while the old holder stays up); a failed check runs discovery again.
        write_urls = (d.write_url,) if d.write_url and d.write_url != "discover" else d.urls
        discover = d.write_url == "discover"
        self.write_pool = ServerPool(
            reactor,
            write_urls,
            self.tls,
            d.bind_dn,
            d.bind_password,
            d.timeout,
            discover=self._discover_pdc if discover else None,
            stats=self.directory_stats,
            verify=self._check_pdc if discover else None,
            recheck=d.pdc_check_seconds if discover else 0.0,
        )
        groups, cautious = membership_groups(config)
        # Unpinned on OpenLDAP: OTP state is refused if the servers replicate multi-provider.
        self.replication_guard = ReplicationGuard(d, self.write_pool, reactor)
        # State in the users' own entries on OpenLDAP: refused unless the access rules prove
        # that users cannot write it.
        self.state_acl_guard = StateAclGuard(d, self.write_pool, reactor)
        self.store = OtpStore(
            d,
            keyring,
            self.read_pool,
            self.write_pool,
            reactor,
            groups,
            cautious,
            self.replication_guard,
            self.state_acl_guard,
            attributes=config.radius.reply_attributes,
        )
        self.audit = AuditTrail(config.logging, reactor)
        delivery = config.delivery
        self.low_scratch_mailer: LowScratchMailer | None = None
        if delivery is not None and delivery.scratch_warning:
            self.low_scratch_mailer = LowScratchMailer(
                reactor, delivery, config.otp.issuer, self.entry_values, self.audit
            )
        self.code_sender: OutOfBandSender | None = None
        if delivery is not None and (delivery.can_mail or delivery.can_sms):
            self.code_sender = OutOfBandSender(
                reactor, delivery, config.otp.issuer, self.entry_values
            )
        self.authenticator = Authenticator(
            auth_settings(config),
            self.store,
            reactor,
            self.audit,
            self.low_scratch_mailer,
            self.code_sender,
        )

    async def _discover_pdc(self) -> list[str]:
        conn = await self.read_pool.connection()
        d = self.config.directory
        pdc = await pdc_emulator_url(conn, d.base_dn, d.urls[0])
        if not self._pdc_owner:
            log.info("OTP state goes to the PDC emulator, {url} ({owner})", url=pdc.url,
                     owner=pdc.owner)
        elif not same_dn(pdc.owner, self._pdc_owner):
            log.warn(
                "the PDC emulator role moved from {old} to {owner}: OTP state goes to {url}",
                old=self._pdc_owner, owner=pdc.owner, url=pdc.url,
            )
        self._pdc_owner = pdc.owner
        return [pdc.url]

    async def _check_pdc(self, conn: LdapConnection) -> None:
        await confirm_pdc_on(conn, self.config.directory.base_dn)

    async def entry_values(self, dn: str, attribute: str) -> list[bytes]:
        """The values of ``attribute`` in the entry ``dn`` itself (read by the service
        account; [] when the entry or the attribute is not there)."""
        conn = await self.read_pool.connection()
        entries = await conn.search(
            dn, ber.filter_present(b"objectClass"), [attribute], scope=SCOPE_BASE
        )
        for entry in entries:
            return list(entry.attributes.get(attribute.lower(), []))
        return []

    async def check_password(self, dn: str, password: bytes) -> tuple[int, str]:
        """A simple bind as the user on a fresh connection (for front ends without one)."""
        conn = await self.read_pool.open_connection(bind=False)
        try:
            return await conn.simple_bind(dn, password)
        finally:
            conn.close()

    def ldap_proxy_factory(self, tls_listener: bool = False, listener: str = "") -> ProxyFactory:
        return ProxyFactory(self, tls_listener=tls_listener, listener=listener)

    def close(self) -> None:
        self.audit.stop()
        self.read_pool.close()
        self.write_pool.close()


class LoggingService(service.MultiService):
    """The top service: owns otpgate's log file for as long as it runs; SIGHUP reopens it
    and the audit file (log rotation), and is passed on to the extra proxy processes."""

    def __init__(self, config: Config, gateway: Gateway | None = None) -> None:
        service.MultiService.__init__(self)
        self.logging = config.logging
        self.gateway = gateway
        self._log_file: LogFile | None = None
        self.workers: ProcessMonitor | None = None
        """Set by make_service when there are extra proxy processes."""

    def reopen_logs(self) -> None:
        """After log rotation: this process's files, then the workers' (by SIGHUP)."""
        if self._log_file is not None:
            self._log_file.reopen()
        if self.gateway is not None:
            self.gateway.audit.reopen()
        if self.workers is not None:
            for name, protocol in sorted(self.workers.protocols.items()):
                transport = protocol.transport
                try:
                    if transport is not None:
                        transport.signalProcess("HUP")
                except ProcessExitedAlready:
                    log.info("{worker} has exited: not told to reopen its logs", worker=name)

    def startService(self) -> None:
        self._log_file = open_log_file(self.logging)
        if self.gateway is not None:
            self.gateway.audit.start()
            # Unpinned or with the state in users' entries on OpenLDAP: say at once if the
            # directory is unsafe for OTP state.
            for guard in (self.gateway.replication_guard, self.gateway.state_acl_guard):
                if guard.active:
                    self.gateway.reactor.callWhenRunning(guard.check_at_startup)
        service.MultiService.startService(self)

    def stopService(self) -> Any:
        d = service.MultiService.stopService(self)
        d.addBoth(self._close_log)
        return d

    def _close_log(self, result: Any) -> Any:
        if self.gateway is not None:
            self.gateway.close()  # the audit trail and the directory pools
        close_log_file(self._log_file)
        return result


def make_service(
    config: Config, reactor: Any, config_path: Path | None = None
) -> service.MultiService:
    keyring = Keyring.load(config.keyring)
    for line in config.deprecations:
        log.warn("config: {deprecation}", deprecation=line)
    for line in enforcement_warnings(config):
        log.warn("config: {warning}", warning=line)
    gateway = Gateway(config, keyring, reactor)
    top = LoggingService(config, gateway)
    hangup: service.IService = ReopenOnHangup(reactor, top.reopen_logs)
    hangup.setServiceParent(top)
    processes = config.ldap_proxy.processes
    for listener in proxy_listeners(gateway, reactor, shared=processes > 1):
        listener.setServiceParent(top)
    for radius in radius_services(gateway, config, reactor):  # main process only
        radius.setServiceParent(top)
    workers = processes > 1 and bool(config.ldap_proxy.listen)
    # /metrics (main process only) adds up the workers' counters, which they write to files
    # in a private folder of ours (otpgate/procstats.py).
    folder = stats_folder() if workers and config.web.listen else None
    peers = PeerStats(folder) if folder is not None else None
    for web in web_services(gateway, config, reactor, keyring, peers):  # main process only
        web.setServiceParent(top)
    if workers:
        if config_path is None:
            raise ValueError("several proxy processes need the config file's path")
        monitor = ProcessMonitor(reactor=reactor)
        for i in range(1, processes):
            stats = [str(folder), str(i)] if folder is not None else []
            monitor.addProcess(
                f"ldap-proxy-{i}",
                [sys.executable, "-m", "otpgate.worker", str(config_path.resolve()), *stats],
                env=dict(os.environ),
            )
        monitor.setServiceParent(top)
        top.workers = monitor
    if folder is not None:
        remover: service.IService = StatsFolder(folder)
        remover.setServiceParent(top)  # stops (and removes the folder) before the workers
    return top
