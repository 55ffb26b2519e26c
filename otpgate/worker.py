"""An extra LDAP proxy process (``[ldap_proxy] processes`` > 1), run by the main twistd process.

Usage (by otpgate itself): python -m otpgate.worker CONFIG_PATH [STATS_FOLDER INDEX]

With a stats folder (the main process serves /metrics) the worker counts its audit events
and writes them with its directory statistics to ``STATS_FOLDER/worker-INDEX.json``
(``otpgate.procstats``), where the main process adds them into /metrics.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from twisted.application import service
from twisted.application.service import IService
from twisted.internet import reactor
from twisted.logger import globalLogBeginner, textFileLogObserver

from otpgate.config import load_config
from otpgate.ldapproxy.listeners import proxy_listeners
from otpgate.logs import ReopenOnHangup, open_log_file
from otpgate.procstats import ProcessTotals, StatsWriter, worker_file
from otpgate.service import Gateway
from otpgate.stats import AuthCounts
from otpgate.vault import Keyring
from otpgate.web.metrics import count_event


def main() -> None:
    config = load_config(Path(sys.argv[1]))
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    # the same file as the main process: one event per line; reopened on SIGHUP
    log_file = open_log_file(config.logging)
    gateway = Gateway(config, Keyring.load(config.keyring), reactor)

    def reopen() -> None:
        if log_file is not None:
            log_file.reopen()
        gateway.audit.reopen()

    hangup = ReopenOnHangup(reactor, reopen)
    hangup.startService()  # before the listeners: a SIGHUP must not stop a worker
    gateway.audit.start()
    reactor.addSystemEventTrigger("after", "shutdown", gateway.audit.stop)
    top = service.MultiService()
    for listener in proxy_listeners(gateway, reactor, shared=True):
        listener.setServiceParent(top)
    if len(sys.argv) == 4:
        writer: IService = stats_writer(gateway, Path(sys.argv[2]), int(sys.argv[3]))
        writer.setServiceParent(top)
    top.startService()
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    reactor.run()


def stats_writer(gateway: Gateway, folder: Path, index: int) -> StatsWriter:
    """This worker's counters for the main process's /metrics: its audit events (counted
    from now on) and its directory statistics."""
    counts = AuthCounts()
    gateway.audit.observers.append(lambda event: count_event(counts, event))

    def snapshot() -> dict[str, Any]:
        return ProcessTotals(gateway.directory_stats, counts, gateway.ldap_proxy_counters).to_dict()

    return StatsWriter(worker_file(folder, index), index, snapshot, reactor)


if __name__ == "__main__":
    main()
