"""An extra LDAP proxy process (``[ldap_proxy] processes`` > 1), run by the main twistd process.

Usage (by otpgate itself): python -m otpgate.worker CONFIG_PATH
"""

from __future__ import annotations

import sys
from pathlib import Path

from twisted.application import service
from twisted.internet import reactor
from twisted.logger import globalLogBeginner, textFileLogObserver

from otpgate.config import load_config
from otpgate.ldapproxy.listeners import proxy_listeners
from otpgate.logs import open_log_file
from otpgate.service import Gateway
from otpgate.vault import Keyring


def main() -> None:
    config = load_config(Path(sys.argv[1]))
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    open_log_file(config.logging)  # the same file as the main process: one event per line
    gateway = Gateway(config, Keyring.load(config.keyring), reactor)
    gateway.audit.start()
    reactor.addSystemEventTrigger("after", "shutdown", gateway.audit.stop)
    top = service.MultiService()
    for listener in proxy_listeners(gateway, reactor, shared=True):
        listener.setServiceParent(top)
    top.startService()
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    reactor.run()


if __name__ == "__main__":
    main()
